"""Faster CPU paths for the stage graphs, against the shipped fp32 ONNX Runtime path.

    python benchmarks/cpu_paths.py [--weights weights] [--runs 3] [--paths fp32 int8 ...]
                                   [--calibration CT ...] [--out results/cpu_paths.json]

Each path is built from the stored fp32 graphs in this run, then segments the bundled CT and
the FLARE-sized case (``benchmarks/pipeline.py``: 0.8 x 0.8 x 2.5 mm, 512 x 512 x 134) in
``--runs`` fresh processes, the paths taking turns (wall time from start to exit, median; stage
times inside), and its
labels are compared with the fp32 path's (``benchmarks/agreement.py``: kept when >= 99.5 % of
the voxels agree and every organ above 10 mL has DSC >= 0.99).

Paths:
- ``fp32``: the shipped graphs and session options (the baseline);
- ``native-norm``: the same weights exported with ONNX InstanceNormalization instead of the
  decomposed form the fp32 graphs carry for probability parity (``export.graphs``);
- ``int8``: ONNX Runtime static quantisation of the fp32 graphs' convolutions (QDQ, int8
  per-channel weights, uint8 activations), calibrated on real CTs (``--calibration``: the
  coarse graph on each whole volume, the fine graph on the crop the fp32 path cuts from it);
- ``openvino``, ``openvino-bf16``: both networks on OpenVINO's runtime (``pip install
  openvino``; skipped when it is missing), in f32 and with its bf16 inference hint;
- ``default``: what ``python -m inference --device cpu`` runs with no engine named
  (``--cpu-engine auto``): both networks on OpenVINO f32 where it is installed, cut and compiled
  as the runtime does (``inference.openvino_stage``);
- ``engine``: the runtime's ``--cpu-engine openvino``, its choice where OpenVINO is installed:
  the coarse network on OpenVINO f32 (the fine crop is cut from its labels), the fine one in
  bf16 where the CPU has it natively (``inference.openvino_stage``).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

BUNDLED_CT = ROOT / "data" / "totalsegmentator" / "example_ct.nii.gz"
PATHS = ("fp32", "native-norm", "int8", "openvino", "openvino-bf16", "default", "engine")
STAGES = ("coarse", "fine")


def graph(folder: Path, stage: str) -> Path:
    return folder / f"{stage}_fp32.onnx"


def build_native_norm(weights: Path, out: Path) -> None:
    """The stored graphs re-exported with native InstanceNormalization, same metadata."""
    import onnx

    from export.check import load_stage
    from export.onnx_file import stage_model

    for stage in STAGES:
        model, _, ckpt = load_stage(graph(weights, stage))
        native = stage_model(ckpt, "fp32", native_norms=True)
        onnx.helper.set_model_props(native, {p.key: p.value for p in model.metadata_props})
        onnx.save_model(native, graph(out, stage))


def calibration_inputs(weights: Path, cts: list[Path]) -> dict[str, list]:
    """Each stage graph's inputs as the fp32 path feeds them, for each calibration CT."""
    from inference.__main__ import read_case
    from inference.hu import as_int16_hu
    from inference.orientation import Orientation
    from inference.pipeline import Segmenter
    from inference.roi import fine_region

    segmenter = Segmenter(weights, "cpu", cpu_engine="onnxruntime")
    feeds: dict[str, list] = {stage: [] for stage in STAGES}
    for ct in cts:
        loaded = read_case(ct)
        orientation = Orientation.from_direction(loaded.geometry.direction)
        hu = orientation.apply(as_int16_hu(loaded.volume))
        spacing = orientation.spacing(loaded.geometry.spacing)
        margin = segmenter.fine.info.roi_margin_mm
        box, _ = fine_region(segmenter.coarse.run(hu), hu, spacing, margin)
        feeds["coarse"].append(hu)
        feeds["fine"].append(hu[box])
    return feeds


def build_int8(weights: Path, out: Path, cts: list[Path]) -> None:
    """QDQ static quantisation of the convolutions, calibrated on ``cts``."""
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from inference.stage_info import INPUT_NAME

    class Reader(CalibrationDataReader):
        def __init__(self, images: list) -> None:
            self.images = iter(images)

        def get_next(self) -> dict | None:
            image = next(self.images, None)
            return None if image is None else {INPUT_NAME: np.ascontiguousarray(image)}

    feeds = calibration_inputs(weights, cts)
    for stage in STAGES:
        quantize_static(
            str(graph(weights, stage)),
            str(graph(out, stage)),
            Reader(feeds[stage]),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # Not CalibMaxIntermediateOutputs: in onnxruntime 1.32 it drops what it collected
            # instead of merging it. So every calibration volume's activations are held at
            # once (a 192^3 crop's are gigabytes): keep --calibration to a few CTs.
        )


def build(path: str, weights: Path, folder: Path, cts: list[Path]) -> Path:
    """The graphs ``path`` runs, in a folder of their own."""
    out = folder / path
    out.mkdir(parents=True)
    shutil.copy(weights / "manifest.json", out)
    if path == "native-norm":
        build_native_norm(weights, out)
    elif path == "int8":
        build_int8(weights, out, cts)
    else:  # fp32 and the OpenVINO paths run the stored graphs
        for stage in STAGES:
            shutil.copy(graph(weights, stage), out)
    return out


