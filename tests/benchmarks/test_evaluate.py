"""benchmarks/evaluate.py: the official FLARE22 per-organ rules, reading, and the CLI."""

import csv
import math
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import surface_distance as deepmind

from benchmarks.evaluate import (
    LabelValueError,
    label_boxes,
    main,
    read_labels,
    score_case,
    score_organ,
)
from inference.organs import ORGANS

SPACING = (0.75, 1.25, 2.5)  # exact in float32, as NIfTI stores it
LIVER, AORTA, GALLBLADDER, ESOPHAGUS = ORGANS[0], ORGANS[4], ORGANS[8], ORGANS[9]


def organ(gt: np.ndarray, pred: np.ndarray, which=AORTA, rules="2022") -> tuple[float, float]:
    """score_organ as score_case calls it."""
    gt_box, pred_box = label_boxes(gt)[which.label - 1], label_boxes(pred)[which.label - 1]
    return score_organ(gt, pred, SPACING, which, gt_box, pred_box, rules)


def tube(label: int, z0: int, z1: int, shape=(16, 16, 20)) -> np.ndarray:
    """A square tube on slices z0..z1 - 1 (x, y, z indexing)."""
    labels = np.zeros(shape, np.uint8)
    labels[5:10, 6:11, z0:z1] = label
    return labels


def test_absent_organs():
    empty, liver = np.zeros((8, 8, 8), np.uint8), tube(1, 2, 5, (8, 8, 8))
    assert organ(empty, empty, LIVER) == (1.0, 1.0)
    assert organ(empty, liver, LIVER) == (0.0, 0.0)
    assert organ(liver, empty, LIVER) == (0.0, 0.0)


def test_one_slice_gt_is_nan_for_the_aorta_but_scored_for_the_liver():
    for which in (AORTA, ESOPHAGUS):
        gt = tube(which.label, 7, 8)
        dsc, nsd = organ(gt, gt, which)
        assert math.isnan(dsc) and math.isnan(nsd)
    gt = tube(LIVER.label, 7, 8)
    assert organ(gt, gt, LIVER) == (1.0, 1.0)


def test_one_slice_aorta_is_nan_where_the_official_script_raises(tmp_path, capsys):
    gt = tube(AORTA.label, 7, 8)
    # The official masks gt[:, :, z.min():z.max()] have no slice left; DeepMind's code, called
    # first by the official script, fails on them.
    official_gt = gt[:, :, 7:7] == AORTA.label
    with pytest.raises(ValueError, match="zero-size array"):
        deepmind.compute_surface_distances(official_gt, official_gt.copy(), SPACING)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 RuntimeWarning on our side
        for pred in (gt, tube(AORTA.label, 0, 20), np.zeros_like(gt)):
            for rules in ("2022", "2024"):
                dsc, nsd = organ(gt, pred, AORTA, rules)
                assert math.isnan(dsc) and math.isnan(nsd)

    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    write(gt, tmp_path / "gt" / "a.nii.gz")
    write(gt, tmp_path / "pred" / "a.nii.gz")
    argv = ["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert "official script stops with a ValueError" in capsys.readouterr().out
    rows = {r["organ_id"]: r for r in read_csv(tmp_path / "out" / "per_case.csv")}
    assert rows[str(AORTA.label)]["dsc"] == rows[str(AORTA.label)]["nsd"] == "nan"


def test_rules_2024_set_nsd_to_zero_below_dsc_0_2():
    gt = np.zeros((32, 16, 16), np.uint8)
    gt[2:12, 2:12, 2:12] = LIVER.label  # 1000 voxels
    below, at = np.zeros_like(gt), np.zeros_like(gt)
    below[11:21, 2:12, 2:12] = LIVER.label  # overlap 100: DSC 0.1
    at[10:20, 2:12, 2:12] = LIVER.label  # overlap 200: DSC exactly 0.2, not below
    dsc, nsd = organ(gt, below, LIVER, "2022")
    assert dsc == pytest.approx(0.1) and nsd > 0
    assert organ(gt, below, LIVER, "2024") == (dsc, 0.0)
    assert organ(gt, at, LIVER, "2024") == organ(gt, at, LIVER, "2022")
    assert organ(gt, at, LIVER)[0] == 0.2 and organ(gt, at, LIVER)[1] > 0
    assert organ(gt, gt, LIVER, "2024") == (1.0, 1.0)
    with pytest.raises(ValueError, match="rules '2042': expected one of 2022, 2024"):
        score_case(gt, gt, SPACING, "2042")


def test_aorta_scored_without_the_topmost_gt_slice():
    gt = tube(AORTA.label, 4, 12)
    assert organ(gt, tube(AORTA.label, 4, 11)) == (1.0, 1.0)  # top GT slice missed: not seen
    assert organ(gt, tube(AORTA.label, 0, 20)) == (1.0, 1.0)  # beyond the GT's slices: ignored
    assert organ(gt, tube(AORTA.label, 5, 12))[0] == pytest.approx(12 / 13)  # 6 of 7 slices
    # The rule is for the aorta, inferior vena cava and esophagus only.
    dsc, _ = organ(tube(LIVER.label, 4, 12), tube(LIVER.label, 4, 11), LIVER)
    assert dsc == pytest.approx(14 / 15)


def test_prediction_empty_after_the_slice_rule_scores_zero():
    gt = tube(AORTA.label, 4, 12)
    assert organ(gt, tube(AORTA.label, 11, 14)) == (0.0, 0.0)  # only on the dropped top slice


def test_label_boxes_of_a_transposed_array():
    zyx = np.zeros((6, 7, 8), np.uint8)
    zyx[1:3, 2:5, 4:8] = 3
    xyz = zyx.T
    assert label_boxes(xyz)[2] == label_boxes(np.ascontiguousarray(xyz))[2]
    assert label_boxes(xyz)[2] == (slice(4, 8), slice(2, 5), slice(1, 3))
    assert label_boxes(xyz)[0] is None


def write(labels_xyz: np.ndarray, path, spacing=SPACING) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels_xyz.T))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=True)


