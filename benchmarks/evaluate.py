"""FLARE22 DSC and NSD of a folder of predicted label maps, as the 2022 official script scores them.

    python benchmarks/evaluate.py --pred DIR --gt DIR [--out results/evaluate] [--workers N]
                                  [--rules 2022|2024]

Cases are matched by name (``FLARE22_Tr_0001.nii.gz``; a ``_0000`` suffix is tolerated). For
each case and organ 1..13, the official rules (FLARE22_DSC_NSD_Eval.py):
- organ absent from both ground truth (GT) and prediction: DSC 1, NSD 1; absent from one: 0, 0;
- aorta, inferior vena cava and esophagus are scored only on the GT's slices, taken as the
  official ``[:, :, z.min():z.max()]``: a half-open slice, so the topmost GT slice is dropped
  (the official bug, reproduced);
- NSD at the organ's tolerance (``inference.organs``) with DeepMind's surface-distance method,
  volumes as nibabel reads them (axes x, y, z) and the GT's spacing; see surface_dice.py.
``--rules 2024``: as the later revision of the official script, NSD is 0 wherever DSC < 0.2.
FLARE22's own figures used the 2022 rules, the default.

Where we differ from the official script:
- a GT aorta, vena cava or esophagus on one slice leaves two masks of shape (x, y, 0). The
  official script calls DeepMind's ``compute_surface_distances`` on them first, whose bounding
  box (``np.amax`` over the empty z axis) raises ``ValueError: zero-size array to reduction
  operation maximum which has no identity``: the official run stops there (the 2024 revision
  too, its NaN DSC not being < 0.2). We score DSC and NSD as NaN (FLARE's
  ``compute_dice_coefficient`` gives NaN for two empty masks, and NSD is then 0/0), the means
  skip them and say how many;
- a label map, GT or prediction, holding a value outside 0..13 is an error, not scored as is
  (the official script scored organs 1..13 and ignored the rest, so an unmapped TotalSegmentator
  map scored near 0 without a word);
- a GT case without a prediction scores 0 for every organ (the official script iterated over
  predictions and silently skipped it), as does a prediction of another shape than its GT, one
  that cannot be read or one with values outside 0..13; predictions without a GT are listed
  and ignored; values are kept unrounded (the official CSV rounded each to 4 decimals).

Writes ``per_case.csv`` and ``summary.csv`` under ``--out`` and prints the summary. A bad input
prints ``ERROR <file>: <reason>`` on stderr and the rest is evaluated (a GT that cannot be read
or holds values outside 0..13 is left out of the means); the exit code is then 1. No GT images:
exit code 2.
"""

import argparse
import csv
import math
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == ROOT / "benchmarks":  # run as a script
    sys.path[0] = str(ROOT)  # not benchmarks/: its profile.py would shadow the stdlib's profile

from benchmarks.surface_dice import Spacing, normalized_surface_dice  # noqa: E402
from inference.io import InputError, case_name, check_gzip_complete, find_inputs  # noqa: E402
from inference.organs import NUM_ORGANS, ORGANS, Organ  # noqa: E402
from inference.report import dice  # noqa: E402

# Aorta, inferior vena cava, esophagus: the GT labels only part of these tubes, so the official
# script scores them on the GT's slices only.
GT_SLICES_ONLY = frozenset({5, 6, 10})
DEFAULT_OUT = ROOT / "results" / "evaluate"
# The 2024 revision of the official script stopped computing NSD below this DSC and wrote 0.
MIN_DSC_FOR_NSD_2024 = 0.2
SHOWN_BAD_VALUES = 5

Rules = Literal["2022", "2024"]
RULES: tuple[Rules, ...] = ("2022", "2024")

Box = tuple[slice, slice, slice]
Scores = tuple[tuple[float, float], ...]  # (DSC, NSD) per organ, in ORGANS order


