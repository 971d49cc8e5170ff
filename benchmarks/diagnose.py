"""Why stage networks over- or under-segment: two controlled experiments on trained weights.

    python benchmarks/diagnose.py [--weights weights] [--dataset build/ts_dataset]
                                  [--window 96] [--stride 32] [--out results/diagnose.json]

Each stage network is rebuilt in torch from its fp32 graph (``export.check.load_stage``) and
run on the labelled cases at its own resolution: the coarse stage on the whole volume resized to
its cube, the fine stage on the reference organs' box + the graph's margin resized to its cube
(so the fine figures do not depend on the coarse stage). Per organ: DSC against the reference
resized the same way, and predicted / reference volume.

1. Normalisation. The graphs z-score each cube with its own statistics, training z-scored each
   patch with the patch's. Rows ``norm patch-like`` and ``norm fixed`` replace the graph's
   statistics with an organ-centred patch's (mean 0, std 100 HU) and with constants (40, 60).
   Every path from the input into the networks starts with a bias-free conv followed by
   InstanceNorm, which cancels any positive affine map of the input but for the zero padding
   at the borders: these rows differ from ``whole`` by about a percent.
2. Context. Training saw ``--window``³ patches; the graphs run the network once on the whole
   cube, where InstanceNorm's statistics span a larger field of view. Row ``sliding`` averages
   the logits of ``--window``³ windows every ``--stride`` voxels, normalised as training did.

Cases: patient A (the bundled CT, the training patient) and, with ``--dataset`` holding it
(``python -m training.totalsegmentator``), patient B (held out). Writes JSON to ``--out``.
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from export.check import load_stage  # noqa: E402
from inference.hu import as_int16_hu  # noqa: E402
from inference.io import find_inputs, read_ct  # noqa: E402
from inference.organs import LABEL_NAMES, NUM_ORGANS  # noqa: E402
from inference.orientation import Orientation  # noqa: E402
from inference.report import dice  # noqa: E402
from inference.roi import grow_box  # noqa: E402
from inference.stage_info import STAGES, graph_filename  # noqa: E402
from training.prepare import labels_box  # noqa: E402
from training.totalsegmentator import to_flare  # noqa: E402
from training.transforms import assign_labels, normalize, resize, resize_labels  # noqa: E402

DEFAULT_OUT = ROOT / "results" / "diagnose.json"
BUNDLED = ROOT / "data" / "totalsegmentator"
# Intensity statistics (mean, std in HU) put in place of the graph's own.
NORMALISATIONS = {"norm patch-like": (0.0, 100.0), "norm fixed": (40.0, 60.0)}


def cases(dataset: Path | None) -> dict[str, tuple[sitk.Image, sitk.Image]]:
    """Name -> (CT, reference in FLARE ids on the CT's grid)."""
    out = {
        "patient A": (
            read_ct(BUNDLED / "example_ct.nii.gz"),
            to_flare(sitk.ReadImage(str(BUNDLED / "example_seg.nii.gz"))),
        )
    }
    if dataset is not None and (dataset / "imagesTs").is_dir():
        for path in find_inputs(dataset / "imagesTs"):
            name = path.name.removesuffix("_0000.nii.gz")
            labels = dataset / "labelsTs" / f"{name}.nii.gz"
            if labels.is_file():
                out[name.replace("patient", "patient ")] = (
                    read_ct(path),
                    sitk.ReadImage(str(labels)),
                )
    return out


def sliding_logits(net: torch.nn.Module, x: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Mean logits of ``window``³ windows every ``stride`` voxels (the last flush with the end),
    each window z-scored with its own statistics as a training patch was."""
    size = x.shape[2:]
    starts = []
    for n in size:
        axis = list(range(0, max(1, n - window + 1), stride))
        if axis[-1] != max(0, n - window):
            axis.append(max(0, n - window))
        starts.append(axis)
    total, count = None, torch.zeros((1, 1, *size))
    for z, y, w in itertools.product(*starts):
        box = (..., slice(z, z + window), slice(y, y + window), slice(w, w + window))
        logits = net(normalize(x[box], (-1e9, 1e9)))  # x is already clipped to the window
        total = torch.zeros((1, logits.shape[1], *size)) if total is None else total
        total[box] += logits
        count[box] += 1
    return total / count


def organ_scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, list[float | None]]:
    """Per organ present in the reference: [DSC, predicted / reference volume]."""
    out = {}
    for k in range(1, NUM_ORGANS + 1):
        g = ref == k
        if g.any():
            p = pred == k
            out[LABEL_NAMES[k]] = [float(dice(g, p)), float(p.sum() / g.sum())]
    return out


def stage_input(stage: str, image: sitk.Image, ref: sitk.Image, margin_mm: float):
    """The stage's field of view in canonical orientation: (HU volume, reference labels)."""
    o = Orientation.from_direction(image.GetDirection())
    hu = o.apply(as_int16_hu(sitk.GetArrayFromImage(image)))
    labels = o.apply(sitk.GetArrayFromImage(ref))
    if stage == "fine":
        box = grow_box(labels_box(labels), margin_mm, o.spacing(image.GetSpacing()), labels.shape)
        hu, labels = hu[box], labels[box]
    return hu, labels


@torch.no_grad()
def diagnose(weights: Path, dataset: Path | None, window: int, stride: int) -> dict:
    results: dict = {}
    loaded = cases(dataset)  # read once, used by both stages
    for stage in STAGES:
        _, info, ckpt = load_stage(weights / graph_filename(stage, "fp32"))
        net = ckpt.network().eval()
        size = (info.input_size,) * 3
        for case, (image, ref) in loaded.items():
            hu, labels = stage_input(stage, image, ref, info.roi_margin_mm)
            x = resize(torch.from_numpy(hu.astype(np.float32))[None, None], size)
            x = x.clamp(*info.hu_window)
            target = resize_labels(np.ascontiguousarray(labels, np.uint8), size)
            rows = {"whole": net(normalize(x, info.hu_window))}
            for name, (mean, std) in NORMALISATIONS.items():
                rows[name] = net((x - mean) / std)
            rows[f"sliding {window}/{stride}"] = sliding_logits(net, x, window, stride)
            results.setdefault(stage, {})[case] = {
                row: organ_scores(assign_labels(logits, None, info.threshold)[0].numpy(), target)
                for row, logits in rows.items()
            }
            print(f"{stage} {case}: done", file=sys.stderr)
    return results


def print_tables(results: dict) -> None:
    for stage, by_case in results.items():
        for case, rows in by_case.items():
            organs = list(next(iter(rows.values())))
            print(f"\n{stage}, {case}: DSC / predicted:reference volume")
            print(f"{'':22}" + "".join(f"{o[:11]:>13}" for o in organs))
            for row, scores in rows.items():
                cells = "".join(f"{s[0]:>7.2f}/{s[1]:<5.2f}" for s in scores.values())
                print(f"{row:22}{cells}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("--dataset", type=Path, default=ROOT / "build" / "ts_dataset")
    p.add_argument("--window", type=int, default=96, help="training patch side (voxels)")
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = diagnose(args.weights, args.dataset, args.window, args.stride)
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
