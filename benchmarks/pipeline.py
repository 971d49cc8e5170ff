"""Per-stage time and peak RSS of ``python -m inference`` on FLARE-sized cases, on the CPU.

    python benchmarks/pipeline.py [--weights DIR] [--runs 3] [--cpu-engine auto]
                                  [--out results/pipeline.json]

Cases: the bundled CT resampled to 0.8 x 0.8 x 2.5 mm and padded with air to 512 x 512 in-plane
(the FLARE-sized case), then the same anatomy at 150, 300 and 600 slices. Each case runs in a
fresh process of its own, segmented there ``--runs`` times (median; so OpenVINO's compile for
the crop's shape counts in the first run only); in the same run, fresh processes also time the
two networks alone (ONNX Runtime) at their input sizes, so the targets compare figures from one
machine state:
- time: pipeline total <= 1.25 x (coarse forward + fine forward + read + write);
- memory: pipeline peak RSS <= fine network forward's peak RSS + 1024 MiB.
Without ``--weights``, paper-size random graphs are exported first. Random coarse labels are
scattered, so the fine crop is then nearly the whole volume: the worst case for the fine stage.
"""

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

from benchmarks._child import median, peak_rss_mib, run_child, time_runs  # noqa: E402
from inference.openvino_stage import CPU_ENGINES  # noqa: E402

FLARE_SPACING = (0.8, 0.8, 2.5)  # x, y, z mm
SLICES = (150, 300, 600)
TIME_FACTOR, RSS_MARGIN_MIB = 1.25, 1024


def make_case(ct, spacing_xyz, size_xyz, path: Path) -> None:
    """Resample ``ct`` onto a grid of ``size_xyz`` voxels of ``spacing_xyz`` centred on it."""
    import numpy as np
    import SimpleITK as sitk

    centre = ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ct.GetSize()])
    d = np.array(ct.GetDirection()).reshape(3, 3)
    half = np.array([(n - 1) / 2 * s for n, s in zip(size_xyz, spacing_xyz, strict=True)])
    origin = np.array(centre) - d @ half
    out = sitk.Resample(
        ct,
        [int(n) for n in size_xyz],
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        spacing_xyz,
        ct.GetDirection(),
        -1024.0,
        sitk.sitkInt16,
    )
    sitk.WriteImage(out, str(path), useCompression=True)


def prepare_cases(
    folder: Path, slices: tuple[int, ...] = SLICES, in_plane: int = 512
) -> dict[str, Path]:
    """The FLARE-sized case, then the same anatomy at each number of ``slices`` (``in_plane``
    voxels of 0.8 mm across: 512 is FLARE's; smaller cuts the field of view, for tests)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    ct = sitk.ReadImage(str(ROOT / "data" / "totalsegmentator" / "example_ct.nii.gz"))
    extent_z = ct.GetSize()[2] * ct.GetSpacing()[2]
    cases = {}
    grids = {"flare": (FLARE_SPACING, round(extent_z / FLARE_SPACING[2]))}
    grids.update({f"{n} slices": ((0.8, 0.8, extent_z / n), n) for n in slices})
    for name, (spacing, n) in grids.items():
        case = folder / name.replace(" ", "_")
        case.mkdir()
        make_case(ct, spacing, (in_plane, in_plane, n), case / "case_0000.nii.gz")
        cases[name] = case
    return cases


def child_pipeline(weights: Path, case: Path, runs: int, engine: str = "auto") -> dict:
    from inference.__main__ import segment_file
    from inference.io import find_inputs
    from inference.pipeline import Segmenter

    segmenter = Segmenter(weights, "cpu", cpu_engine=engine)
    path = find_inputs(case)[0]
    out = case / f"out-{segmenter.engine}"
    out.mkdir(exist_ok=True)
    records = []
    time_runs(lambda: records.append(segment_file(segmenter, path, out)), runs, warmup=0)
    return {
        "records": records,
        "peak_rss_mib": peak_rss_mib(),
        "engine": segmenter.engine,
    }


def reference_agreement(weights: Path, case: Path, engine: str) -> dict:
    """The labels of ``engine`` against ONNX Runtime fp32's (the whole graphs, segmented once
    in a fresh process of their own) on ``case``, as ``benchmarks/agreement.py`` counts."""
    from benchmarks.agreement import file_agreement

    if engine != "onnxruntime":
        args = ["pipeline", str(weights), str(case), "--runs", "1", "--cpu-engine", "onnxruntime"]
        run_child(Path(__file__), args)
    (ours,) = (case / f"out-{engine}").glob("*.nii.gz")
    return file_agreement(ours, case / "out-onnxruntime" / ours.name).as_dict()


def child_network(weights: Path, stage: str, runs: int, engine: str = "auto") -> dict:
    """The stage's network alone (the graph's initializers in a network-only export), on
    ONNX Runtime fp32, or for ``stage`` "fine-openvino" on OpenVINO at the precision the
    runtime's ``engine`` runs the fine network in."""
    import numpy as np

    path = weights / f"{stage.removesuffix('-openvino')}_network.onnx"
    precision = "fp32"
    if stage.endswith("-openvino"):
        import openvino as ov

        from inference.openvino_stage import compile_options, keep_means_short, resolve_precision
        from inference.sessions import RuntimeConfig

        core = ov.Core()
        precision = resolve_precision(core, RuntimeConfig.for_device("cpu", engine).fine_precision)
        network = core.read_model(str(path))
        keep_means_short(network)  # as the runtime compiles it
        request = core.compile_model(network, "CPU", compile_options(precision))
        request = request.create_infer_request()
        size = request.model_inputs[0].get_partial_shape()[-1].get_length()
        run = request.infer
    else:
        import onnxruntime as ort

        from inference.sessions import cpu_session_options
        from inference.stage_info import INPUT_NAME

        session = ort.InferenceSession(
            str(path), cpu_session_options(), providers=["CPUExecutionProvider"]
        )
        size = session.get_inputs()[0].shape[-1]

        def run(x: np.ndarray) -> object:
            return session.run(None, {INPUT_NAME: x})

    x = np.random.default_rng(0).standard_normal((1, 1, size, size, size), dtype=np.float32)
    times = time_runs(lambda: run(x), runs)
    return {"times": times, "peak_rss_mib": peak_rss_mib(), "precision": precision}


