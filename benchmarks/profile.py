"""Profile a segmentation run the way FLARE22 did: one case at a time, a fresh process each.

    python benchmarks/profile.py [--cases PATH ...] [--weights DIR]     # local predict.sh
    python benchmarks/profile.py --docker IMAGE [--cases PATH ...]       # the FLARE command
    python benchmarks/profile.py --cmd 'sh predict.sh {input} {output}'  # any command
    python benchmarks/profile.py --sampler official ...  # FLARE22's sampling loop, edges too

Per case: the case is copied alone into a fresh ``inputs/`` folder, a sampler process starts
(ours first records the idle GPU memory, which counts against the tolerance too), the command
runs, the sampler stops. Written to ``--results`` (default ``results/profile``): ``<case>.csv``
(the samples), ``<case>.png`` (GPU memory with the 2048 MiB line, CPU over time),
``cases.csv``, ``summary.json`` (every case, mean and median; strict JSON, NaN written as
null) and ``outputs/`` (the label maps, for ``benchmarks/evaluate.py``). Official figures use
the challenge's arithmetic (sum x 0.1 s, CPU formula with its +0.1); ``true`` ones integrate
over the real timestamps. Without NVML or a GPU the GPU columns are empty and say why. Exit
code 1 if a case failed, 2 on bad usage. docs/measuring.md says where each figure comes from
and how the two samplers differ.
"""

import argparse
import csv
import json
import math
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

from benchmarks.efficiency import GPU_TOLERANCE_MIB, Series, summarize  # noqa: E402
from benchmarks.sampler import Sampler, open_gpu  # noqa: E402
from inference.io import case_name, find_inputs  # noqa: E402

SAMPLE_CASES = [ROOT / "data" / "totalsegmentator" / "example_ct.nii.gz"]
DOCKER_IMAGE_CMD = ["/bin/bash", "-c", "sh predict.sh"]  # verbatim from the challenge


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/profile.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--docker", metavar="IMAGE", help="run the FLARE docker command per case")
    what.add_argument("--cmd", help="shell command with {input} and {output} folder placeholders")
    p.add_argument("--cases", nargs="+", type=Path, default=SAMPLE_CASES, help="files/folders")
    p.add_argument("--weights", type=Path, help="stage graphs for the local predict.sh")
    p.add_argument("--results", type=Path, default=ROOT / "results" / "profile")
    p.add_argument("--interval", type=float, default=0.1, help="seconds slept between samples")
    p.add_argument("--gpu", type=int, default=0, help="GPU index to sample (and to run on)")
    p.add_argument(
        "--sampler",
        choices=("ours", "official"),
        default="ours",
        help="ours: the samples taken while the command ran; official: FLARE22's loop, which "
        "also keeps a first short sample before the command and one after it",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=1.0,
        help="seconds of idle sampling first (ours; the official sampler starts with the command)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a case is killed")
    return p.parse_args(argv)


