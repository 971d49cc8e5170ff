"""The FLARE22 efficiency formulas, and the true time-weighted figures they approximate.

The challenge sampled every 0.1 s plus the query time and summed the samples times 0.1 s
(the challenge's rules), so its areas undercount a run whose real sampling period was longer. Every
area here exists twice: ``official`` reproduces the challenge's arithmetic (FLARE22's
``Evaluation/Efficiency.py`` and ``Evaluation/load_json.py`` in JunMa11/FLARE), ``true``
integrates over the real timestamps. docs/measuring.md maps each figure to its source.
"""

import math
from collections import Counter
from dataclasses import dataclass, fields

import numpy as np

NOMINAL_INTERVAL_S = 0.1  # the challenge multiplied every sample by this, whatever the period
GPU_TOLERANCE_MIB = 2048.0  # each GPU sample counts as max(0, used - 2048 MiB)
CPU_FORMULA_EPS_S = 0.1  # the official CPU formula adds this to the denominator
FLARE_MAX_FRACTION = 0.02  # FLARE22 "max": the largest value seen in more than 2 % of samples


@dataclass(frozen=True)
class CpuTimes:
    """System-wide CPU seconds since boot (``psutil.cpu_times()``), summed over all CPUs."""

    user: float
    system: float
    idle: float
    total: float  # every field, iowait and irq included


def official_cpu_percent(prev: CpuTimes, now: CpuTimes) -> float:
    """Utilisation as the challenge computed it: 100 - idle share, with +0.1 s in the divisor.

    ``get_cpu_usage`` in Efficiency.py gives the idle share; load_json.py takes 100 minus it.

    Only user, system and idle count, and the +0.1 makes a fully idle machine read
    ``100 * 0.1 / (n_cpus * period + 0.1)`` (7.7 % with 12 threads at 0.1 s): an idle floor.
    """
    deltas = (now.user - prev.user, now.system - prev.system, now.idle - prev.idle)
    idle_percent = 100.0 * deltas[2] / (sum(deltas) + CPU_FORMULA_EPS_S)
    return 100.0 - idle_percent


def true_cpu_percent(prev: CpuTimes, now: CpuTimes) -> float:
    """Share of all CPU time that was not idle, in % of the whole machine."""
    total = now.total - prev.total
    if total <= 0:
        return math.nan
    return min(100.0, max(0.0, 100.0 * (1.0 - (now.idle - prev.idle) / total)))


@dataclass
class Series:
    """Sampled curves of one run; NaN where a probe had nothing to report.

    ``t`` is wall-clock seconds. Levels (memory) hold at the sample instant; rates (CPU) are
    averages over the interval that ends at the sample.
    """

    t: np.ndarray
    gpu_used_mib: np.ndarray  # whole device: NVML total - free, CUDA contexts and others included
    gpu_process_mib: np.ndarray  # the processes under test, where NVML reports per-process use
    cpu_official_pct: np.ndarray
    cpu_true_pct: np.ndarray
    tree_cores: np.ndarray  # CPU use of the process tree under test, in cores
    ram_used_mib: np.ndarray  # system-wide
    tree_rss_mib: np.ndarray

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_rows(cls, rows: list[dict[str, float]]) -> "Series":
        return cls(**{c: np.array([r[c] for r in rows], dtype=float) for c in cls.columns()})

    def window(self, start: float, end: float) -> "Series":
        """The samples taken while the command ran, ``start < t <= end``."""
        keep = (self.t > start) & (self.t <= end)
        return Series(**{c: getattr(self, c)[keep] for c in self.columns()})


def official_area(values: np.ndarray) -> float:
    """The challenge's area: sum of the samples times the nominal 0.1 s (NaN if none)."""
    return float(np.nansum(values) * NOMINAL_INTERVAL_S) if values.size else math.nan


def over_tolerance(gpu_mib: np.ndarray) -> np.ndarray:
    """What each GPU sample counts for under the 2 GB tolerance."""
    return np.maximum(0.0, gpu_mib - GPU_TOLERANCE_MIB)


def level_area(t: np.ndarray, values: np.ndarray) -> float:
    """Time integral of a level (memory), trapezoidal over the real timestamps."""
    ok = np.isfinite(values)
    return float(np.trapezoid(values[ok], t[ok])) if ok.sum() > 1 else math.nan


def rate_area(t: np.ndarray, values: np.ndarray) -> float:
    """Time integral of a rate averaged over each sample's preceding interval."""
    return float(np.nansum(values[1:] * np.diff(t))) if values.size > 1 else math.nan


def flare_max(values: np.ndarray) -> float:
    """FLARE22's "max": the largest value that occurs in more than 2 % of the samples.

    As FLARE22's load_json.py computes ``GPU_Mem``; FLARE24's load_json.py takes the plain max.

    Spikes that last only a few samples are ignored. NaN when no value repeats that often
    (then only the plain max is meaningful).
    """
    counts = Counter(values[np.isfinite(values)].tolist())
    frequent = [v for v, n in counts.items() if n > FLARE_MAX_FRACTION * values.size]
    return max(frequent) if frequent else math.nan


def _max(values: np.ndarray) -> float:
    ok = values[np.isfinite(values)]
    return float(np.max(ok)) if ok.size else math.nan


def summarize(s: Series) -> dict[str, float]:
    """Every per-run figure of the samples in ``s`` (already cut to the run's window)."""
    gpu = s.gpu_used_mib
    has_gpu = bool(gpu.size) and not np.isnan(gpu).all()
    nan = math.nan
    return {
        "samples": s.t.size,
        "mean_period_s": float(np.mean(np.diff(s.t))) if s.t.size > 1 else nan,
        "gpu_area_official": official_area(gpu) if has_gpu else nan,
        "gpu_area_tolerance": official_area(over_tolerance(gpu)) if has_gpu else nan,
        "gpu_area_true": level_area(s.t, gpu) if has_gpu else nan,
        "gpu_area_tolerance_true": level_area(s.t, over_tolerance(gpu)) if has_gpu else nan,
        "gpu_max_flare": flare_max(gpu) if has_gpu else nan,
        "gpu_max": _max(gpu) if has_gpu else nan,
        "gpu_process_max": _max(s.gpu_process_mib),
        "cpu_max_official": _max(s.cpu_official_pct),  # load_json.py's CPU_Utilization
        "cpu_area_official": official_area(s.cpu_official_pct),
        "cpu_area_true": rate_area(s.t, s.cpu_true_pct),
        "tree_cpu_core_s": rate_area(s.t, s.tree_cores),
        "ram_peak_mib": _max(s.ram_used_mib),
        "ram_area_official": official_area(s.ram_used_mib),  # load_json.py's AUC_RAM_Time
        "ram_area_true": level_area(s.t, s.ram_used_mib),
        "tree_rss_peak_mib": _max(s.tree_rss_mib),
    }
