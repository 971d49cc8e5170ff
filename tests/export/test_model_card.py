"""``python -m export.model_card``: tables from real evaluate.py scores, organs out of view."""

import json

import numpy as np
import SimpleITK as sitk

from benchmarks.evaluate import main as evaluate_main
from export.model_card import main


def write(array: np.ndarray, path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((2.0, 2.0, 2.0))  # 8 mm³ a voxel
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_the_card_shows_scores_volumes_and_targets(tmp_path):
    dataset, evaluation, weights = tmp_path / "ds", tmp_path / "eval", tmp_path / "weights"
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:12, 2:12, 2:12] = 1  # liver, 1000 voxels = 8 mL
    ref[14:18, 14:18, 14:18] = 3  # spleen
    pred = ref.copy()
    pred[2:12, 2:12, 2:7] = 0  # half the liver: DSC 2/3
    pred[0, 0, 0] = 13  # a left kidney voxel where the reference has none
    write(ref, dataset / "labelsTr" / "caseA.nii.gz")
    write(pred, evaluation / "pred" / "caseA.nii.gz")
    held = np.zeros((20, 20, 20), np.uint8)
    held[5:15, 5:15, 5:15] = 1
    write(held, dataset / "labelsTs" / "caseB.nii.gz")
    write(held, evaluation / "pred" / "caseB.nii.gz")
    write(ref, dataset / "labelsTr" / "synth_000.nii.gz")  # synthetic: not segmented, no table
    for kind, labels in (("training", "labelsTr"), ("held_out", "labelsTs")):
        argv = ["--pred", str(evaluation / "pred"), "--gt", str(dataset / labels)]
        assert evaluate_main([*argv, "--out", str(evaluation / kind)]) == 0
    weights.mkdir()
    manifest = {"sources": {"fine": "ab" * 32}, "training": {"fine": {"epoch": 3, "command": "c"}}}
    (weights / "manifest.json").write_text(json.dumps(manifest))

    argv = ["--weights", str(weights), "--dataset", str(dataset), "--eval", str(evaluation)]
    assert main(argv) == 0
    card = (weights / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "| liver | 8.0 | 4.0 | 0.667 |" in card
    assert "| spleen | 0.5 | 0.5 | 1.000 | 1.000 |" in card
    assert "| left kidney | not in view | 0.0 | | |" in card  # 1 voxel = 0.008 mL
    assert "- caseA (trained on): DSC ≥ 0.93 for liver, spleen and kidneys in view: missed " in card
    assert "for liver 0.667; volume within ±10% for organs above 50 mL: met." in card
    assert (
        "- caseB (held out): DSC ≥ 0.90 liver, ≥ 0.85 spleen and kidneys, those in view: met."
        in card
    )
    assert "synth_000" not in card and "**1 synthetic CTs**" in card
    # The ablation: one row a change, four cells each (a "|" inside a cell would break it).
    ablation = card.split("## How the recipe was chosen", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in ablation.splitlines() if line.startswith("| ")]
    assert rows[0] == "| question | compared | measured | kept |" and len(rows) >= 6
    assert all(row.count(" | ") == 3 and row.endswith(" |") for row in rows)

    # The weights these replace, as a column.
    assert main([*argv, "--previous", str(evaluation / "training" / "per_case.csv")]) == 0
    card = (weights / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "| liver | 8.0 | 4.0 | 0.667 | 0.667 |" in card and "DSC before" in card
    assert "- **fine**: 3 epochs, checkpoint sha256 `" + "ab" * 32 in card


def test_missing_scores_are_an_error_not_a_card(tmp_path, capsys):
    assert main(["--weights", str(tmp_path), "--dataset", str(tmp_path)]) == 1
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "MODEL_CARD.md").exists()


def test_weights_trained_on_every_patient_show_both_leave_one_out_folds(tmp_path):
    # The final weights trained on both patients: no held-out table of their own; each fold's
    # weights scored on the patient they never saw stand in for it.
    dataset, folds, evaluation = tmp_path / "all", tmp_path / "folds", tmp_path / "eval"
    weights = tmp_path / "weights"
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:12, 2:12, 2:12] = 1
    for case in ("patientA", "patientB"):
        write(ref, dataset / "labelsTr" / f"{case}.nii.gz")
        write(ref, evaluation / "pred" / f"{case}.nii.gz")
        write(ref, folds / f"{case}.nii.gz")
    (dataset / "labelsTs").mkdir()
    half = ref.copy()
    half[2:12, 2:12, 2:7] = 0
    write(half, evaluation / "fold_pred" / "patientB.nii.gz")
    write(ref, evaluation / "fold_pred" / "patientA.nii.gz")
    for kind, pred, gt in (
        ("training", "pred", dataset / "labelsTr"),
        ("fold", "fold_pred", folds),
    ):
        argv = ["--pred", str(evaluation / pred), "--gt", str(gt), "--out", str(evaluation / kind)]
        assert evaluate_main(argv) == 0
    weights.mkdir()
    (weights / "manifest.json").write_text(json.dumps({"training": {}}))

    argv = ["--weights", str(weights), "--dataset", str(dataset), "--eval", str(evaluation)]
    assert main([*argv, "--fold", str(folds)]) == 0
    card = (weights / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "- **patient B** (training)" in card and "Held-out patient" not in card
    fold_table = card.split("### Leave-one-patient-out fold, held out: patientB", 1)[1]
    assert fold_table.split("\n| liver |", 1)[1].startswith(" 8.0 | 4.0 | 0.667 |")
    assert "- patientB (trained on): DSC ≥ 0.93 for liver, spleen and kidneys in view: met" in card
    assert "- patientB in the fold (held out): DSC ≥ 0.90 liver, ≥ 0.85 spleen and kidneys" in card
    assert "missed for liver 0.667 < 0.9." in card
    met = "DSC ≥ 0.90 liver, ≥ 0.85 spleen and kidneys, those in view: met."
    assert f"- patientA in the fold (held out): {met}" in card
    # Each fold says whose weights segmented it; the reverse fold that A's anatomy was trained on.
    note = card.split("with weights that never saw its CT:\n", 1)[1].split("\n\n", 1)[0]
    assert (
        note.startswith("- patient A by the reverse fold's weights")
        and "its anatomy is not" in note
    )
    assert note.count("\n- ") == 1 and "- patient B by the recipe's weights" in note


def test_unseen_synthetic_cts_get_a_mean_dsc_per_organ_over_the_cases_that_hold_it(tmp_path):
    dataset, unseen, evaluation = tmp_path / "ds", tmp_path / "unseen", tmp_path / "eval"
    weights = tmp_path / "weights"
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:12, 2:12, 2:12] = 1
    write(ref, dataset / "labelsTr" / "patientA.nii.gz")
    write(ref, evaluation / "pred" / "patientA.nii.gz")
    with_spleen = ref.copy()
    with_spleen[14:18, 14:18, 14:18] = 3
    half = ref.copy()
    half[2:12, 2:12, 2:7] = 0  # liver DSC 2/3
    for case, label, pred in (("held_000", with_spleen, with_spleen), ("held_001", ref, half)):
        write(label, unseen / "labelsTr" / f"{case}.nii.gz")
        write(pred, evaluation / "synth_pred" / f"{case}.nii.gz")
    for kind, pred, gt in (
        ("training", "pred", dataset / "labelsTr"),
        ("synthetic", "synth_pred", unseen / "labelsTr"),
    ):
        argv = ["--pred", str(evaluation / pred), "--gt", str(gt), "--out", str(evaluation / kind)]
        assert evaluate_main(argv) == 0
    weights.mkdir()
    (weights / "manifest.json").write_text(json.dumps({"training": {}}))
    argv = ["--weights", str(weights), "--dataset", str(dataset), "--eval", str(evaluation)]
    assert main([*argv, "--synthetic", str(unseen)]) == 0
    card = (weights / "MODEL_CARD.md").read_text(encoding="utf-8")
    table = card.split("### 2 synthetic CTs no training drew", 1)[1].split("##", 1)[0]
    assert "| liver | 2 | 0.833 |" in table  # (1 + 2/3) / 2
    assert "| spleen | 1 | 1.000 |" in table  # held_001 has none: not scored 1 by the rules
    assert "| right kidney |" not in table  # in neither reference