@dataclass(frozen=True)
class CaseResult:
    """One GT case: its status, its (DSC, NSD) per organ (None: not scored), error lines."""

    case: str
    status: str
    scores: Scores | None
    errors: tuple[str, ...] = ()


ZERO: Scores = ((0.0, 0.0),) * NUM_ORGANS


class LabelValueError(InputError):
    """A label map holding values that are not FLARE22 ids; the message names file and values."""


def check_label_values(labels: np.ndarray, path: Path) -> None:
    """Raise ``LabelValueError`` if ``labels`` (as stored, before any cast) is not within 0..13.

    Checked before the uint8 cast, which would wrap 256 to 0 and hide it.
    """
    if labels.size == 0 or (labels.min() >= 0 and labels.max() <= NUM_ORGANS):
        return
    bad = np.unique(labels[(labels < 0) | (labels > NUM_ORGANS)])
    shown = ", ".join(format(v, "g") for v in bad[:SHOWN_BAD_VALUES].tolist())
    if bad.size > SHOWN_BAD_VALUES:
        shown += f", ... ({bad.size} distinct values)"
    raise LabelValueError(
        f"{path}: label values {shown} are not FLARE22 organ ids (0-{NUM_ORGANS}): a "
        "TotalSegmentator or other label map must be mapped to FLARE ids first"
    )


def read_labels(path: Path) -> tuple[np.ndarray, Spacing]:
    """A label map as uint8 indexed (x, y, z), as nibabel reads it, and its spacing (x, y, z).

    Raises ``InputError`` naming the file and the reason: ``LabelValueError`` for values
    outside 0..13.
    """
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise InputError(f"{path}: cannot read image ({lines[-1].strip() if lines else e})") from e
    check_gzip_complete(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: not a 3D scalar label map")
    # The official script cast nibabel's float array with np.uint8; the transpose turns ITK's
    # (z, y, x) array into nibabel's (x, y, z) without a copy.
    stored = sitk.GetArrayFromImage(image)
    check_label_values(stored, path)
    labels = stored.astype(np.uint8, copy=False).T
    return labels, tuple(float(s) for s in image.GetSpacing())


def label_boxes(labels: np.ndarray, max_label: int = NUM_ORGANS) -> list[Box | None]:
    """Bounding box of each label 1..``max_label`` (None where absent), in one pass."""
    if labels.flags.f_contiguous and not labels.flags.c_contiguous:
        # A transposed ITK array: scan it in memory order, then swap the axes back.
        return [None if b is None else b[::-1] for b in ndimage.find_objects(labels.T, max_label)]
    return ndimage.find_objects(labels, max_label)


def _union(a: Box, b: Box | None) -> Box:
    if b is None:
        return a
    return tuple(
        slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True)
    )


def score_organ(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing: Spacing,
    organ: Organ,
    gt_box: Box | None,
    pred_box: Box | None,
    rules: Rules = "2022",
) -> tuple[float, float]:
    """(DSC, NSD) of one organ by the official rules, working only inside the organ's boxes.

    Both empty after the slice rule (a one-slice GT tube): (NaN, NaN), where the official
    script raises ValueError.
    """
    if gt_box is None:
        return (1.0, 1.0) if pred_box is None else (0.0, 0.0)
    box = _union(gt_box, pred_box)
    if organ.label in GT_SLICES_ONLY:
        # Official: gt[:, :, z.min():z.max()], which drops the GT's topmost slice (stop - 1).
        box = (box[0], box[1], slice(gt_box[2].start, gt_box[2].stop - 1))
    mask_gt, mask_pred = gt[box] == organ.label, pred[box] == organ.label
    dsc = dice(mask_gt, mask_pred)
    if rules == "2024" and dsc < MIN_DSC_FOR_NSD_2024:  # a NaN DSC keeps its NaN NSD
        return dsc, 0.0
    return dsc, normalized_surface_dice(mask_gt, mask_pred, spacing, organ.nsd_tolerance_mm)


