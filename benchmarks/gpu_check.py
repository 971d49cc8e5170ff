"""Everything the GPU path claims, measured in one call to a lent GPU machine.

    make gpu-kit                                           # here: what that machine lacks
    python3 benchmarks/gpu_check.py --kit build/gpu-kit --out "$OUT"      # there

A lent GPU machine reaches no package index, takes one command of at most 10 minutes and at
most 64 MiB of files per call. ``make gpu-kit`` (``--make-kit DIR``) downloads, for that
machine's Python, the wheels of ``requirements/gpu.txt`` it does not have (onnxruntime-gpu,
SimpleITK, connected-components-3d: about 300 MiB), adds the fp16 graphs derived here (24 MiB;
that machine's torch is not the pinned one), and cuts them into parts with ``kit.json`` (each
part's sha256). Each part travels in its own call while the machine stays warm; the
part calls are the only ones that can leave the weights at home (docs/measuring.md has the
sequence). ``--kit DIR`` checks the parts, installs the wheels into ``DIR/site`` and puts it
first on the path, so the CUDA build shadows the CPU onnxruntime there.

Then, in one run (about 3 minutes on an H200), into ``--out``:
- the fp16 graphs: the kit's, else derived from the stored fp32 ones there;
- ``benchmarks/pipeline.py``'s cases: the bundled CT at FLARE's 0.8 x 0.8 x 2.5 mm (134 slices)
  and the same anatomy at 300 and 600 slices;
- per case, ``--runs`` fresh processes of the GPU path (``benchmarks/cuda_sessions.py``'s
  ``chosen``: what ``python -m inference`` does): wall time, stage times, the process's GPU
  peak (NVML) and the device's, median time and worst memory;
- one fresh process of the fp32 CPU path per case, whose labels are the reference of the
  ``agree`` columns (``benchmarks/agreement.py``: voxels, least organ DSC, kept or not);
- ``benchmarks/profile.py`` on the 134-slice case: the FLARE22 figures (time, GPU area, the
  area above the 2 GB tolerance, CPU area);
- one table on stdout and ``gpu_check.json``.

``--tiny`` does the same with small random graphs and 64 x 64 cases on any machine in
seconds (without CUDA the GPU path is the CPU one): the test suite runs it, so GPU minutes
are spent measuring, not debugging.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

# The lent machine's Python (KINDS.md of the device tool) and the packages it lacks.
KIT_PYTHON = "3.12"
KIT_PACKAGES = ("onnxruntime-gpu", "simpleitk", "connected-components-3d")
KIT_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
# One call carries 64 MiB, the tracked tree (about 49 MiB, mostly weights) included. A part
# of 56 MiB travels when the weights stay at home; 13 MiB travels beside them.
PART_MIB = 56
KIT_INDEX = "kit.json"
SLICES = (300, 600)


class KitError(RuntimeError):
    """A kit that is missing parts or holds damaged ones; names what to carry again."""


def pinned(requirements: Path, names: tuple[str, ...]) -> list[str]:
    """The ``name==version`` lines of ``requirements`` for ``names`` (case-insensitive)."""
    lines = [s.split("#")[0].strip() for s in requirements.read_text().splitlines()]
    specs = {s.split("==")[0].lower(): s for s in lines if "==" in s}
    missing = [n for n in names if n not in specs]
    if missing:
        raise KitError(f"{requirements}: no pinned version of {', '.join(missing)}")
    return [specs[n] for n in names]


def make_kit(
    out: Path, part_mib: float = PART_MIB, wheels: Path | None = None, graphs: Path | None = None
) -> dict:
    """Download the kit's wheels (or take them from ``wheels``), add the fp16 graphs of
    ``graphs`` (derived there first when missing), and cut them all into parts."""
    specs = pinned(ROOT / "requirements" / "gpu.txt", KIT_PACKAGES)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if wheels is None:
        wheels = out / "wheels"
        platforms = [a for p in KIT_PLATFORMS for a in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--python-version", KIT_PYTHON, "--implementation", "cp", *platforms]
        subprocess.run([*cmd, "-d", str(wheels), *specs], check=True)
    tar = out / "kit.tar"
    with tarfile.open(tar, "w") as t:  # wheels are zip files already: no compression
        for wheel in sorted(wheels.glob("*.whl")):
            t.add(wheel, arcname=wheel.name)
        for graph in fp16_graphs(graphs) if graphs else []:
            t.add(graph, arcname=f"graphs/{graph.name}")
    parts = []
    size = max(1, int(part_mib * 2**20))
    with open(tar, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(size), b"")):
            part = out / f"part-{i:02d}"
            part.write_bytes(block)
            digest = hashlib.sha256(block).hexdigest()
            parts.append({"name": part.name, "bytes": len(block), "sha256": digest})
    tar.unlink()
    if wheels.is_relative_to(out):
        shutil.rmtree(wheels)
    kit = {"python": KIT_PYTHON, "requirements": specs, "parts": parts}
    if graphs:  # the fp16 graphs serve only the fp32 graphs they were derived from
        kit["fp32_sha256"] = fp32_hashes(graphs)
    (out / KIT_INDEX).write_text(json.dumps(kit, indent=2) + "\n")
    return kit


def fp16_graphs(weights: Path) -> list[Path]:
    """``weights``' fp16 graphs, derived from its fp32 ones when missing (``make gpu-weights``):
    derived here with the pinned torch, so the GPU machine's torch plays no part."""
    from inference.stage_info import STAGES, graph_filename

    paths = [weights / graph_filename(stage, "fp16") for stage in STAGES]
    if not all(p.is_file() for p in paths):
        from export.__main__ import main as export_main

        if export_main(["--derive", str(weights), "--precision", "fp16"]) != 0:
            raise KitError(f"{weights}: the fp16 graphs could not be derived")
    return paths


