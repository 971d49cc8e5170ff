"""The challenge's efficiency arithmetic on recorded series, through the sampler's own loop."""

import math

import numpy as np
import pytest

from benchmarks.efficiency import (
    CpuTimes,
    Series,
    flare_max,
    official_cpu_percent,
    summarize,
    true_cpu_percent,
)
from benchmarks.sampler import ProcessTree, sample_loop

# A recorded GPU series (MiB): idle context, a ramp, a 2-sample spike, a plateau over 2 GB.
GPU = [300.0] * 10 + [1200.0, 2048.0] + [3100.0] * 2 + [2500.0] * 36


def test_official_cpu_formula_has_the_idle_floor():
    # 12 threads idle for 0.1 s: the +0.1 in the divisor reads 7.7 % (the official formula).
    idle = official_cpu_percent(CpuTimes(0, 0, 0, 0), CpuTimes(0, 0, 1.2, 1.2))
    assert idle == pytest.approx(100 - 100 * 1.2 / 1.3)
    assert idle == pytest.approx(7.69, abs=0.01)
    assert true_cpu_percent(CpuTimes(0, 0, 0, 0), CpuTimes(0, 0, 1.2, 1.2)) == 0.0
    # Half the machine busy: user 0.4 + system 0.2 of 1.2 CPU-seconds.
    busy = official_cpu_percent(CpuTimes(0, 0, 0, 0), CpuTimes(0.4, 0.2, 0.6, 1.2))
    assert busy == pytest.approx(100 - 100 * 0.6 / 1.3)
    assert true_cpu_percent(CpuTimes(0, 0, 0, 0), CpuTimes(0.4, 0.2, 0.6, 1.2)) == 50.0


def test_flare_max_ignores_values_seen_in_two_percent_of_samples_or_fewer():
    values = np.array([1000.0] * 95 + [3000.0] * 2 + [1500.0] * 3)
    assert flare_max(values) == 1500.0  # 3000 is in exactly 2 % of samples: a spike
    assert flare_max(np.array([1.0, 2.0, 3.0])) == 3.0  # few samples: each one counts
    assert math.isnan(flare_max(np.arange(100.0)))  # nothing repeats


class FakeGpu:
    """Plays back ``GPU``; reports no per-process figure, as some drivers do."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)
        self.reads = 0

    def used_mib(self) -> float | None:
        self.reads += 1
        return self.values[min(self.reads - 1, len(self.values) - 1)]

    def process_mib(self, pids: set[int]) -> float | None:
        return None


def record(gpu: FakeGpu, n: int) -> Series:
    """Run the sampler's loop in-process until it has written ``n`` rows."""
    rows: list[dict[str, float]] = []
    clock = iter(range(10**6))

    def cpu() -> CpuTimes:  # two CPUs, one busy: 0.1 s of user and 0.1 s idle per query
        k = next(clock)
        return CpuTimes(0.1 * k, 0.0, 0.1 * k, 0.2 * k)

    sample_loop(
        rows.append,
        gpu,
        ProcessTree(),
        roots=lambda: [],
        stop=lambda: len(rows) >= n - 1,
        interval=0.0,
        read_cpu=cpu,
        read_ram=lambda: 1000.0,
    )
    return Series.from_rows(rows)


def test_tolerance_areas_of_a_recorded_series():
    s = summarize(record(FakeGpu(GPU), len(GPU)))
    assert s["samples"] == len(GPU)
    assert s["gpu_area_official"] == pytest.approx(sum(GPU) * 0.1)
    over = [max(0.0, m - 2048) for m in GPU]  # 0 ... 0, 0, 1052, 1052, 452 x 36
    assert s["gpu_area_tolerance"] == pytest.approx(sum(over) * 0.1)
    assert s["gpu_area_tolerance"] == pytest.approx((2 * 1052 + 36 * 452) * 0.1)
    assert s["gpu_max"] == 3100.0
    assert s["gpu_max_flare"] == 3100.0  # 2 samples of 50 are 4 %: not a spike
    assert math.isnan(s["gpu_process_max"])
    # One CPU of two busy: official (100 - 100 * 0.1 / 0.3) per sample, true 50 %.
    assert s["cpu_area_official"] == pytest.approx(len(GPU) * (100 - 100 * 0.1 / 0.3) * 0.1)
    assert s["cpu_max_official"] == pytest.approx(100 - 100 * 0.1 / 0.3)  # CPU_Utilization
    assert s["ram_peak_mib"] == 1000.0
    assert s["ram_area_official"] == pytest.approx(len(GPU) * 1000.0 * 0.1)  # AUC_RAM_Time
    assert math.isnan(s["tree_rss_peak_mib"])  # no process under test


def test_flare_max_drops_a_spike_of_one_sample_in_a_long_run():
    s = summarize(record(FakeGpu([300.0] * 60 + [3100.0] + [2500.0] * 59), 120))
    assert (s["gpu_max"], s["gpu_max_flare"]) == (3100.0, 2500.0)


def test_true_areas_use_real_timestamps():
    t = np.array([0.0, 0.25, 0.5, 1.5])
    gpu = np.array([2048.0, 2048.0, 4096.0, 4096.0])
    nan = np.full(4, np.nan)
    cpu = np.array([np.nan, 100.0, 100.0, 50.0])
    s = summarize(Series(t, gpu, nan, cpu, cpu, cpu / 100, gpu, nan))  # RAM as the GPU
    assert s["gpu_area_official"] == pytest.approx(12288 * 0.1)  # blind to the 1 s gap
    assert s["gpu_area_true"] == pytest.approx(2048 * 0.25 + 3072 * 0.25 + 4096 * 1.0)
    assert s["gpu_area_tolerance_true"] == pytest.approx(1024 * 0.25 + 2048 * 1.0)
    assert s["ram_area_true"] == s["gpu_area_true"]
    assert s["ram_area_official"] == s["gpu_area_official"]
    assert s["cpu_area_true"] == pytest.approx(100 * 0.25 + 100 * 0.25 + 50 * 1.0)
    assert s["tree_cpu_core_s"] == pytest.approx(1.0)
    assert s["mean_period_s"] == pytest.approx(0.5)


def test_series_window_keeps_the_run_only():
    t = np.arange(10.0)
    s = Series(*([t] * 8)).window(2.0, 5.0)
    assert s.t.tolist() == [3.0, 4.0, 5.0]