def score_case(gt: np.ndarray, pred: np.ndarray, spacing: Spacing, rules: Rules = "2022") -> Scores:
    """(DSC, NSD) of the 13 organs of a same-shape (x, y, z) uint8 pair at the GT's spacing."""
    if rules not in RULES:
        raise ValueError(f"rules {rules!r}: expected one of {', '.join(RULES)}")
    gt_boxes, pred_boxes = label_boxes(gt), label_boxes(pred)
    return tuple(
        score_organ(gt, pred, spacing, o, gt_boxes[o.label - 1], pred_boxes[o.label - 1], rules)
        for o in ORGANS
    )


def evaluate_case(job: tuple[str, Path, Path | None], rules: Rules = "2022") -> CaseResult:
    """Read and score one (case, GT file, prediction file or None) job."""
    case, gt_path, pred_path = job
    try:
        gt, spacing = read_labels(gt_path)
    except LabelValueError as e:
        return CaseResult(case, "invalid ground truth", None, (str(e),))
    except InputError as e:
        return CaseResult(case, "unreadable ground truth", None, (str(e),))
    if pred_path is None:
        return CaseResult(case, "missing prediction", ZERO)
    try:
        pred, _ = read_labels(pred_path)  # the official script used the GT's spacing only
    except LabelValueError as e:
        return CaseResult(case, "invalid prediction", ZERO, (str(e),))
    except InputError as e:
        return CaseResult(case, "unreadable prediction", ZERO, (str(e),))
    if pred.shape != gt.shape:
        reason = f"{pred_path}: shape {pred.shape} differs from the ground truth's {gt.shape}"
        return CaseResult(case, "shape mismatch", ZERO, (reason,))
    return CaseResult(case, "ok", score_case(gt, pred, spacing, rules))


