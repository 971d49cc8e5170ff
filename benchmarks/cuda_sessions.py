"""Whole-process GPU memory and one-shot time of the CUDA session options, one change at a time.

    python benchmarks/cuda_sessions.py [--weights weights] [--runs 3] [--cases flare 300 600]
                                       [--variants chosen ort-default ...] [--out FILE]

The challenge runs a fresh container per case and holds every MiB of the process on the GPU,
its CUDA context included, against a 2048 MiB tolerance. So every run here is a fresh process
doing what ``python -m inference`` does for one case: imports, both sessions, read, segment,
write. A thread of this process samples NVML every few ms: the child's own GPU memory, and the
device's used memory (total - free) above its idle level, which also sees what NVML does not
attribute to a process.

Variants: ``chosen`` is ``inference.sessions.RuntimeConfig.for_device("cuda")``;
``ort-default`` is ONNX Runtime's own CUDA set-up (no provider options, default session and
run options); the others undo one choice each, or try one more (``nhwc``); ``fp32`` runs the
fp32 graphs on the GPU; ``cpu`` is the CPU path, whose labels are the reference of the
``agree`` column (mean Dice over the organs either has). Cases: ``benchmarks/pipeline.py``'s
FLARE-sized case (the bundled CT at 0.8 x 0.8 x 2.5 mm, 512 x 512) and the same anatomy at
150, 300 or 600 slices. Needs onnxruntime-gpu (``requirements/gpu.txt``, not with the CPU
build) and nvidia-ml-py.
"""

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

from benchmarks.efficiency import GPU_TOLERANCE_MIB  # noqa: E402
from inference.__main__ import TIMING_KEYS  # noqa: E402
from inference.sessions import RuntimeConfig  # noqa: E402


def _provider(**changes: str) -> Callable[[RuntimeConfig], RuntimeConfig]:
    def change(c: RuntimeConfig) -> RuntimeConfig:
        return dataclasses.replace(c, provider_options={**c.provider_options, **changes})

    return change


VARIANTS: dict[str, Callable[[RuntimeConfig], RuntimeConfig]] = {
    "chosen": lambda c: c,
    "ort-default": lambda c: RuntimeConfig(
        "cuda", "fp16", {}, execution_order="DEFAULT", memory_pattern=True, shrink_arenas=False
    ),
    "heuristic": _provider(cudnn_conv_algo_search="HEURISTIC"),
    "exhaustive": _provider(cudnn_conv_algo_search="EXHAUSTIVE"),
    "max-workspace": _provider(cudnn_conv_use_max_workspace="1"),
    "pow2-arena": _provider(arena_extend_strategy="kNextPowerOfTwo"),
    "default-order": lambda c: dataclasses.replace(c, execution_order="DEFAULT"),
    "no-shrink": lambda c: dataclasses.replace(c, shrink_arenas=False),
    "nhwc": _provider(prefer_nhwc="1"),
    "fp32": lambda c: dataclasses.replace(c, precision="fp32"),
    "cpu": lambda c: RuntimeConfig.for_device("cpu"),
}


def variant_config(name: str) -> RuntimeConfig:
    return VARIANTS[name](RuntimeConfig.for_device("cuda"))


def child(variant: str, weights: Path, case: Path, out: Path) -> dict:
    """One case in this fresh process, as ``python -m inference`` runs it."""
    from inference.__main__ import segment_file
    from inference.pipeline import Segmenter

    start = time.perf_counter()
    segmenter = Segmenter(weights, config=variant_config(variant))
    sessions = time.perf_counter() - start
    t0 = time.time()  # wall clock, to place the stages on the sampler's timeline
    record = segment_file(segmenter, case, out)
    return {"sessions": sessions, "t0": t0, **record}


def stage_peaks(samples: list[tuple[float, float]], record: dict) -> dict:
    """GPU MiB at the end of session creation and the peak within the coarse and fine stages."""

    def peak(start: float, end: float) -> float | None:
        inside = [m for t, m in samples if start <= t <= end]
        return max(inside) if inside else None

    t = record["t0"]
    before = [m for s, m in samples if s <= t]
    coarse = t + record["read"]
    fine = coarse + record["coarse"] + record["region"]
    return {
        "sessions_mib": before[-1] if before else None,
        "coarse_mib": peak(coarse, coarse + record["coarse"]),
        "fine_mib": peak(fine, fine + record["fine"]),
    }


class GpuWatch:
    """Samples one process's GPU memory and the device's used memory until stopped."""

    def __init__(self, gpu, pid: int, idle_mib: float, period: float = 0.005) -> None:
        self.gpu, self.pid, self.idle, self.period = gpu, pid, idle_mib, period
        self.process_peak = self.device_peak = 0.0
        self.process_seen = False
        self.samples: list[tuple[float, float]] = []  # (wall clock, process MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            mine = self.gpu.process_mib({self.pid})
            if mine is not None:
                self.process_seen = True
                self.process_peak = max(self.process_peak, mine)
                self.samples.append((time.time(), mine))
            used = self.gpu.used_mib()
            if used is not None:
                self.device_peak = max(self.device_peak, used - self.idle)
            time.sleep(self.period)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {
            "process_peak_mib": self.process_peak if self.process_seen else None,
            "device_peak_mib": self.device_peak,
        }


