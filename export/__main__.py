"""``python -m export``: write the stage graphs, or check them against torch.

python -m export --checkpoint coarse.pt fine.pt --out weights/
python -m export --init random --seed 0 --out weights/
python -m export --check weights/ [--image ct.nii.gz]
python -m export --derive weights/ [--precision fp16]   # fp16 graphs from the stored fp32 ones

Exit codes: 0 done (every graph checked passed); 1 a graph failed the --check parity, or a
derived graph differs from manifest.json's sha256; 2 an error (one line naming the file).
"""

import argparse
import logging
import sys
from pathlib import Path

import SimpleITK as sitk
import torch

from inference.hu import as_int16_hu
from inference.stage_info import PRECISIONS, StageInfoError
from training import config as configuration
from training.checkpoint import (
    CheckpointError,
    StageCheckpoint,
    StageSettings,
    load_checkpoint,
    sha256_file,
)
from training.config import ConfigError
from training.data import INDEX_NAME, CacheError, read_index
from training.networks import SpecError, build_network, network_spec

from .check import (
    FP16_AGREEMENT,
    LABEL_AGREEMENT,
    PROB_TOL,
    PROB_TOL_MAX,
    PROB_TOL_QUANTILE,
    check_weights,
    random_cases,
)
from .derive import SOURCE_PRECISION, derive_graphs
from .onnx_file import export_stage, project_version, write_manifest

SAMPLE_CT = (
    Path(__file__).resolve().parent.parent / "data" / "totalsegmentator" / "example_ct.nii.gz"
)
RANDOM_SHAPES = ((61, 90, 77), (130, 121, 96))


def random_checkpoints(
    seed: int, coarse_size: int, fine_size: int, divisor: int
) -> list[StageCheckpoint]:
    ckpts = []
    for stage, size in (("coarse", coarse_size), ("fine", fine_size)):
        torch.manual_seed(seed)
        base = network_spec(stage)
        spec = network_spec(
            stage, input_size=size, channels=tuple(max(1, c // divisor) for c in base.channels)
        )
        ckpts.append(StageCheckpoint(spec, StageSettings(), build_network(spec).state_dict()))
    return ckpts


def provenance(training: dict) -> dict:
    """A checkpoint's training record, with the sha256 of the data it was trained on (from
    its cache's index, when that cache is still where training read it)."""
    record = dict(training)
    if "config" in training:
        record["command"] = configuration.command(configuration.from_dict(training["config"]))
    index = Path(training.get("config", {}).get("cache", "")) / INDEX_NAME
    if index.is_file():
        cases = read_index(index)["cases"]
        record["data"] = {
            name: {k: v for k, v in case.items() if k.endswith("sha256")}
            for name, case in sorted(cases.items())
        }
    else:
        record["data"] = f"not recorded: {index} not found at export"
    return record


def run_export(args: argparse.Namespace) -> int:
    if args.init == "random":
        ckpts = random_checkpoints(
            args.seed, args.coarse_size, args.fine_size, args.channel_divisor
        )
        sources = {c.stage: f"random-init seed={args.seed}" for c in ckpts}
    else:
        ckpts, sources = [], {}
        for path in args.checkpoint:
            ckpt = load_checkpoint(path)
            if ckpt.stage in sources:
                raise CheckpointError(f"{path}: a second {ckpt.stage} checkpoint")
            ckpts.append(ckpt)
            sources[ckpt.stage] = sha256_file(path)
    version = project_version()
    written = [
        export_stage(ckpt, precision, args.out, version, sources[ckpt.stage])
        for ckpt in ckpts
        for precision in args.precision
    ]
    training = {c.stage: provenance(c.training) for c in ckpts if c.training}
    write_manifest(args.out, written, version, sources, training)
    for path in written:
        print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")
    return 0


def run_derive(args: argparse.Namespace) -> int:
    precisions = [p for p in args.precision if p != SOURCE_PRECISION] or ["fp16"]
    differ = 0
    for precision in precisions:
        for d in derive_graphs(args.derive, precision, args.out):
            same = d.matches_manifest
            verdict = {
                True: "byte-identical to manifest.json's",
                False: "DIFFERS from manifest.json's sha256 (another torch or onnx version?)",
                None: "not in manifest.json",
            }[same]
            print(f"{d.path}  from {d.source.name}: {verdict}")
            differ += same is False
    return 0 if not differ else 1


def run_check(args: argparse.Namespace) -> int:
    cases = random_cases(args.seed, RANDOM_SHAPES)
    image = args.image or SAMPLE_CT
    cases[image.name] = as_int16_hu(sitk.GetArrayFromImage(sitk.ReadImage(str(image))))
    results = check_weights(args.check, cases)
    if not results:
        raise FileNotFoundError(f"{args.check}: no stage graphs found")
    q = f"p{100 * PROB_TOL_QUANTILE:g} |dp|"
    print(f"{'graph':<16} {'case':<24} {'against':<10} {'max |dp|':>9} {q:>14} {'labels':>9}  ok")
    for r in results:
        worst = "-" if r.max_prob_diff is None else f"{r.max_prob_diff:.2e}"
        quant = "-" if r.quantile_prob_diff is None else f"{r.quantile_prob_diff:.2e}"
        print(
            f"{r.graph:<16} {r.case:<24} {r.reference:<10} {worst:>9} {quant:>14} "
            f"{100 * r.label_agreement:>8.4f}%  {'yes' if r.passed else 'NO'}"
        )
    print(
        f"pass: fp32 {q} <= {PROB_TOL:g}, max |dp| <= {PROB_TOL_MAX:g}, labels >= "
        f"{100 * LABEL_AGREEMENT:g}% of torch's; fp16 labels >= {100 * FP16_AGREEMENT:g}% of "
        "an fp32 twin's (the fp16 graph's ops in fp32)"
    )
    return 0 if all(r.passed for r in results) else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        help="stage checkpoint(s) from training; each knows its stage",
    )
    what.add_argument("--init", choices=["random"], help="export untrained networks")
    what.add_argument(
        "--derive",
        type=Path,
        metavar="DIR",
        help="write DIR's fp16 graphs from its stored fp32 graphs (into --out, default DIR)",
    )
    what.add_argument(
        "--check", type=Path, metavar="DIR", help="compare the graphs in DIR with torch"
    )
    p.add_argument("--out", type=Path, help="folder to write the graphs to")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--seed", type=int, default=0, help="random init / random check inputs")
    p.add_argument(
        "--coarse-size",
        type=int,
        default=network_spec("coarse").input_size,
        help="random init: coarse network input side",
    )
    p.add_argument(
        "--fine-size",
        type=int,
        default=network_spec("fine").input_size,
        help="random init: fine network input side",
    )
    p.add_argument(
        "--channel-divisor",
        type=int,
        default=1,
        help="random init: divide the paper's channel counts (small test networks)",
    )
    p.add_argument("--image", type=Path, help="check: a CT to check on (default: bundled sample)")
    args = p.parse_args(argv)
    if args.check is None and args.derive is None and args.out is None:
        p.error("--out is required when exporting")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        if args.derive:
            return run_derive(args)
        return run_check(args) if args.check else run_export(args)
    except (CheckpointError, ConfigError, CacheError, StageInfoError, SpecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)  # anything else is a bug: its traceback shows
        return 2


if __name__ == "__main__":
    sys.exit(main())
