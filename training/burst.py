"""``python -m training.burst``: both stages trained at the paper's cube sizes in one GPU burst.

A lent GPU machine takes one command of at most 10 minutes, carries at most 64 MiB of the
work tree there and brings back at most 8 files of 16 MiB. So one command does everything on
that machine, from the carried raw dataset (``python -m training.totalsegmentator`` writes
it here; the GPU machine reaches no package index):

    python -m training.burst --dataset build/ts_dataset --out "$OUT" --minutes 7

1. ``--synth N`` adds N synthetic CTs painted from the bundled label map (``training.synth``);
   ``training.prepare`` builds the cache there (160³ coarse cubes, 192³ fine crops);
2. ``python -m training`` trains the coarse and the fine stage side by side on the one GPU,
   each from ``training/configs/burst_<stage>.toml`` (whole cubes, fp16 autocast), until both
   finish or ``--minutes`` pass; then each is stopped and keeps its last finished epoch;
3. each stage's ``last.pt`` is packed as fp16 weights in parts under 15 MiB
   (``<stage>.partK.pt``), with ``burst.json``: epochs done, seconds per iteration by phase,
   peak GPU memory per stage (torch's allocator) and of the device, validation Dice.

Back here, the parts become ordinary checkpoints for ``python -m export``:

    python -m training.burst --unpack DIR --out build/burst_train
    python -m export --checkpoint build/burst_train/{coarse,fine}/last.pt --out weights

``--tiny`` runs the same steps with tiny networks and cubes on any machine in seconds: the
test suite runs it, so GPU minutes are not spent debugging this script.

What the GPU machine lacks, and the carry budget: it has torch, numpy and onnx but not
SimpleITK or cc3d, which ``training.prepare`` reads and crops with (their wheels unpacked:
about 55 MB), and one call carries 64 MiB in all, the tracked tree (51 MB) included. So bring
them in parts by successive calls into an ignored folder while the machine stays warm (as was
done for onnxruntime-gpu), put it on ``PYTHONPATH``, and carry the dataset without what the
tree already holds: ``imagesUnlabelled/``, ``labelsTr/`` and ``dataset.json`` (10.5 MB); the
command then restores patient A's image from ``data/totalsegmentator/example_ct.nii.gz``.
"""

import argparse
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from inference.stage_info import STAGES

from .checkpoint import StageSettings, load_checkpoint, save_checkpoint
from .config import HelpFormatter
from .networks import NetworkSpec, build_network
from .prepare import main as prepare_main
from .synth import main as synth_main

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_CT = ROOT / "data" / "totalsegmentator" / "example_ct.nii.gz"  # patient A
PART_BYTES = 15 * 2**20  # under the 16 MiB a file may have to come back from the GPU machine
REPORT = "burst.json"
# The paper's cube sizes and the CPU recipe's crops of the one labelled patient (make weights).
PREPARE = ["--coarse-crops", "12", "--fine-crops", "12"]
TINY_PREPARE = [
    "--coarse-size",
    "32",
    "--fine-size",
    "32",
    "--coarse-crops",
    "2",
    "--fine-crops",
    "2",
]
TINY_TRAIN = [
    "--input-size", "32", "--channels", "2", "4", "8", "16", "32",
    "--disc-channels", "4", "8", "16", "32", "--epochs", "2", "--iters-per-epoch", "2",
    "--warmup-iters", "1", "--cooldown-iters", "1", "--batch-labelled", "1", "--val-every", "1",
]  # fmt: skip


def stage_command(stage: str, cache: Path, runs: Path, tiny: bool) -> list[str]:
    config = ROOT / "training" / "configs" / f"burst_{stage}.toml"
    cmd = [sys.executable, "-m", "training", "--config", str(config)]
    return [*cmd, "--cache", str(cache), "--out", str(runs), *(TINY_TRAIN if tiny else [])]


class DeviceMemory:
    """Peak used memory of the whole GPU (total - free), sampled every half second."""

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            free, total = torch.cuda.mem_get_info()
            used = (total - free) / 2**20
            self.peak_mib = max(self.peak_mib or 0.0, used)

    def __enter__(self) -> "DeviceMemory":
        if torch.cuda.is_available():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def run_stages(commands: dict[str, list[str]], seconds: float, logs: Path) -> dict[str, str]:
    """Run the stages side by side; SIGTERM whatever still runs after ``seconds``. Returns each
    stage's ending: "finished", "stopped at the time limit" or "failed (exit N)"."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for stage, cmd in commands.items():
        with open(logs / f"{stage}.log", "w") as log:
            procs[stage] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(1)
    ending = {}
    for stage, proc in procs.items():
        if proc.poll() is None:
            # The checkpoint of the last finished epoch was written whole (temporary + rename).
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            ending[stage] = "stopped at the time limit"
        else:
            ending[stage] = (
                "finished" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            )
    return ending


def seconds_per_iteration(run: Path) -> dict[str, float]:
    """Median seconds of an iteration in each phase, from the run's ``log.csv``."""
    by_phase: dict[str, list[float]] = {}
    with open(run / "log.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_phase.setdefault(row["phase"], []).append(float(row["seconds"]))
    return {phase: statistics.median(s) for phase, s in by_phase.items()}


def pack(run: Path, out: Path, stage: str) -> tuple[list[Path], dict]:
    """``run/last.pt`` as fp16 parts under ``PART_BYTES`` in ``out``; its record for the report."""
    payload = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    meta = {k: payload[k] for k in ("spec", "settings", "config", "epoch", "best_dice")}
    meta["cuda_peak_mib"] = payload.get("cuda_peak_mib")
    parts: list[dict] = [{}]
    size = 0
    for name, tensor in payload["model"].items():
        half = tensor.half() if tensor.is_floating_point() else tensor
        nbytes = half.numel() * half.element_size()
        if parts[-1] and size + nbytes > PART_BYTES:
            parts.append({})
            size = 0
        parts[-1][name] = half
        size += nbytes
    written = []
    for k, model in enumerate(parts):
        path = out / f"{stage}.part{k}.pt"
        torch.save(
            {"stage": stage, "part": k, "parts": len(parts), "meta": meta, "model": model}, path
        )
        written.append(path)
    return written, meta


def restore_bundled(dataset: Path) -> None:
    """Put back patient A's image, which the tracked tree holds, so a carry can leave it out."""
    image = dataset / "imagesTr" / "patientA_0000.nii.gz"
    if (dataset / "labelsTr" / "patientA.nii.gz").is_file() and not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLED_CT, image)