def run_once(gpu, variant: str, weights: Path, case: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    idle = statistics.median(gpu.used_mib() or 0.0 for _ in range(5)) if gpu else 0.0
    cmd = [sys.executable, __file__, "--child", variant, str(weights), str(case), str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = GpuWatch(gpu, proc.pid, idle) if gpu else None
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    memory = watch.stop() if watch else {"process_peak_mib": None, "device_peak_mib": None}
    if proc.returncode != 0:
        return {"error": stderr.strip().splitlines()[-1] if stderr.strip() else "failed"}
    record = json.loads(stdout.strip().splitlines()[-1])
    stages = stage_peaks(watch.samples, record) if watch else {}
    return {"wall": wall, **memory, **stages, **record}


def mean_dice(a, b) -> float:
    """Mean Dice over the organs present in either label map."""
    import numpy as np

    from inference.report import dice

    organs = [k for k in np.union1d(np.unique(a), np.unique(b)) if k != 0]
    return float(np.mean([dice(a == k, b == k) for k in organs])) if organs else 1.0


def agreement(outputs: dict[str, Path], reference: str = "cpu") -> dict[str, float]:
    """Each variant's labels against the reference variant's, as mean Dice."""
    import SimpleITK as sitk

    if reference not in outputs:
        return {}
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[reference])))
    return {
        name: mean_dice(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), ref)
        for name, path in outputs.items()
        if path.is_file()
    }


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"]}
    keys = ("wall", "sessions", *TIMING_KEYS, "total")
    row = {k: statistics.median(r[k] for r in ok) for k in keys}
    for key in ("process_peak_mib", "device_peak_mib", "sessions_mib", "coarse_mib", "fine_mib"):
        values = [r[key] for r in ok if r.get(key) is not None]
        row[key] = max(values) if values else None  # the worst run: the tolerance is a cap
    row["providers"] = ok[0]["providers"]
    row["shape"] = ok[0]["shape"]
    row["roi_source"] = ok[0]["roi_source"]
    return row


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


HEADER = (
    f"{'case':<11} {'variant':<20} {'wall':>6} {'sess':>5} {'coarse':>6} {'fine':>6} "
    f"{'r+w':>5} {'proc MiB':>8} {'dev MiB':>8} {'@sess':>6} {'@coarse':>7} {'@fine':>6} "
    f"{'agree':>6}"
)
LEGEND = (
    "wall: process start to exit (median); sess: both sessions made; r+w: read + write; "
    f"proc MiB: the process's GPU peak (NVML), tolerance {GPU_TOLERANCE_MIB:.0f}; dev MiB: "
    "the device's used memory above idle; @sess: process MiB once the sessions are made; "
    "@coarse, @fine: its peak within that stage; agree: mean Dice against the cpu variant"
)


def table_row(r: dict) -> str:
    if "error" in r:
        return f"{r['case']:<11} {r['variant']:<20} error: {r['error'][:90]}"
    agree = "" if r.get("agree") is None else f"{r['agree']:.4f}"
    return (
        f"{r['case']:<11} {r['variant']:<20} {r['wall']:>6.2f} {r['sessions']:>5.2f} "
        f"{r['coarse']:>6.2f} {r['fine']:>6.2f} {r['read'] + r['write']:>5.2f} "
        f"{_mib(r['process_peak_mib']):>8} {_mib(r['device_peak_mib']):>8} "
        f"{_mib(r['sessions_mib']):>6} {_mib(r['coarse_mib']):>7} {_mib(r['fine_mib']):>6} "
        f"{agree:>6}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/cuda_sessions.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("--runs", type=int, default=3, help="fresh processes per variant and case")
    p.add_argument(
        "--cases", nargs="+", default=["flare", "300", "600"], help="flare, 150, 300, 600"
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--gpu", type=int, default=0, help="GPU index to sample")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "cuda_sessions.json")
    p.add_argument("--labels", type=Path, help="keep each variant's labels here (CASE/VARIANT/)")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        variant, weights, case, out = args.child
        print(json.dumps(child(variant, Path(weights), Path(case), Path(out))))
        return 0

    import onnxruntime as ort

    from benchmarks.pipeline import prepare_cases
    from benchmarks.sampler import open_gpu

    if "CUDAExecutionProvider" not in ort.get_available_providers() and set(args.variants) - {
        "cpu"
    }:
        print(
            "error: this ONNX Runtime has no CUDA provider (requirements/gpu.txt)", file=sys.stderr
        )
        return 2

    gpu, note = open_gpu(args.gpu)
    print(note)
    print(HEADER, flush=True)
    slices = tuple(int(c) for c in args.cases if c != "flare")
    rows: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cases = prepare_cases(Path(tmp), slices)
        for name, folder in cases.items():
            if name.split()[0] not in args.cases:
                continue
            case = folder / "case_0000.nii.gz"
            labels = (args.labels or Path(tmp) / "labels") / folder.name
            outputs = {}
            for variant in args.variants:
                out = labels / variant
                runs = [run_once(gpu, variant, args.weights, case, out) for _ in range(args.runs)]
                rows.append({"case": name, "variant": variant, **summarize(runs), "runs": runs})
                outputs[variant] = out / "case.nii.gz"
                print(table_row(rows[-1]), flush=True)  # as it comes: a long run may be cut
                args.out.write_text(json.dumps({"gpu": note, "rows": rows}, indent=2) + "\n")
            agree = agreement(outputs)
            for row in rows:
                if row["case"] == name and row["variant"] in agree:
                    row["agree"] = agree[row["variant"]]
    if any("agree" in r for r in rows):
        print("\n".join([HEADER, *map(table_row, rows)]))
    print(LEGEND)
    args.out.write_text(json.dumps({"gpu": note, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
