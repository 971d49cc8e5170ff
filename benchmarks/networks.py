"""Forward time and peak RSS of each network at its real size: torch eager vs ONNX Runtime fp32.

    python benchmarks/networks.py [--runs 5] [--threads 2] [--out results/networks.json]

Each (network, runtime) pair runs in a fresh process: one untimed warm-up forward, then
``--runs`` timed ones; the table gives the median and the process's peak RSS. Random weights
(the time does not depend on them). The ONNX graph is the network alone, exported the way
``python -m export`` exports it (same InstanceNorm form), with no pre- or post-processing.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

from benchmarks._child import median, peak_rss_mib, run_child, time_runs  # noqa: E402
from inference.stage_info import INPUT_NAME, STAGES  # noqa: E402


def random_input(size: int):
    import numpy as np

    return np.random.default_rng(0).standard_normal((1, 1, size, size, size), dtype=np.float32)


def child(runtime: str, stage: str, graph: Path, runs: int, threads: int) -> dict:
    if runtime == "torch":
        import torch

        from training.networks import build_network, network_spec

        torch.set_num_threads(threads)
        spec = network_spec(stage)
        net = build_network(spec).eval()
        tensor = torch.from_numpy(random_input(spec.input_size))

        def forward() -> object:
            with torch.inference_mode():
                return net(tensor)
    else:
        import onnxruntime as ort

        from inference.sessions import cpu_session_options

        opts = cpu_session_options(threads)
        session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        # Without torch in this process: the size from the (static) network graph.
        x = random_input(session.get_inputs()[0].shape[-1])

        def forward() -> object:
            return session.run(None, {INPUT_NAME: x})

    loaded = peak_rss_mib()
    times = time_runs(forward, runs)
    return {"times": times, "rss_loaded_mib": loaded, "peak_rss_mib": peak_rss_mib()}


def export_networks(folder: Path) -> dict[str, Path]:
    from export.onnx_file import save_network_graph
    from training.networks import build_network, network_spec

    paths = {}
    for stage in STAGES:
        spec = network_spec(stage)
        path = folder / f"{stage}_network.onnx"
        paths[stage] = save_network_graph(build_network(spec), spec.input_size, path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "networks.json")
    p.add_argument(
        "--child", nargs=3, metavar=("RUNTIME", "STAGE", "GRAPH"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.child:
        runtime, stage, graph = args.child
        print(json.dumps(child(runtime, stage, Path(graph), args.runs, args.threads)))
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        graphs = export_networks(Path(tmp))
        for stage in STAGES:
            for runtime in ("torch", "onnxruntime"):
                r = run_child(
                    Path(__file__),
                    [
                        runtime,
                        stage,
                        str(graphs[stage]),
                        "--runs",
                        str(args.runs),
                        "--threads",
                        str(args.threads),
                    ],
                )
                rows.append(
                    {"network": stage, "runtime": runtime, **r, "median_s": median(r["times"])}
                )
    print(
        f"{'network':<8} {'runtime':<12} {'median s':>9} {'min s':>7} {'peak RSS MiB':>13} "
        f"{'vs torch':>9}   ({args.runs} runs, {args.threads} threads, fp32, CPU)"
    )
    for row in rows:
        base = next(r for r in rows if r["network"] == row["network"] and r["runtime"] == "torch")
        print(
            f"{row['network']:<8} {row['runtime']:<12} {row['median_s']:>9.2f} "
            f"{min(row['times']):>7.2f} {row['peak_rss_mib']:>13.0f} "
            f"{base['median_s'] / row['median_s']:>8.2f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"runs": args.runs, "threads": args.threads, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