def test_values_outside_0_to_13_are_named(tmp_path):
    labels = np.zeros((6, 5, 4), np.int16)
    labels[0, 0, :] = [14, 15, 52, 117]
    labels[1, 0, :] = [256, 300, 400, -1]  # 256 would become 0 in the uint8 cast
    write(labels, tmp_path / "ts.nii.gz")
    with pytest.raises(LabelValueError) as e:
        read_labels(tmp_path / "ts.nii.gz")
    assert str(e.value) == (
        f"{tmp_path / 'ts.nii.gz'}: label values -1, 14, 15, 52, 117, ... (8 distinct values) "
        "are not FLARE22 organ ids (0-13): a TotalSegmentator or other label map must be mapped "
        "to FLARE ids first"
    )
    write(np.full((6, 5, 4), 13, np.int16), tmp_path / "ok.nii.gz")
    assert read_labels(tmp_path / "ok.nii.gz")[0].max() == 13


def test_cli_ground_truth_or_prediction_above_13_is_an_error(tmp_path, capsys):
    gt_dir, pred_dir, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    gt_dir.mkdir()
    pred_dir.mkdir()
    flare = tube(LIVER.label, 2, 12)
    totalseg = flare.copy()
    totalseg[0:3, 0:3, 0:3], totalseg[12:15, 0:3, 0:3] = 14, 117  # spleen, liver ids there
    write(flare, gt_dir / "a.nii.gz")  # fine
    write(flare, pred_dir / "a.nii.gz")
    write(totalseg, gt_dir / "b.nii.gz")  # a TotalSegmentator reference
    write(flare, pred_dir / "b.nii.gz")
    write(flare, gt_dir / "c.nii.gz")
    write(totalseg, pred_dir / "c.nii.gz")  # a TotalSegmentator prediction

    assert main(["--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    reason = "label values 14, 117 are not FLARE22 organ ids (0-13): a TotalSegmentator"
    assert errors == [
        f"ERROR {gt_dir / 'b.nii.gz'}: {reason} or other label map must be mapped to FLARE ids "
        "first",
        f"ERROR {pred_dir / 'c.nii.gz'}: {reason} or other label map must be mapped to FLARE ids "
        "first",
    ]
    rows = read_csv(out / "per_case.csv")
    status = {r["case"]: r["status"] for r in rows}
    assert status == {"a": "ok", "b": "invalid ground truth", "c": "invalid prediction"}
    assert {(r["dsc"], r["nsd"]) for r in rows if r["case"] == "b"} == {("", "")}
    assert {(r["dsc"], r["nsd"]) for r in rows if r["case"] == "c"} == {("0.0", "0.0")}
    liver = {r["organ_id"]: r for r in read_csv(out / "summary.csv")}[str(LIVER.label)]
    assert int(liver["cases"]) == 2 and float(liver["mean_dsc"]) == 0.5  # a: 1, c: 0
    assert "invalid prediction (1, scored 0): c" in captured.out
    assert "ground truth unreadable or invalid, not scored: b" in captured.out


def test_read_labels_gives_nibabels_axis_order(tmp_path):
    labels = (np.arange(4 * 5 * 6, dtype=np.uint8) % 14).reshape(4, 5, 6)  # FLARE ids
    write(labels, tmp_path / "a.nii.gz")
    read, spacing = read_labels(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(read, labels)
    assert spacing == SPACING


def case_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """GT and prediction (x, y, z) with every official branch: organs in both, in one, in
    neither, and tubes under the slice rule."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((40, 36, 24), np.uint8)
    pred = np.zeros_like(gt)
    gt[4:16, 4:14, 3:15] = 1  # liver
    pred[5:17, 4:15, 6:15] = 1
    gt[20:28, 6:12, 8:14] = 3  # spleen
    pred[21:28, 6:13, 9:14] = 3
    gt[30:34, 20:24, 2:22] = 5  # aorta, predicted too long
    pred[30:35, 20:24, 0:24] = 5
    gt[24:27, 26:29, 10:20] = 10  # esophagus, prediction misses its top slices
    pred[24:27, 26:30, 12:17] = 10
    gt[28:34, 4:10, 16:22] = 9  # gallbladder, predicted 5 voxels off: DSC 1/6, NSD > 0
    pred[33:39, 4:10, 16:22] = 9
    gt[8:12, 24:30, 5:9] = 2  # right kidney, not predicted
    pred[14:18, 28:32, 18:21] = 13  # left kidney, not in the GT
    noise = rng.random(gt.shape) < 0.02
    pred[noise & (pred == 1)] = 0  # holes in the liver
    return gt, pred


def official(gt: np.ndarray, pred: np.ndarray, spacing, rules="2022") -> list[tuple[float, float]]:
    """FLARE22_DSC_NSD_Eval.py's loop with DeepMind's package, written out independently;
    ``rules="2024"``: the revision that skips NSD (0) where DSC < 0.2."""
    scores = []
    for o in ORGANS:
        i = o.label
        if not (gt == i).any():
            scores.append((1.0, 1.0) if not (pred == i).any() else (0.0, 0.0))
            continue
        if i in (5, 6, 10):
            z = np.where(gt == i)[2]
            a, b = gt[:, :, z.min() : z.max()] == i, pred[:, :, z.min() : z.max()] == i
        else:
            a, b = gt == i, pred == i
        if not b.any():  # the reference would call np.Inf, gone in numpy 2; it scored 0
            scores.append((0.0, 0.0))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            d = deepmind.compute_surface_distances(a, b, spacing)
        dsc = 2 * (a & b).sum() / (a.sum() + b.sum())
        if rules == "2024" and dsc < 0.2:
            scores.append((dsc, 0.0))
            continue
        scores.append((dsc, deepmind.compute_surface_dice_at_tolerance(d, o.nsd_tolerance_mm)))
    return scores


@pytest.mark.parametrize("rules", ["2022", "2024"])
def test_score_case_matches_the_official_loop(rules):
    gt, pred = case_pair(0)
    ours, expected = score_case(gt, pred, SPACING, rules), official(gt, pred, SPACING, rules)
    for o, (d, n), (ed, en) in zip(ORGANS, ours, expected, strict=True):
        assert abs(d - ed) <= 1e-12 and abs(n - en) <= 1e-12, o.name
    assert 0 < ours[0][1] < 1 and 0 < ours[9][1] < 1  # non-trivial values were compared
    dsc, nsd = ours[GALLBLADDER.label - 1]
    assert dsc == pytest.approx(1 / 6)
    assert nsd == 0.0 if rules == "2024" else nsd > 0  # the one organ the rules tell apart


def test_cli_rules(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt, pred = case_pair(3)
    write(gt, gt_dir / "a.nii.gz")
    write(pred, pred_dir / "a.nii.gz")
    nsd = {}
    for rules in ("2022", "2024"):
        argv = ["--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(tmp_path / rules)]
        assert main([*argv, *(["--rules", rules] if rules == "2024" else [])]) == 0
        assert f"rules {rules}:" in capsys.readouterr().out
        rows = read_csv(tmp_path / rules / "per_case.csv")
        nsd[rules] = [float(r["nsd"]) for r in rows]
        assert nsd[rules] == pytest.approx([n for _, n in official(gt, pred, SPACING, rules)])
    changed = [i for i, (a, b) in enumerate(zip(*nsd.values(), strict=True)) if a != b]
    assert changed == [GALLBLADDER.label - 1] and nsd["2024"][changed[0]] == 0.0
    with pytest.raises(SystemExit):
        main(["--gt", str(gt_dir), "--pred", str(pred_dir), "--rules", "2023"])


def read_csv(path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_cli(tmp_path, capsys):
    gt_dir, pred_dir, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt1, pred1 = case_pair(1)
    gt2, _ = case_pair(2)
    write(gt1, gt_dir / "FLARE22_Tr_0001.nii.gz")
    write(gt2, gt_dir / "FLARE22_Tr_0002_0000.nii.gz")
    write(pred1, pred_dir / "FLARE22_Tr_0001.nii.gz", spacing=(1.0, 1.0, 1.0))  # GT's is used
    write(pred1, pred_dir / "FLARE22_Tr_0009.nii.gz")  # no GT

    assert main(["--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = read_csv(out / "per_case.csv")
    assert [r["case"] for r in rows] == ["FLARE22_Tr_0001"] * 13 + ["FLARE22_Tr_0002"] * 13
    expected = official(gt1, pred1, SPACING)
    for r, (d, n) in zip(rows[:13], expected, strict=True):
        assert r["status"] == "ok"
        assert abs(float(r["dsc"]) - d) <= 1e-12 and abs(float(r["nsd"]) - n) <= 1e-12
    assert all(r["status"] == "missing prediction" for r in rows[13:])
    assert all(float(r["dsc"]) == float(r["nsd"]) == 0.0 for r in rows[13:])
    assert "missing prediction" in stdout and "FLARE22_Tr_0002" in stdout
    assert "silently skipped" in stdout
    assert "without ground truth" in stdout and "FLARE22_Tr_0009" in stdout

    summary = {r["organ_id"]: r for r in read_csv(out / "summary.csv")}
    liver = summary["1"]
    assert int(liver["cases"]) == 2 and int(liver["nan_skipped"]) == 0
    assert float(liver["mean_dsc"]) == pytest.approx(expected[0][0] / 2)
    values = [float(r["nsd"]) for r in rows]
    assert float(summary["all"]["mean_nsd"]) == pytest.approx(sum(values) / len(values))


def test_cli_nan_shape_mismatch_and_unreadable(tmp_path, capsys):
    gt_dir, pred_dir, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = tube(AORTA.label, 7, 8)  # one-slice aorta: NaN
    for case in ("a", "b", "c"):
        write(gt, gt_dir / f"{case}.nii.gz")
    write(gt, pred_dir / "a.nii.gz")
    write(gt[:, :, :-1], pred_dir / "b.nii.gz")
    (pred_dir / "c.nii.gz").write_bytes(b"not an image")

    assert main(["--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("ERROR ") and "b.nii.gz: shape (16, 16, 19)" in errors[0]
    assert errors[1].startswith("ERROR ") and "c.nii.gz" in errors[1]
    status = {r["case"]: r["status"] for r in read_csv(out / "per_case.csv")}
    assert status == {"a": "ok", "b": "shape mismatch", "c": "unreadable prediction"}
    aorta = {r["organ_id"]: r for r in read_csv(out / "summary.csv")}[str(AORTA.label)]
    assert int(aorta["cases"]) == 3 and int(aorta["nan_skipped"]) == 1
    assert float(aorta["mean_dsc"]) == 0.0  # the NaN skipped, the two zeros kept


def test_cli_without_ground_truth(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    args = ["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "no ground-truth" in capsys.readouterr().err