def burst(dataset: Path, out: Path, minutes: float, work: Path, tiny: bool, synth: int = 0) -> int:
    started = time.monotonic()
    restore_bundled(dataset)
    if synth:  # painted from the tracked label map on that machine: nothing more to carry
        labels = ["--labels", str(BUNDLED_CT.with_name("example_seg.nii.gz"))]
        if synth_main([*labels, "--out", str(dataset), "--count", str(synth)]) != 0:
            return 1
    cache, runs = work / "cache", work / "train"
    prepare = TINY_PREPARE if tiny else PREPARE
    if prepare_main(["--dataset", str(dataset), "--out", str(cache), *prepare]) != 0:
        return 1
    budget = minutes * 60 - (time.monotonic() - started)
    commands = {s: stage_command(s, cache, runs, tiny) for s in STAGES}
    with DeviceMemory() as device:
        ending = run_stages(commands, budget, out / "logs")  # they come back with the parts
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "device_peak_mib": device.peak_mib,
        "seconds": time.monotonic() - started,
        "stages": {},
    }
    failed = 0
    for stage in STAGES:
        run = runs / stage
        record: dict = {"ending": ending[stage]}
        if (run / "last.pt").is_file():
            files, meta = pack(run, out, stage)
            record.update(
                files=[p.name for p in files],
                epochs=meta["epoch"],
                best_dice=meta["best_dice"],
                cuda_peak_mib=meta["cuda_peak_mib"],
                seconds_per_iteration=seconds_per_iteration(run),
            )
        else:
            failed += 1
            record["error"] = "no finished epoch"
        report["stages"][stage] = record
        print(f"{stage}: {json.dumps(record)}", file=sys.stderr)
    (out / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if failed else 0


def unpack(folder: Path, out: Path) -> list[Path]:
    """The packed parts in ``folder`` -> ``out/<stage>/last.pt`` checkpoints (fp32)."""
    written = []
    for stage in STAGES:
        paths = sorted(folder.glob(f"{stage}.part*.pt"))
        if not paths:
            continue
        parts = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
        if len(parts) != parts[0]["parts"]:
            raise ValueError(f"{folder}: {len(parts)} of {parts[0]['parts']} {stage} parts")
        meta = parts[0]["meta"]
        state = {
            k: v.float() if v.is_floating_point() else v
            for p in parts
            for k, v in p["model"].items()
        }
        spec = NetworkSpec.from_dict(meta["spec"])
        net = build_network(spec)
        net.load_state_dict(state)
        path = out / stage / "last.pt"
        save_checkpoint(
            path,
            net,
            spec,
            StageSettings.from_dict(meta["settings"]),
            config=meta["config"],
            epoch=meta["epoch"],
            best_dice=meta["best_dice"],
        )
        load_checkpoint(path)  # readable as export reads it
        written.append(path)
    if not written:
        raise ValueError(f"{folder}: no packed stage parts (<stage>.partK.pt)")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.burst",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--dataset", type=Path, help="raw dataset (training.totalsegmentator --out)")
    p.add_argument("--unpack", type=Path, metavar="DIR", help="packed parts -> checkpoints")
    p.add_argument("--out", type=Path, required=True, help="packed parts, or checkpoints")
    p.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget, all steps")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "burst", help="cache and runs")
    p.add_argument("--synth", type=int, default=0, help="add N synthetic CTs (training.synth)")
    p.add_argument("--tiny", action="store_true", help="tiny networks and cubes (a test)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.unpack:
        try:
            for path in unpack(args.unpack, args.out):
                print(path)
        except (ValueError, OSError, KeyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.dataset is None:
        p.error("--dataset is required to train (or --unpack DIR)")
    # Both stages share the GPU's CPU cores; threads beyond them only contend.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    return burst(args.dataset, args.out, args.minutes, args.work, args.tiny, args.synth)


if __name__ == "__main__":
    sys.exit(main())