def export_graphs(folder: Path, weights: Path | None) -> Path:
    """Stage graphs (given or random paper-size) plus network-only graphs of the same weights."""
    import shutil

    from export.__main__ import main as export_main
    from export.check import load_stage
    from export.onnx_file import save_network_graph

    out = folder / "weights"
    if weights is None:
        assert export_main(["--init", "random", "--out", str(out), "--precision", "fp32"]) == 0
    else:
        shutil.copytree(weights, out)
    for stage in ("coarse", "fine"):
        _, _, ckpt = load_stage(out / f"{stage}_fp32.onnx")
        path = out / f"{stage}_network.onnx"
        save_network_graph(ckpt.network(), ckpt.spec.input_size, path)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, help="stage graphs (default: random paper-size)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--cpu-engine",
        choices=CPU_ENGINES,
        default="auto",
        help="the networks' engine, as python -m inference takes it [%(default)s]",
    )
    p.add_argument("--out", type=Path, default=ROOT / "results" / "pipeline.json")
    p.add_argument("--child", nargs=3, metavar=("KIND", "WEIGHTS", "ARG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, weights, arg = args.child
        if kind == "pipeline":
            result = child_pipeline(Path(weights), Path(arg), args.runs, args.cpu_engine)
        else:
            result = child_network(Path(weights), arg, args.runs, args.cpu_engine)
        print(json.dumps(result))
        return 0

    from inference.__main__ import TIMING_KEYS  # here: the children import only what they use

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = export_graphs(Path(tmp), args.weights)
        cases = prepare_cases(Path(tmp))
        runs = ["--runs", str(args.runs)]
        stages = ["coarse", "fine"]
        if importlib.util.find_spec("openvino"):
            stages.append("fine-openvino")
        engine = ["--cpu-engine", args.cpu_engine]
        nets = {
            s: run_child(Path(__file__), ["network", str(weights), s, *runs, *engine])
            for s in stages
        }
        for name, case in cases.items():
            r = run_child(Path(__file__), ["pipeline", str(weights), str(case), *runs, *engine])
            keys = (*TIMING_KEYS, "total")
            row = {k: median([rec[k] for rec in r["records"]]) for k in keys}
            row.update(
                case=name,
                shape=r["records"][0]["shape"],
                roi=r["records"][0]["roi_source"],
                peak_rss_mib=r["peak_rss_mib"],
                engine=r["engine"],
                agree=reference_agreement(weights, case, r["engine"]),
            )
            rows.append(row)
    net_s = {s: median(n["times"]) for s, n in nets.items()}
    fine_rss = nets["fine"]["peak_rss_mib"]
    openvino = ""
    if "fine-openvino" in nets:
        precision = nets["fine-openvino"]["precision"]
        openvino = f"; fine {net_s['fine-openvino']:.2f} s on OpenVINO {precision}"
    print(
        f"networks alone: coarse {net_s['coarse']:.2f} s, fine {net_s['fine']:.2f} s "
        f"(peak RSS {fine_rss:.0f} MiB) on ONNX Runtime fp32{openvino}; {args.runs} runs, CPU"
    )
    engines = sorted({row["engine"] for row in rows})
    print(f"pipeline: networks on {', '.join(engines)} (openvino: coarse f32, fine bf16 or f32)")
    print(
        f"{'case':<11} {'z x y x x':>13} {'roi':>6} {'read':>5} {'coarse':>6} {'region':>6} "
        f"{'fine':>6} {'post':>5} {'write':>5} {'total':>6} {'bound':>6} {'RSS MiB':>8} "
        f"{'RSS cap':>8} {'agree':>8} {'min DSC':>7}"
    )
    for row in rows:
        fine_net = net_s.get(f"fine-{row['engine']}", net_s["fine"])  # the engine that ran
        row["time_bound_s"] = TIME_FACTOR * (
            net_s["coarse"] + fine_net + row["read"] + row["write"]
        )
        row["rss_cap_mib"] = fine_rss + RSS_MARGIN_MIB
        shape = "x".join(map(str, row["shape"]))
        print(
            f"{row['case']:<11} {shape:>13} {row['roi']:>6} {row['read']:>5.2f} "
            f"{row['coarse']:>6.2f} {row['region']:>6.2f} {row['fine']:>6.2f} "
            f"{row['post']:>5.2f} {row['write']:>5.2f} {row['total']:>6.2f} "
            f"{row['time_bound_s']:>6.2f} {row['peak_rss_mib']:>8.0f} {row['rss_cap_mib']:>8.0f} "
            f"{row['agree']['voxels']:>8.5f} {row['agree']['min_dsc']:>7.4f}"
        )
    print(
        f"bound = {TIME_FACTOR} x (both network forwards on the engines that ran, + read + write); "
        f"RSS cap = fine forward's peak RSS + {RSS_MARGIN_MIB} MiB; agree, min DSC: voxels "
        "equal to ONNX Runtime fp32's labels (whole graphs, a fresh process) and the least "
        "organ DSC against them (organs > 10 mL)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"networks_s": net_s, "fine_rss_mib": fine_rss, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