def case_files(paths: list[Path]) -> list[Path]:
    """The images named, and those in the folders named (as ``python -m inference`` finds)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += find_inputs(path)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such case file or folder")
    return files


def build_command(
    args: argparse.Namespace, inputs: Path, outputs: Path, name: str, cidfile: Path, gpu: bool
) -> list[str]:
    if args.docker:
        gpus = ["--gpus", f"device={args.gpu}"] if gpu else []
        volumes = ["-v", f"{inputs}/:/workspace/inputs/", "-v", f"{outputs}/:/workspace/outputs/"]
        run = ["docker", "container", "run", *gpus, "--name", name, "--rm"]
        return [*run, "--cidfile", str(cidfile), *volumes, args.docker, *DOCKER_IMAGE_CMD]
    if args.cmd:
        cmd = args.cmd.replace("{input}", shlex.quote(str(inputs)))
        return ["/bin/sh", "-c", cmd.replace("{output}", shlex.quote(str(outputs)))]
    weights = ["--weights", str(args.weights.resolve())] if args.weights else []
    return ["sh", str(ROOT / "predict.sh"), str(inputs), str(outputs), *weights]


@dataclass
class Run:
    status: str  # ok, failed (exit code), no output, timeout
    exit_code: int | None
    wall_s: float
    start: float
    end: float
    tree_cpu_s: float  # user + system of the command and every descendant it waited for


def run_command(cmd: list[str], sampler: Sampler, timeout: float, container: str | None) -> Run:
    env = {**os.environ, "PYTHON": sys.executable}  # predict.sh then runs this interpreter
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    sampler.watch(proc.pid)
    try:
        code: int | None = proc.wait(timeout)
        status = "ok" if code == 0 else f"failed ({code})"
    except subprocess.TimeoutExpired:
        code, status = None, "timeout"
        if container:
            subprocess.run(["docker", "kill", container], capture_output=True)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(status, code, end - start, start, end, cpu)


def profile_case(args: argparse.Namespace, case: Path, index: int, gpu: bool) -> dict:
    """Run one case in a fresh work folder; returns its row (and writes its CSV and PNG)."""
    name = case_name(case)
    work = args.results / "work" / name
    shutil.rmtree(work, ignore_errors=True)
    inputs, outputs = work / "inputs", work / "outputs"
    inputs.mkdir(parents=True)
    outputs.mkdir()
    outputs.chmod(0o777)  # a container may write as an unprivileged user
    copy = shutil.copytree if case.is_dir() else shutil.copy2
    copy(case, inputs / case.name)
    cidfile = work / "container.id"
    container = f"flare22-profile-{os.getpid()}-{index}" if args.docker else None
    cmd = build_command(args, inputs, outputs, container or "", cidfile, gpu)

    official = args.sampler == "official"
    sampler = Sampler(args.results / f"{name}.csv", args.gpu, args.interval, cidfile, official)
    sampler.start()
    if not official:  # Efficiency.py starts its sampler just before the command
        time.sleep(args.idle)
    run = run_command(cmd, sampler, args.timeout, container)
    series = sampler.stop()

    written = outputs / f"{name}.nii.gz"
    if run.status == "ok" and not written.exists():
        run.status = "no output"
    if written.exists():
        (args.results / "outputs").mkdir(exist_ok=True)
        shutil.move(written, args.results / "outputs" / written.name)
    shutil.rmtree(work, ignore_errors=True)

    idle = series.gpu_used_mib[series.t <= run.start]
    row = {
        "case": name,
        **asdict(run),
        "idle_gpu_mib": float(statistics.median(idle)) if idle.size and gpu else math.nan,
        **summarize(counted_samples(series, run, official)),
    }
    if args.docker:
        row["tree_cpu_s"] = math.nan  # the container's processes are not our children
    plot_case(series, row, args.results / f"{name}.png")
    return row


def counted_samples(series: Series, run: Run, official: bool) -> Series:
    """The samples a case's figures sum: ours, those taken while the command ran.

    Efficiency.py keeps every sample its daemon took from its start, just before the command,
    until the lists were copied after the command returned: the official sampler's samples up
    to and including the first one taken after the command ended.
    """
    if not official:
        return series.window(run.start, run.end)
    after = series.t[series.t > run.end]
    return series.window(-math.inf, float(after[0]) if after.size else run.end)


def plot_case(series: Series, row: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = series.t - row["start"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    if math.isnan(row["gpu_max"]):
        top.text(0.5, 0.5, "no GPU samples", ha="center", va="center", transform=top.transAxes)
    else:
        top.plot(t, series.gpu_used_mib, label="device used (total - free)")
        top.plot(t, series.gpu_process_mib, label="processes under test")
    top.axhline(GPU_TOLERANCE_MIB, color="red", ls="--", label="2048 MiB tolerance")
    top.set_ylim(
        bottom=0, top=max(1.25 * GPU_TOLERANCE_MIB, np.nanmax(series.gpu_used_mib, initial=0) * 1.1)
    )
    top.set_ylabel("GPU memory (MiB)")
    top.legend(loc="upper left", fontsize=8)
    cpus = os.cpu_count() or 1
    bottom.plot(t, series.cpu_official_pct, label="system, official formula (+0.1)")
    bottom.plot(t, series.cpu_true_pct, label="system, true")
    bottom.plot(t, 100 * series.tree_cores / cpus, label="process tree")
    bottom.set_ylabel(f"CPU (% of {cpus} CPUs)")
    bottom.set_xlabel("seconds since the command started")
    bottom.legend(loc="upper left", fontsize=8)
    for ax in (top, bottom):
        ax.axvspan(0, row["wall_s"], color="0.9", zorder=0)
    fig.suptitle(f"{row['case']}: {row['status']}, {row['wall_s']:.1f} s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def aggregate(rows: list[dict], how) -> dict:
    keys = [
        k for k, v in rows[0].items() if isinstance(v, float | int) and k not in ("start", "end")
    ]
    out = {}
    for k in keys:
        values = [r[k] for r in rows if r[k] is not None and not math.isnan(r[k])]
        out[k] = how(values) if values else math.nan
    return out


COLUMNS = [  # (key, header, format) of the printed table
    ("wall_s", "time s", ".2f"),
    ("gpu_area_official", "GPU area", ".0f"),
    ("gpu_area_tolerance", "GPU area >2GB", ".0f"),
    ("gpu_area_true", "GPU area true", ".0f"),
    ("gpu_max_flare", "GPU max FLARE", ".0f"),
    ("gpu_max", "GPU max", ".0f"),
    ("cpu_max_official", "CPU max", ".1f"),
    ("cpu_area_official", "CPU area", ".0f"),
    ("cpu_area_true", "CPU area true", ".0f"),
    ("tree_cpu_s", "tree CPU s", ".1f"),
    ("ram_peak_mib", "RAM peak MiB", ".0f"),
    ("ram_area_official", "RAM area", ".0f"),
    ("tree_rss_peak_mib", "tree RSS MiB", ".0f"),
]


def table(rows: list[tuple[str, str, dict]]) -> str:
    def cell(v, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    head = ["case", "status", *(h for _, h, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, status, r in rows:
        cells = [name, status, *(cell(r.get(k), f) for k, _, f in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def json_safe(value: object) -> object:
    """``value`` with every NaN or infinite float, at any depth of dicts and lists, as None.

    Strict JSON has no NaN: readers other than Python's (jq, JavaScript) reject it.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_results(results: Path, rows: list[dict], notes: list[str], command: str) -> None:
    with open(results / "cases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "command": command,
        "notes": notes,
        "cpus": os.cpu_count(),
        "cases": rows,
        "mean": aggregate(rows, statistics.mean),
        "median": aggregate(rows, statistics.median),
    }
    text = json.dumps(json_safe(summary), indent=1, allow_nan=False)
    (results / "summary.json").write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cases = case_files(args.cases)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cases:
        print(f"error: no case images in {' '.join(map(str, args.cases))}", file=sys.stderr)
        return 2
    args.results.mkdir(parents=True, exist_ok=True)
    gpu_probe, gpu_note = open_gpu(args.gpu)
    gpu = gpu_probe is not None
    notes = [gpu_note, f"sampler: {args.sampler}"]
    if args.docker and not gpu:
        notes.append("docker runs without --gpus: no GPU to hand it")
    print("\n".join(notes), file=sys.stderr)

    rows = []
    for i, case in enumerate(cases):
        row = profile_case(args, case, i, gpu)
        print(f"{row['case']}: {row['status']}, {row['wall_s']:.2f} s", file=sys.stderr)
        rows.append(row)
    shutil.rmtree(args.results / "work", ignore_errors=True)
    example = build_command(args, Path("{input}"), Path("{output}"), "NAME", Path("ID"), gpu)
    write_results(args.results, rows, notes, shlex.join(example))

    printed = [(r["case"], r["status"], r) for r in rows]
    if len(rows) > 1:
        printed += [(k, "", aggregate(rows, f)) for k, f in (("mean", statistics.mean),)]
        printed += [("median", "", aggregate(rows, statistics.median))]
    print(table(printed))
    print(f"results: {args.results}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
