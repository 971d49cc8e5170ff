"""benchmarks/profile.py end to end on small commands: a fresh process per case, real probes.

The machine may be busy (a 2-core CI runner, a training run): no assertion depends on how fast
a command runs; the sampler's arithmetic is checked on a replayed recording instead.
"""

import csv
import json
import math
import os
import shlex
import sys
import time

import numpy as np
import psutil
import pytest

from benchmarks.efficiency import CpuTimes, Series, summarize
from benchmarks.profile import Run, counted_samples, json_safe, main, write_results
from benchmarks.sampler import ProcessTree, open_gpu, sample_loop
from tests.helpers import SAMPLE_CT

PY = shlex.quote(sys.executable)
# 0.6 CPU-seconds of work with 200 MiB resident (CPU time, not wall time: on a busy machine a
# wall-time loop gets less CPU), then "segments" by copying the input.
WORK = (
    f"{PY} -c \"import time; x = bytearray(b'1') * (200 << 20)\n"
    'while time.process_time() < 0.6: pass" && cp {input}/* {output}/'
)


def strict(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def profile(tmp_path, cmd: str, *extra: str) -> tuple[int, dict]:
    results = tmp_path / "results"
    argv = ["--cmd", cmd, "--cases", str(SAMPLE_CT), "--results", str(results), "--idle", "0.2"]
    code = main([*argv, *extra])
    summary = results / "summary.json"
    return code, json.loads(summary.read_text(), parse_constant=strict) if summary.exists() else {}


def csv_rows(results) -> list[dict[str, str]]:
    with open(results / "example_ct.csv") as f:
        return list(csv.DictReader(f))


def test_profiles_a_command_per_case(tmp_path):
    code, summary = profile(tmp_path, WORK + "example_ct.nii.gz")
    assert code == 0
    results = tmp_path / "results"
    assert (results / "outputs" / "example_ct.nii.gz").exists()  # kept for evaluate.py
    assert (results / "example_ct.png").stat().st_size > 10_000
    assert not (results / "work").exists()
    [row] = summary["cases"]
    assert row["status"] == "ok" and row["exit_code"] == 0
    assert row["wall_s"] >= 0.6  # at least the child's CPU time: a busy machine only adds
    assert row["tree_cpu_s"] > 0.3  # rusage of the command's tree: CPU seconds, not wall
    assert row["tree_rss_peak_mib"] > 150  # the 200 MiB the child held, seen by the sampler
    assert row["cpu_area_official"] > 0 and row["ram_peak_mib"] > 0
    assert 0 < row["cpu_max_official"] <= 100 and row["ram_area_official"] > 0
    assert summary["median"]["wall_s"] == row["wall_s"]
    assert summary["notes"][1] == "sampler: ours"
    samples = csv_rows(results)
    t = np.array([float(r["t"]) for r in samples])
    # Ours sums only the samples taken while the command ran; the CSV keeps the idle ones
    # before it (the first was written before the command started) and the last one after it.
    assert row["samples"] == np.sum((t > row["start"]) & (t <= row["end"])) >= 1
    assert t[0] <= row["start"] and t[-1] > row["end"]
    if open_gpu(0)[0] is None:
        assert "no GPU columns" in summary["notes"][0]
        assert row["gpu_area_official"] is None and samples[-1]["gpu_used_mib"] == ""
    else:
        assert row["gpu_area_official"] > 0


def test_the_official_sampler_keeps_the_first_short_sample_and_one_after_the_command(tmp_path):
    code, summary = profile(tmp_path, "cp {input}/* {output}/", "--sampler", "official")
    assert code == 0
    [row] = summary["cases"]
    assert summary["notes"][1] == "sampler: official"
    t = np.array([float(r["t"]) for r in csv_rows(tmp_path / "results")])
    assert t[0] <= row["start"]  # queried at once: the sampler was ready before the command
    after = np.flatnonzero(t > row["end"])
    assert row["samples"] == after[0] + 1  # everything up to the first sample after the end


# A recorded run on a 2-CPU machine, one query per line: the clock, psutil.cpu_times() (user,
# system, idle), system RAM used and GPU memory used (MiB). The first line is the CPU baseline
# that Efficiency.py reads when it is imported; its daemon's first query follows 4 ms later.
# The command ran from 100.005 to 100.35 s; the last query came after it had ended.
RECORDING = [
    (100.000, 10.000, 5.000, 50.000, 900.0, 300.0),
    (100.004, 10.015, 5.005, 50.005, 1000.0, 300.0),
    (100.1065, 10.165, 5.025, 50.035, 1500.0, 900.0),
    (100.209, 10.285, 5.045, 50.095, 2500.0, 2100.0),
    (100.3115, 10.325, 5.055, 50.245, 2600.0, 2300.0),
    (100.414, 10.335, 5.065, 50.425, 1200.0, 400.0),
]
COMMAND = Run("ok", 0, 0.345, 100.005, 100.35, 0.3)


class Replay:
    """Clock, CPU, RAM and GPU probes that play RECORDING back; logs queries and sleeps."""

    def __init__(self) -> None:
        self.i = -1
        self.log: list[str] = []

    def clock(self) -> float:  # the loop reads the clock first in every query
        self.i += 1
        self.log.append("query")
        return RECORDING[self.i][0]

    def sleep(self, seconds: float) -> None:
        self.log.append(f"sleep {seconds}")

    def cpu(self) -> CpuTimes:
        _, user, system, idle, _, _ = RECORDING[self.i]
        return CpuTimes(user, system, idle, user + system + idle)

    def ram(self) -> float:
        return RECORDING[self.i][4]

    def used_mib(self) -> float | None:
        return RECORDING[self.i][5]

    def process_mib(self, pids: set[int]) -> float | None:
        return None

    def stop(self) -> bool:  # set once the command has ended, before the next query
        return RECORDING[self.i + 1][0] > COMMAND.end


def replay(official: bool) -> tuple[Series, list[str]]:
    rec, rows = Replay(), []
    probes = {"read_cpu": rec.cpu, "read_ram": rec.ram, "clock": rec.clock, "sleep": rec.sleep}
    sample_loop(
        rows.append, rec, ProcessTree(), lambda: [], rec.stop, 0.1, official=official, **probes
    )
    return Series.from_rows(rows), rec.log


def test_official_sampler_on_a_recorded_series_gives_the_official_figures():
    series, log = replay(official=True)
    assert log == ["query"] + ["query", "sleep 0.1"] * 4 + ["query"]  # query, then sleep
    # Official CPU, of each query's deltas: 100 - 100 * idle / (user + system + idle + 0.1).
    # The first 4 ms read 100 - 100 * 0.005 / 0.125 = 96 %; then 90, 80, 50 and, after the
    # command, 40 %.
    assert series.cpu_official_pct == pytest.approx([96.0, 90.0, 80.0, 50.0, 40.0])
    f = summarize(counted_samples(series, COMMAND, official=True))
    assert f["samples"] == 5  # the first short sample and the one after the command count
    assert f["cpu_max_official"] == pytest.approx(96.0)  # CPU_Utilization: the first sample
    assert f["cpu_area_official"] == pytest.approx((96 + 90 + 80 + 50 + 40) * 0.1)  # 35.6
    assert f["ram_area_official"] == pytest.approx((1000 + 1500 + 2500 + 2600 + 1200) * 0.1)
    assert f["ram_peak_mib"] == 2600.0
    assert f["gpu_area_official"] == pytest.approx((300 + 900 + 2100 + 2300 + 400) * 0.1)
    assert f["gpu_area_tolerance"] == pytest.approx((52 + 252) * 0.1)
    assert f["gpu_max_flare"] == 2300.0  # 5 samples: each is more than 2 % of them

    # Ours on the same samples sums only the three taken while the command ran.
    ours = summarize(counted_samples(series, COMMAND, official=False))
    assert ours["samples"] == 3
    assert ours["cpu_max_official"] == pytest.approx(90.0)
    assert ours["cpu_area_official"] == pytest.approx((90 + 80 + 50) * 0.1)
    assert ours["ram_area_official"] == pytest.approx((1500 + 2500 + 2600) * 0.1)


def test_our_sampler_sleeps_before_each_query():
    series, log = replay(official=False)
    assert log == ["query"] + ["sleep 0.1", "query"] * 5
    assert series.t.tolist() == [r[0] for r in RECORDING[1:]]


@pytest.mark.parametrize(("cmd", "status"), [("exit 3", "failed (3)"), ("true", "no output")])
def test_a_failed_case_is_reported_and_the_exit_code_is_1(tmp_path, cmd, status):
    code, summary = profile(tmp_path, cmd)
    assert code == 1
    [row] = summary["cases"]
    assert row["status"] == status


def test_a_timed_out_case_is_killed_with_its_process_group(tmp_path):
    marker = f"30.{os.getpid()}"  # a sleep of 30 s that no other process runs
    code, summary = profile(tmp_path, f"sleep {marker} & wait", "--timeout", "1")
    assert code == 1
    [row] = summary["cases"]
    assert row["status"] == "timeout" and row["exit_code"] is None

    def running() -> list[psutil.Process]:
        return [
            p
            for p in psutil.process_iter(["cmdline", "status"])
            if p.info["cmdline"] == ["sleep", marker] and p.info["status"] != "zombie"
        ]

    # The shell's background child got SIGKILL with its group; it dies when next scheduled.
    deadline = time.monotonic() + 60
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running()


def test_no_cases_is_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--cases", str(tmp_path / "empty"), "--results", str(tmp_path / "r")]) == 2
    assert main(["--cases", str(tmp_path / "nothing"), "--results", str(tmp_path / "r")]) == 2
    assert "nothing: no such case file or folder" in capsys.readouterr().err


def test_summary_json_is_strict_json_with_null_for_nan(tmp_path):
    no_gpu = {"case": "a", "status": "ok", "wall_s": 2.0, "gpu_max": math.nan}
    odd = {"case": "b", "status": "timeout", "wall_s": 4.0, "gpu_max": math.inf}
    rows = [{**no_gpu, "start": 0.0, "end": 2.0}, {**odd, "start": 2.0, "end": 6.0}]
    write_results(tmp_path, rows, ["no GPU"], "sh predict.sh")
    text = (tmp_path / "summary.json").read_text()
    summary = json.loads(text, parse_constant=strict)  # no bare NaN or Infinity
    assert [r["gpu_max"] for r in summary["cases"]] == [None, None]
    assert summary["mean"] == summary["median"] == {"wall_s": 3.0, "gpu_max": None}


def test_json_safe_reaches_every_depth():
    value = {"a": [1.0, math.nan, {"b": (-math.inf, np.float64("nan"))}], "c": "x", "d": 3}
    assert json_safe(value) == {"a": [1.0, None, {"b": [None, None]}], "c": "x", "d": 3}
