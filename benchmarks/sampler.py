"""The sampler of ``profile.py``: probes read GPU, CPU and memory; a loop writes them to CSV.

The loop runs in its own process, started before a case and stopped after it, like the
challenge's monitor. Its real period is the interval (0.1 s) plus the query time, as the
challenge's was: the official sums assume 0.1 s. Two orders (docs/measuring.md):

- ours sleeps, then queries, so every row's CPU figures cover one whole interval;
- ``official=True`` queries, then sleeps, as ``daemon_process`` in FLARE22's
  ``Evaluation/Efficiency.py`` does: its first row covers only the moment since the CPU
  baseline was read, which the +0.1 of the official formula turns into a reading near 100 %.

Either loop writes one last row after ``stop()``, a sample taken after the command ended.

Probes return None (NaN in the CSV) for what the machine cannot report: the GPU columns stay
empty without NVML or a GPU, and the per-process GPU memory where the driver does not say.
Tests drive ``sample_loop`` with fake probes; the real probes only read numbers.
"""

import csv
import math
import multiprocessing as mp
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from benchmarks.efficiency import CpuTimes, Series, official_cpu_percent, true_cpu_percent

MIB = 1024.0**2


class GpuProbe(Protocol):
    def used_mib(self) -> float | None: ...

    def process_mib(self, pids: set[int]) -> float | None: ...


class NvmlGpu:
    """Whole-device used memory (NVML total - free) and the memory of given processes."""

    def __init__(self, index: int) -> None:
        import pynvml  # nvidia-ml-py: optional, imported only where a GPU is probed

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = pynvml.nvmlDeviceGetName(self._handle)

    def used_mib(self) -> float | None:
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except self._nvml.NVMLError:
            return None
        return (info.total - info.free) / MIB

    def process_mib(self, pids: set[int]) -> float | None:
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except self._nvml.NVMLError:
            return None
        used = [p.usedGpuMemory for p in procs if p.pid in pids]
        if not used or any(u is None for u in used):
            return None  # not ours yet, or hidden (e.g. from inside some containers)
        return sum(used) / MIB


def open_gpu(index: int) -> tuple[NvmlGpu | None, str]:
    """The NVML probe of GPU ``index``, or None and why the GPU columns will be empty."""
    try:
        gpu = NvmlGpu(index)
    except ImportError:
        return None, "no GPU columns: nvidia-ml-py is not installed"
    except Exception as e:  # pynvml raises NVMLError subclasses built at run time
        return None, f"no GPU columns: NVML could not open GPU {index} ({e})"
    return gpu, f"GPU {index}: {gpu.name}"


def cpu_times() -> CpuTimes:
    t = psutil.cpu_times()
    return CpuTimes(t.user, t.system, t.idle, sum(t))


def ram_used_mib() -> float:
    return psutil.virtual_memory().used / MIB