def _by_case(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Label files of a folder by case name; error lines for repeated names."""
    found: dict[str, Path] = {}
    errors = []
    for path in find_inputs(folder):
        if not path.is_file():
            continue  # a DICOM folder is a CT, never a label map
        name = case_name(path)
        if name in found:
            errors.append(f"{path}: case {name} already read from {found[name].name}; ignored")
        else:
            found[name] = path
    return found, errors


def match_cases(gt_dir: Path, pred_dir: Path) -> tuple[list, list[str], list[str]]:
    """Jobs (case, GT, prediction or None) in case order, predictions without a GT, errors."""
    gts, gt_errors = _by_case(gt_dir)
    preds, pred_errors = _by_case(pred_dir)
    jobs = [(case, gts[case], preds.get(case)) for case in sorted(gts)]
    orphans = sorted(set(preds) - set(gts))
    return jobs, orphans, gt_errors + pred_errors


def run_jobs(jobs: list, workers: int, rules: Rules = "2022") -> Iterator[CaseResult]:
    """Results in job order; ``workers`` > 1 scores cases in that many processes."""
    evaluate = partial(evaluate_case, rules=rules)
    if workers <= 1:
        return map(evaluate, jobs)
    with ProcessPoolExecutor(workers) as pool:
        return iter(list(pool.map(evaluate, jobs)))


@dataclass(frozen=True)
class OrganSummary:
    """Means over cases skipping NaN; ``nan_skipped`` counts cases with a NaN value."""

    organ_id: str
    organ: str
    mean_dsc: float
    mean_nsd: float
    cases: int
    nan_skipped: int


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def _summary(organ_id: str, name: str, pairs: list[tuple[float, float]]) -> OrganSummary:
    skipped = sum(1 for d, n in pairs if math.isnan(d) or math.isnan(n))
    return OrganSummary(
        organ_id,
        name,
        _mean([d for d, _ in pairs]),
        _mean([n for _, n in pairs]),
        len(pairs),
        skipped,
    )


def summarize(results: Iterable[CaseResult]) -> list[OrganSummary]:
    """Per organ, then a last row over all case x organ values (FLARE's overall mean)."""
    scored = [r.scores for r in results if r.scores is not None]
    rows = [_summary(str(o.label), o.name, [s[i] for s in scored]) for i, o in enumerate(ORGANS)]
    everything = [pair for s in scored for pair in s]
    return [*rows, _summary("all", "all organs and cases", everything)]


def write_per_case(results: list[CaseResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "organ_id", "organ", "dsc", "nsd", "status"])
        for r in results:
            for i, o in enumerate(ORGANS):
                d, n = r.scores[i] if r.scores is not None else ("", "")
                w.writerow([r.case, o.label, o.name, d, n, r.status])


def write_summary(rows: list[OrganSummary], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["organ_id", "organ", "mean_dsc", "mean_nsd", "cases", "nan_skipped"])
        for s in rows:
            w.writerow([s.organ_id, s.organ, s.mean_dsc, s.mean_nsd, s.cases, s.nan_skipped])


def print_report(
    results: list[CaseResult], rows: list[OrganSummary], orphans: list[str], rules: Rules
) -> None:
    print(f"{'organ':<24} {'DSC':>7} {'NSD':>7} {'cases':>6} {'NaN skipped':>12}")
    for s in rows:
        if s.organ_id == "all":
            print("-" * 60)
        print(
            f"{s.organ:<24} {s.mean_dsc:>7.4f} {s.mean_nsd:>7.4f} {s.cases:>6} {s.nan_skipped:>12}"
        )
    print(
        "aorta, inferior vena cava, esophagus: scored on GT slices z.min() .. z.max() - 1 "
        "(the official half-open slice drops the topmost GT slice); a one-slice GT gives NaN "
        "here, where the official script stops with a ValueError"
    )
    if rules == "2024":
        print(f"rules 2024: NSD set to 0 where DSC < {MIN_DSC_FOR_NSD_2024}")
    else:
        print("rules 2022: as FLARE22 scored (no NSD cut-off)")
    for status in (
        "missing prediction",
        "shape mismatch",
        "unreadable prediction",
        "invalid prediction",
    ):
        cases = [r.case for r in results if r.status == status]
        if cases:
            note = "; the official script silently skipped these" if "missing" in status else ""
            print(f"{status} ({len(cases)}, scored 0{note}): {', '.join(cases)}")
    excluded = [r.case for r in results if r.scores is None]
    if excluded:
        print(f"ground truth unreadable or invalid, not scored: {', '.join(excluded)}")
    if orphans:
        print(f"predictions without ground truth, ignored: {', '.join(orphans)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/evaluate.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps")
    p.add_argument("--gt", type=Path, required=True, help="folder of ground-truth label maps")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the CSV files")
    p.add_argument("--workers", type=int, default=1, help="processes scoring cases (default 1)")
    p.add_argument(
        "--rules",
        choices=RULES,
        default="2022",
        help="2022: as FLARE22 scored (default); 2024: also NSD = 0 where DSC < 0.2",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for folder in (args.gt, args.pred):
        if not folder.is_dir():
            print(f"error: {folder}: not a folder", file=sys.stderr)
            return 2
    jobs, orphans, errors = match_cases(args.gt, args.pred)
    if not jobs:
        print(f"error: {args.gt}: no ground-truth label maps", file=sys.stderr)
        return 2
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    results = []
    for r in run_jobs(jobs, args.workers, args.rules):
        errors.extend(r.errors)
        for e in r.errors:
            print(f"ERROR {e}", file=sys.stderr)
        results.append(r)
    rows = summarize(results)
    args.out.mkdir(parents=True, exist_ok=True)
    write_per_case(results, args.out / "per_case.csv")
    write_summary(rows, args.out / "summary.csv")
    print_report(results, rows, orphans, args.rules)
    print(f"wrote {args.out / 'per_case.csv'} and {args.out / 'summary.csv'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
