"""Time of the 13-organ DSC + NSD of benchmarks/evaluate.py against DeepMind's reference.

    python benchmarks/nsd_speed.py [--runs 3] [--reference all|spleen] [--out FILE.json]

A synthetic FLARE-sized pair: 512 x 512 x 300 voxels at 0.8 x 0.8 x 2.5 mm, the GT holding 13
ellipsoids of roughly organ sizes (one label each) and the prediction the same organs shifted,
grown or shrunk and with noisy boundaries. Ours: the whole ``score_case`` (median of ``--runs``)
and each organ alone. Reference: the official script's per-organ steps (full-volume masks,
surface_distance.compute_surface_distances + compute_surface_dice_at_tolerance, DSC), once per
organ, for all 13 organs (``--reference spleen``: the spleen only); the NSD and DSC of both must
agree to 1e-9.
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

from benchmarks._child import median, time_runs  # noqa: E402
from benchmarks.evaluate import GT_SLICES_ONLY, label_boxes, score_case, score_organ  # noqa: E402
from inference.organs import ORGANS  # noqa: E402

SHAPE_ZYX = (300, 512, 512)
SPACING = (0.8, 0.8, 2.5)  # x, y, z mm
TOLERANCE = 1e-9
# label: (centre offset from the volume centre, semi-axes), both (x, y, z) mm; painted in this
# order, so a later organ overwrites an earlier one where they touch.
ORGAN_SHAPES = {
    1: ((-70, -20, 80), (75, 65, 80)),  # liver, ~1.6 l
    11: ((60, -30, 90), (50, 35, 60)),  # stomach
    3: ((95, 35, 70), (40, 25, 55)),  # spleen
    2: ((-65, 55, -10), (28, 25, 50)),  # right kidney
    13: ((65, 55, -10), (28, 25, 50)),  # left kidney
    4: ((10, 25, 20), (65, 15, 20)),  # pancreas
    12: ((-25, 0, 0), (40, 15, 25)),  # duodenum
    9: ((-50, -55, 30), (15, 15, 40)),  # gallbladder
    5: ((0, 45, 0), (12, 12, 180)),  # aorta
    6: ((-25, 40, 0), (12, 10, 150)),  # inferior vena cava
    10: ((5, 35, 220), (8, 8, 120)),  # esophagus
    7: ((-45, 45, 60), (12, 4, 20)),  # right adrenal gland
    8: ((45, 45, 60), (12, 4, 20)),  # left adrenal gland
}


def paint(labels_xyz: np.ndarray, label: int, centre, semi, noise: float, rng) -> None:
    """Set ``label`` inside an ellipsoid (mm from the volume centre), its boundary perturbed by
    smooth noise of standard deviation ``noise`` in the implicit function."""
    box, axes_mm = [], []
    for c, s, sp, n in zip(centre, semi, SPACING, labels_xyz.shape, strict=True):
        reach = 1.3 * s  # room for the noisy boundary to bulge out
        lo, hi = max(0, int((c - reach) / sp + n / 2)), min(n, int((c + reach) / sp + n / 2) + 2)
        box.append(slice(lo, hi))
        axes_mm.append(((np.arange(lo, hi) - n / 2) * sp - c) / s)
    x, y, z = np.ix_(*axes_mm)
    f = x**2 + y**2 + z**2
    if noise:
        field = ndimage.gaussian_filter(rng.standard_normal(f.shape), 3)
        f = f + noise * field / field.std()
    labels_xyz[tuple(box)][f <= 1] = label


def make_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """GT and prediction as uint8 (x, y, z) views of (z, y, x) arrays, as read_labels gives."""
    rng = np.random.default_rng(seed)
    gt, pred = (np.zeros(SHAPE_ZYX, np.uint8).T for _ in range(2))
    for label, (centre, semi) in ORGAN_SHAPES.items():
        paint(gt, label, centre, semi, 0.0, rng)
        shift = rng.normal(0, 1.5, 3)  # mm
        scale = rng.uniform(0.93, 1.07)  # grown or shrunk
        paint(pred, label, np.add(centre, shift), np.multiply(semi, scale), 0.15, rng)
    return gt, pred


def reference_organ(gt: np.ndarray, pred: np.ndarray, label: int, tol: float) -> tuple:
    """The official script's steps for one present organ, with DeepMind's package."""
    import surface_distance as sd

    if label in GT_SLICES_ONLY:
        z = np.where(gt == label)[2]
        mask_gt, mask_pred = (
            gt[:, :, z.min() : z.max()] == label,
            pred[:, :, z.min() : z.max()] == label,
        )
    else:
        mask_gt, mask_pred = gt == label, pred == label
    distances = sd.compute_surface_distances(mask_gt, mask_pred, SPACING)
    dsc = 2 * np.count_nonzero(mask_gt & mask_pred) / (mask_gt.sum() + mask_pred.sum())
    return dsc, sd.compute_surface_dice_at_tolerance(distances, tol)


def measure(gt, pred, runs: int, reference: str) -> dict:
    totals = time_runs(lambda: score_case(gt, pred, SPACING), runs)
    ours = score_case(gt, pred, SPACING)
    gt_boxes, pred_boxes = label_boxes(gt), label_boxes(pred)
    rows = []
    for i, organ in enumerate(ORGANS):
        box_args = (gt_boxes[organ.label - 1], pred_boxes[organ.label - 1])
        t = time_runs(lambda o=organ, b=box_args: score_organ(gt, pred, SPACING, o, *b), 1, 0)
        row = {
            "label": organ.label,
            "organ": organ.name,
            "voxels": int(np.count_nonzero(gt[box_args[0]] == organ.label)),
            "ours_s": t[0],
            "dsc": ours[i][0],
            "nsd": ours[i][1],
        }
        if reference == "all" or organ.name == reference:
            start = time.perf_counter()
            ref_dsc, ref_nsd = reference_organ(gt, pred, organ.label, organ.nsd_tolerance_mm)
            row.update(
                reference_s=time.perf_counter() - start,
                dsc_diff=abs(ref_dsc - ours[i][0]),
                nsd_diff=abs(ref_nsd - ours[i][1]),
            )
        rows.append(row)
    return {"ours_total_s": median(totals), "ours_runs_s": totals, "rows": rows}


def print_table(result: dict) -> None:
    print(f"{'organ':<20} {'voxels':>9} {'ours s':>7} {'ref s':>7} {'NSD':>7} {'|diff| NSD':>11}")
    for r in result["rows"]:
        ref = f"{r['reference_s']:>7.2f}" if "reference_s" in r else f"{'-':>7}"
        diff = f"{r['nsd_diff']:>11.1e}" if "nsd_diff" in r else f"{'-':>11}"
        print(
            f"{r['organ']:<20} {r['voxels']:>9} {r['ours_s']:>7.3f} {ref} {r['nsd']:>7.4f} {diff}"
        )
    ref_rows = [r for r in result["rows"] if "reference_s" in r]
    ref_total = sum(r["reference_s"] for r in ref_rows)
    ours_same = sum(r["ours_s"] for r in ref_rows)
    print(
        f"ours, 13 organs DSC + NSD (label boxes included): {result['ours_total_s']:.2f} s "
        f"(median of {len(result['ours_runs_s'])}); reference on {len(ref_rows)} organ(s): "
        f"{ref_total:.1f} s vs ours {ours_same:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--reference", choices=["all", "spleen"], default="all")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "nsd_speed.json")
    args = p.parse_args(argv)
    gt, pred = make_pair()
    # The reference calls scipy.ndimage.filters / .morphology, deprecated namespaces.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    result = measure(gt, pred, args.runs, args.reference)
    print_table(result)
    worst = max(max(r["nsd_diff"], r["dsc_diff"]) for r in result["rows"] if "nsd_diff" in r)
    ok = worst <= TOLERANCE
    print(f"largest |ours - reference| over DSC and NSD: {worst:.1e} ({'ok' if ok else 'FAIL'})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"shape_xyz": SHAPE_ZYX[::-1], "spacing": SPACING, **result}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