@dataclass
class ProcessTree:
    """CPU seconds and RSS of some root processes and all their descendants.

    A process's own CPU time plus that of the children it has reaped: when a child exits, its
    time moves into its parent's, so the tree's total does not drop as processes come and go.
    """

    roots: list[int] = field(default_factory=list)

    def read(self) -> tuple[float, float, set[int]]:
        """(cumulative CPU seconds, RSS MiB, pids) of the live tree; zeros before it exists."""
        cpu = rss = 0.0
        pids: set[int] = set()
        for root in self.roots:
            try:
                procs = [psutil.Process(root)]
                procs += procs[0].children(recursive=True)
            except psutil.Error:
                continue
            for p in procs:
                try:
                    with p.oneshot():
                        t = p.cpu_times()
                        cpu += t.user + t.system + t.children_user + t.children_system
                        rss += p.memory_info().rss / MIB
                    pids.add(p.pid)
                except psutil.Error:
                    continue  # ended between the listing and the read
        return cpu, rss, pids


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def sample_loop(
    write: Callable[[dict[str, float]], None],
    gpu: GpuProbe | None,
    tree: ProcessTree,
    roots: Callable[[], list[int]],
    stop: Callable[[], bool],
    interval: float,
    read_cpu: Callable[[], CpuTimes] = cpu_times,
    read_ram: Callable[[], float] = ram_used_mib,
    official: bool = False,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Write one row of ``Series`` columns per query until ``stop()``; then one last row.

    ``official`` moves the sleep after the query (see the module's docstring); ``clock`` and
    ``sleep`` are there so that tests can replay a recorded run without waiting.
    """
    prev_t, prev_cpu = clock(), read_cpu()  # Efficiency.py reads its baseline at import
    prev_tree = tree.read()[0]
    while True:
        if not official:
            sleep(interval)  # first: every row's CPU figures cover one interval
        stopping = stop()
        tree.roots = roots()
        t, cpu = clock(), read_cpu()
        tree_cpu, tree_rss, pids = tree.read()
        used = gpu.used_mib() if gpu else None
        dt = t - prev_t
        write(
            {
                "t": t,
                "gpu_used_mib": _nan(used),
                "gpu_process_mib": _nan(gpu.process_mib(pids) if gpu and pids else None),
                "cpu_official_pct": official_cpu_percent(prev_cpu, cpu),
                "cpu_true_pct": true_cpu_percent(prev_cpu, cpu),
                # A root reaped by its parent takes its time out of the tree: never negative.
                "tree_cores": max(0.0, tree_cpu - prev_tree) / dt if dt > 0 else math.nan,
                "ram_used_mib": read_ram(),
                "tree_rss_mib": tree_rss if pids else math.nan,
            }
        )
        if stopping:
            return
        if official:
            sleep(interval)  # after, as Efficiency.py: its first row covers only the query
        prev_t, prev_cpu, prev_tree = t, cpu, tree_cpu


def container_pid(cidfile: Path) -> int | None:
    """Host pid of the container whose id ``docker run --cidfile`` wrote, once it runs."""
    try:
        cid = cidfile.read_text().strip()
    except OSError:
        return None
    if not cid:
        return None
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", cid], capture_output=True, text=True
    )
    pid = int(out.stdout.strip() or 0) if out.returncode == 0 else 0
    return pid or None


def _run(
    csv_path: Path, gpu_index: int, root, cidfile, ready, stop, interval: float, official: bool
) -> None:
    """Process target: real probes, rows to ``csv_path``."""
    gpu, _ = open_gpu(gpu_index)
    container: list[int] = []

    def roots() -> list[int]:
        if cidfile and not container and root.value:
            container.extend(filter(None, [container_pid(Path(cidfile))]))
        return [root.value, *container] if root.value else []

    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=Series.columns())
        writer.writeheader()

        def write(row: dict[str, float]) -> None:
            writer.writerow({k: "" if math.isnan(v) else v for k, v in row.items()})
            if not ready.is_set():
                ready.set()

        sample_loop(write, gpu, ProcessTree(), roots, stop.is_set, interval, official=official)


class Sampler:
    """The sampling process of one case: ``start()``, ``watch(pid)``, ``stop() -> Series``."""

    def __init__(
        self,
        csv_path: Path,
        gpu_index: int,
        interval: float,
        cidfile: Path | None = None,
        official: bool = False,
    ) -> None:
        ctx = mp.get_context("spawn")  # no fork of a parent that may hold threads
        self.csv_path = csv_path
        self._root = ctx.Value("i", 0)
        self._ready, self._stop = ctx.Event(), ctx.Event()
        args = (csv_path, gpu_index, self._root, cidfile, self._ready, self._stop)
        loop = {"interval": interval, "official": official}
        self._process = ctx.Process(target=_run, args=args, kwargs=loop, daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        self._process.start()
        if not self._ready.wait(timeout):
            self._process.kill()
            raise RuntimeError(f"the sampler did not start within {timeout:.0f} s")

    def watch(self, pid: int) -> None:
        """Measure the process tree of ``pid`` from now on."""
        self._root.value = pid

    def stop(self) -> Series:
        self._stop.set()
        self._process.join(30)
        if self._process.exitcode is None:
            self._process.kill()
        return read_series(self.csv_path)


def read_series(csv_path: Path) -> Series:
    with open(csv_path, newline="") as f:
        rows = [{k: float(v) if v else math.nan for k, v in r.items()} for r in csv.DictReader(f)]
    return Series.from_rows(rows)