def fp32_hashes(weights: Path) -> dict[str, str]:
    from training.checkpoint import sha256_file

    return {p.name: sha256_file(p) for p in sorted(weights.glob("*_fp32.onnx"))}


def kit_graphs(kit_dir: Path, weights: Path) -> Path | None:
    """The kit's fp16 graphs when they were derived from ``weights``' fp32 graphs, else None."""
    kit = json.loads((kit_dir / KIT_INDEX).read_text())
    graphs = kit_dir / "graphs"
    if not graphs.is_dir() or kit.get("fp32_sha256") != fp32_hashes(weights):
        return None
    return graphs


def install_kit(kit_dir: Path) -> Path:
    """Check the kit's parts, install its wheels into ``kit_dir/site`` and its graphs into
    ``kit_dir/graphs`` once; the site folder."""
    site = kit_dir / "site"
    index = kit_dir / KIT_INDEX
    if not index.is_file():
        raise KitError(f"{index}: no such file (make gpu-kit writes it; carry it in every call)")
    kit = json.loads(index.read_text())
    done = site / ".installed"
    if done.is_file() and done.read_text() == index.read_text():
        return site
    missing = [p["name"] for p in kit["parts"] if not (kit_dir / p["name"]).is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "kit.tar"
        bad = []
        with open(tar, "wb") as f:  # each part read once: checked as it is joined
            for p in kit["parts"]:
                if p["name"] not in missing:
                    block = (kit_dir / p["name"]).read_bytes()
                    if hashlib.sha256(block).hexdigest() != p["sha256"]:
                        bad.append(p["name"])
                    f.write(block)
        if missing or bad:
            gone, damaged = missing or "none", bad or "none"
            raise KitError(f"{kit_dir}: carry again: missing {gone}, damaged {damaged}")
        with tarfile.open(tar) as t:
            t.extractall(tmp, filter="data")
        shutil.rmtree(kit_dir / "graphs", ignore_errors=True)
        if (Path(tmp) / "graphs").is_dir():
            shutil.copytree(Path(tmp) / "graphs", kit_dir / "graphs")
        shutil.rmtree(site, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        cmd += ["--no-compile", "--target", str(site), *map(str, Path(tmp).glob("*.whl"))]
        subprocess.run(cmd, check=True)
    done.write_text(index.read_text())
    return site


def use_site(site: Path) -> None:
    """Put ``site`` first on this process's path and on every child process's, and the CUDA
    libraries of the machine's pip packages (``nvidia/*/lib``: cuDNN, cuBLAS, the runtime) on
    the children's library path, where onnxruntime-gpu looks for them."""
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    libs = sorted({str(d) for p in sys.path if p for d in Path(p).glob("nvidia/*/lib")})
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
        [*libs, *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
    )


def prepare_weights(folder: Path, weights: Path, tiny: bool, fp16: Path | None = None) -> Path:
    """The stored fp32 graphs (or small random ones) with their fp16 graphs: the kit's
    (``fp16``) when it brought them, else derived here."""
    from export.__main__ import main as export_main

    out = folder / "weights"
    if tiny:
        small = "--init random --coarse-size 32 --fine-size 64 --channel-divisor 4".split()
        assert export_main([*small, "--out", str(out), "--precision", "fp32"]) == 0
    else:
        out.mkdir(parents=True)
        for path in weights.glob("*_fp32.onnx"):
            shutil.copy(path, out)
        shutil.copy(weights / "manifest.json", out)
    if fp16 is not None and not tiny:
        for path in fp16.glob("*_fp16.onnx"):
            shutil.copy(path, out)
        return out
    if export_main(["--derive", str(out), "--precision", "fp16"]) != 0:
        raise RuntimeError(f"{out}: the fp16 graphs could not be derived")
    return out


def measure_case(gpu, weights: Path, case: Path, work: Path, runs: int, device: str) -> dict:
    """The GPU path's fresh processes and one fp32 CPU process; labels compared."""
    from benchmarks.agreement import file_agreement
    from benchmarks.cuda_sessions import run_once, summarize

    variant = "chosen" if device == "cuda" else "cpu"
    gpu_runs = [run_once(gpu, variant, weights, case, work / "gpu") for _ in range(runs)]
    row = summarize(gpu_runs)
    if device == "cuda" and "error" not in row and row["providers"][0] != "CUDAExecutionProvider":
        row["error"] = f"ran on {row['providers'][0]}, not CUDA (a library missing? run -v)"
    reference = summarize([run_once(None, "cpu", weights, case, work / "cpu")])
    row["cpu_wall"] = reference.get("wall")
    labels, ref = work / "gpu" / "case.nii.gz", work / "cpu" / "case.nii.gz"
    if labels.is_file() and ref.is_file():
        row["agree"] = file_agreement(labels, ref).as_dict()
    row["runs"] = gpu_runs
    return row


def profile_case(case: Path, weights: Path, results: Path) -> dict:
    """``benchmarks/profile.py`` on one case (median row of its summary)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "profile.py"), "--cases", str(case)]
    cmd += ["--weights", str(weights), "--results", str(results), "--idle", "0.5"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    summary = results / "summary.json"
    if not summary.is_file():
        return {"error": (done.stderr.strip().splitlines() or ["profile.py failed"])[-1]}
    return json.loads(summary.read_text())["median"]


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[dict], profile: dict, device: str) -> str:
    head = (
        f"{'case':<11} {'z x y x x':>13} {'wall s':>6} {'sess':>5} {'coarse':>6} {'fine':>6} "
        f"{'proc MiB':>8} {'dev MiB':>8} {'cpu s':>6} {'agree':>7} {'min DSC':>7} {'kept':>5}"
    )
    lines = [f"{device} path, fresh process per run (median wall, worst memory)", head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:<11} error: {r['error'][:100]}")
            continue
        a = r.get("agree") or {}
        shape = "x".join(map(str, r["shape"]))
        lines.append(
            f"{r['case']:<11} {shape:>13} {r['wall']:>6.2f} {r['sessions']:>5.2f} "
            f"{r['coarse']:>6.2f} {r['fine']:>6.2f} {_f(r['process_peak_mib'], '.0f'):>8} "
            f"{_f(r['device_peak_mib'], '.0f'):>8} {_f(r.get('cpu_wall'), '.2f'):>6} "
            f"{_f(a.get('voxels'), '.5f'):>7} {_f(a.get('min_dsc'), '.4f'):>7} "
            f"{a.get('kept', '-')!s:>5}"
        )
    if "error" in profile:
        lines.append(f"profile.py: {profile['error']}")
    else:
        lines.append(
            f"FLARE22 figures (profile.py, the flare case): "
            f"time {_f(profile.get('wall_s'), '.2f')} s, "
            f"GPU area {_f(profile.get('gpu_area_official'), '.0f')} MiB s, "
            f"above 2 GB {_f(profile.get('gpu_area_tolerance'), '.0f')}, "
            f"GPU max {_f(profile.get('gpu_max_flare'), '.0f')} MiB, "
            f"CPU area {_f(profile.get('cpu_area_official'), '.0f')}"
        )
    lines.append(
        "proc/dev MiB: the process's GPU peak (NVML) and the device's above idle; cpu s: the "
        "fp32 CPU path's wall; agree: voxels equal to its labels; min DSC: least organ DSC "
        "against them (organs > 10 mL); kept: >= 0.995 and >= 0.99"
    )
    return "\n".join(lines)


def check(args: argparse.Namespace) -> int:
    fp16 = None
    if args.kit is not None:
        use_site(install_kit(args.kit))
        fp16 = kit_graphs(args.kit, args.weights)
        if fp16 is None:
            print("the kit's fp16 graphs are not these weights': deriving them here")
    import onnxruntime as ort

    from benchmarks.pipeline import prepare_cases
    from benchmarks.sampler import open_gpu

    providers = ort.get_available_providers()
    device = "cuda" if "CUDAExecutionProvider" in providers else "cpu"
    if device == "cpu" and not args.tiny:
        print(f"error: ONNX Runtime {ort.__version__} has no CUDA provider", file=sys.stderr)
        return 2
    gpu, note = open_gpu(0)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"onnxruntime": ort.__version__, "providers": providers, "gpu": note}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        weights = prepare_weights(Path(tmp), args.weights, args.tiny, fp16)
        slices = (24, 48) if args.tiny else SLICES
        cases = prepare_cases(Path(tmp) / "cases", slices, in_plane=64 if args.tiny else 512)
        rows = []
        for name, folder in cases.items():
            case = folder / "case_0000.nii.gz"
            work = Path(tmp) / "out" / folder.name
            row = measure_case(gpu, weights, case, work, args.runs, device)
            rows.append({"case": name, **row})
            print(f"{name}: done", file=sys.stderr, flush=True)
        flare = cases["flare"] / "case_0000.nii.gz"
        profile = profile_case(flare, weights, Path(tmp) / "profile")
    result.update(device=device, rows=rows, profile=profile)
    result["seconds"] = time.perf_counter() - start
    text = table(rows, profile, device)
    print(note)
    print(text)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'gpu_check.json'} ({result['seconds']:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/gpu_check.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_check")
    p.add_argument("--weights", type=Path, default=ROOT / "weights", help="fp32 stage graphs")
    p.add_argument("--runs", type=int, default=3, help="fresh GPU processes per case")
    p.add_argument("--kit", type=Path, help="install this gpu kit first (make gpu-kit)")
    p.add_argument("--tiny", action="store_true", help="small random graphs and cases")
    p.add_argument("--make-kit", type=Path, metavar="DIR", help="write the kit here and stop")
    p.add_argument("--part-mib", type=float, default=PART_MIB, help="--make-kit: part size")
    p.add_argument("--wheels", type=Path, help="--make-kit: take the wheels from this folder")
    args = p.parse_args(argv)
    try:
        if args.make_kit:
            kit = make_kit(args.make_kit, args.part_mib, args.wheels, args.weights)
            total = sum(part["bytes"] for part in kit["parts"]) / 2**20
            names = ", ".join(part["name"] for part in kit["parts"])
            print(f"{args.make_kit}: {len(kit['parts'])} parts ({total:.0f} MiB): {names}")
            print(f"carry {KIT_INDEX} with each part, one part per call (docs/measuring.md)")
            return 0
        return check(args)
    except (KitError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
