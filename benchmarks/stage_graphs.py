"""Stage graphs vs host steps: is resize, normalisation and labelling better inside the graph?

    python benchmarks/stage_graphs.py [--runs 3] [--threads 2] [--out results/stage_graphs.json]

On one 300 x 512 x 512 int16 volume (the bundled CT resampled to that grid), each stage at
paper size with random weights, fp32 on the CPU, in a fresh process per variant:
- graph: the exported stage graph (int16 in, uint8 labels out: resize, HU window, z-score,
  network, and for the fine stage the per-organ resize back and label assignment inside);
- host: the same network alone in ONNX Runtime, with SimpleITK resampling and numpy doing the
  rest on the host (the fine stage's logits resampled one organ at a time, as in the graph).
The fine stage treats the whole volume as its crop: the worst case of a crop.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

from benchmarks._child import median, peak_rss_mib, run_child, time_runs  # noqa: E402
from inference.hu import HU_WINDOW  # noqa: E402
from inference.stage_info import INPUT_NAME, STAGES  # noqa: E402

SHAPE = (300, 512, 512)  # z, y, x


def _resample(volume, size_zyx):
    """Linear resample of a z, y, x array to ``size_zyx`` with half-pixel centres (SimpleITK)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)
    scale = [i / o for i, o in zip(volume.shape[::-1], size_zyx[::-1], strict=True)]
    origin = [0.5 * s - 0.5 for s in scale]
    out = sitk.Resample(
        image,
        [int(n) for n in size_zyx[::-1]],
        sitk.Transform(),
        sitk.sitkLinear,
        origin,
        scale,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)


def host_stage(session, volume, size: int, labels_at_input: bool, timings: dict):
    import numpy as np

    t0 = time.perf_counter()
    x = np.clip(_resample(volume, (size,) * 3), *HU_WINDOW)
    x = ((x - x.mean(dtype=np.float64)) / max(x.std(dtype=np.float64), 1e-3)).astype(np.float32)
    t1 = time.perf_counter()
    (logits,) = session.run(None, {INPUT_NAME: x[None, None]})
    t2 = time.perf_counter()
    shape = volume.shape if labels_at_input else (size,) * 3
    best = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    for k in range(logits.shape[1]):
        channel = _resample(logits[0, k], shape) if labels_at_input else logits[0, k]
        better = channel > best
        np.copyto(best, channel, where=better)
        labels[better] = k + 1
    t3 = time.perf_counter()
    for key, value in (("pre", t1 - t0), ("network", t2 - t1), ("post", t3 - t2)):
        timings.setdefault(key, []).append(value)
    return labels


def child(variant: str, stage: str, graph: Path, volume_path: Path, runs: int, threads: int):
    import numpy as np
    import onnxruntime as ort

    volume = np.load(volume_path)
    from inference.sessions import cpu_session_options

    opts = cpu_session_options(threads)
    session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    timings: dict[str, list[float]] = {}
    if variant == "graph":

        def run() -> object:
            return session.run(None, {INPUT_NAME: volume})
    else:
        size = session.get_inputs()[0].shape[-1]  # the network graph's static cube

        def run() -> object:
            return host_stage(session, volume, size, stage == "fine", timings)

    loaded = peak_rss_mib()
    times = time_runs(run, runs)
    split = {k: median(v[1:]) for k, v in timings.items()}  # v[0] is the warm-up
    return {
        "times": times,
        "split": split,
        "rss_loaded_mib": loaded,
        "peak_rss_mib": peak_rss_mib(),
    }


def prepare(folder: Path) -> tuple[dict[str, dict[str, Path]], Path]:
    """Paper-size random graphs of both kinds, and the test volume, written to ``folder``."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from export.onnx_file import export_stage, save_network_graph
    from inference.hu import as_int16_hu
    from training.checkpoint import StageCheckpoint, StageSettings
    from training.networks import build_network, network_spec

    graphs: dict[str, dict[str, Path]] = {}
    for stage in STAGES:
        torch.manual_seed(0)
        spec = network_spec(stage)
        net = build_network(spec).eval()
        ckpt = StageCheckpoint(spec, StageSettings(), net.state_dict())
        staged = export_stage(ckpt, "fp32", folder, "bench", "random")
        alone = save_network_graph(net, spec.input_size, folder / f"{stage}_network.onnx")
        graphs[stage] = {"graph": staged, "host": alone}
    ct = sitk.GetArrayFromImage(
        sitk.ReadImage(str(ROOT / "data/totalsegmentator/example_ct.nii.gz"))
    )
    volume = as_int16_hu(np.rint(_resample(ct.astype(np.float32), SHAPE)))
    np.save(folder / "volume.npy", volume)
    return graphs, folder / "volume.npy"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "stage_graphs.json")
    p.add_argument(
        "--child", nargs=4, metavar=("VARIANT", "STAGE", "GRAPH", "VOLUME"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.child:
        variant, stage, graph, volume = args.child
        print(json.dumps(child(variant, stage, Path(graph), Path(volume), args.runs, args.threads)))
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        graphs, volume = prepare(Path(tmp))
        for stage in STAGES:
            for variant in ("host", "graph"):
                r = run_child(
                    Path(__file__),
                    [
                        variant,
                        stage,
                        str(graphs[stage][variant]),
                        str(volume),
                        "--runs",
                        str(args.runs),
                        "--threads",
                        str(args.threads),
                    ],
                )
                rows.append(
                    {"stage": stage, "variant": variant, **r, "median_s": median(r["times"])}
                )
    print(
        f"input {'x'.join(map(str, SHAPE))} int16 (z, y, x); {args.runs} runs; "
        f"{args.threads} threads; fp32 CPU"
    )
    print(
        f"{'stage':<7} {'variant':<6} {'median s':>9} {'network s':>10} {'pre+post s':>11} "
        f"{'peak RSS MiB':>13}"
    )
    for row in rows:
        host = next(r for r in rows if r["stage"] == row["stage"] and r["variant"] == "host")
        net = host["split"]["network"]
        extra = row["median_s"] - net
        print(
            f"{row['stage']:<7} {row['variant']:<6} {row['median_s']:>9.2f} {net:>10.2f} "
            f"{extra:>11.2f} {row['peak_rss_mib']:>13.0f}"
        )
    print("network s: the host variant's network-only forward; pre+post s: the rest of each")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"shape": SHAPE, "runs": args.runs, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