def child(path: str, weights: Path, case: Path, out: Path) -> dict:
    """One case in this fresh process on ``path``'s runtime; its timings record."""
    from inference.__main__ import segment_file
    from inference.pipeline import Segmenter

    start = time.perf_counter()
    if path == "default":  # what the CLI runs when no engine is named
        segmenter = Segmenter(weights, "cpu")
    elif path == "engine":  # the runtime's own choice where OpenVINO is there
        segmenter = Segmenter(weights, "cpu", cpu_engine="openvino")
    elif "openvino" in path:
        from inference.openvino_stage import OpenVinoStage

        hint = "bf16" if path.endswith("bf16") else "f32"
        stages = [OpenVinoStage(graph(weights, stage), hint) for stage in STAGES]
        segmenter = Segmenter.from_stages(*stages, device="cpu")
    else:
        segmenter = Segmenter(weights, "cpu", cpu_engine="onnxruntime")
    sessions = time.perf_counter() - start
    return {"sessions": sessions, **segment_file(segmenter, case, out)}


def run_fresh(path: str, weights: Path, case: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", path, str(weights), str(case), str(out)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return {"wall": wall, **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/cpu_paths.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("--runs", type=int, default=3, help="fresh processes per path and case")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--calibration", nargs="+", type=Path, default=[BUNDLED_CT], help="int8 CTs")
    p.add_argument("--tiny", action="store_true", help="64 x 64 cases (for the tests)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "cpu_paths.json")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        path, weights, case, out = args.child
        print(json.dumps(child(path, Path(weights), Path(case), Path(out))))
        return 0

    from benchmarks.agreement import file_agreement
    from benchmarks.pipeline import prepare_cases
    from inference.io import case_name

    paths = list(dict.fromkeys(["fp32", *args.paths]))  # fp32 first: the reference
    try:
        import openvino  # noqa: F401
    except ImportError:
        skipped = [x for x in paths if "openvino" in x or x in ("default", "engine")]
        if skipped:
            print(f"skipped {', '.join(skipped)}: pip install openvino", file=sys.stderr)
        paths = [x for x in paths if x not in skipped]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        flare = prepare_cases(Path(tmp) / "cases", (), in_plane=64 if args.tiny else 512)
        cases = {"bundled": BUNDLED_CT, "flare": flare["flare"] / "case_0000.nii.gz"}
        graphs, built = {}, {}
        for path in paths:
            start = time.perf_counter()
            graphs[path] = build(path, args.weights, Path(tmp) / "graphs", args.calibration)
            built[path] = time.perf_counter() - start
        for name, case in cases.items():
            # Run by run, each path in turn: a slower spell of the machine hits them all alike.
            runs: dict[str, list] = {path: [] for path in paths}
            for _ in range(args.runs):
                for path in paths:
                    out = Path(tmp) / "out" / path / name
                    runs[path].append(run_fresh(path, graphs[path], case, out))
            for path in paths:
                out = Path(tmp) / "out" / path / name
                ok = [r for r in runs[path] if "error" not in r]
                row: dict = {"path": path, "case": name, "build_s": built[path], "runs": runs[path]}
                if ok:
                    keys = ("wall", "sessions", "coarse", "fine")
                    row.update({k: statistics.median(r[k] for r in ok) for k in keys})
                    baseline = next(
                        (r["wall"] for r in rows if r["path"] == "fp32" and r["case"] == name),
                        row["wall"],  # the fp32 row itself
                    )
                    row["x_fp32"] = baseline / row["wall"]
                    file = f"{case_name(case)}.nii.gz"
                    reference = Path(tmp) / "out" / "fp32" / name / file
                    row["agree"] = file_agreement(out / file, reference).as_dict()
                else:
                    row["error"] = runs[path][0]["error"]
                rows.append(row)
                print(line(row), file=sys.stderr, flush=True)
    print(f"{os.cpu_count()} CPUs; fresh process per run, median of {args.runs}")
    print(HEADER)
    print("\n".join(line(r) for r in rows))
    print(LEGEND)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


HEADER = (
    f"{'path':<24} {'case':<8} {'wall s':>6} {'x fp32':>6} {'sess':>5} {'coarse':>6} "
    f"{'fine':>6} {'agree':>7} {'min DSC':>7} {'kept':>5}"
)
LEGEND = (
    "wall: process start to exit; x fp32: fp32 wall / this wall; agree: voxels equal to the "
    "fp32 path's labels; min DSC: least organ DSC against them (organs > 10 mL); kept: both "
    "criteria met (>= 0.995, >= 0.99)"
)


def line(r: dict) -> str:
    if "error" in r:
        return f"{r['path']:<24} {r['case']:<8} error: {r['error'][:90]}"
    a = r["agree"]
    return (
        f"{r['path']:<24} {r['case']:<8} {r['wall']:>6.2f} {r['x_fp32']:>6.2f} "
        f"{r['sessions']:>5.2f} "
        f"{r['coarse']:>6.2f} {r['fine']:>6.2f} {a['voxels']:>7.5f} {a['min_dsc']:>7.4f} "
        f"{a['kept']!s:>5}"
    )


if __name__ == "__main__":
    sys.exit(main())
