"""python -m inference.report: organ volumes in mL and the slice picture."""

import numpy as np
import pytest
import SimpleITK as sitk

from inference.organs import from_totalsegmentator
from inference.report import COLOURS, main, organ_volumes_ml
from tests.helpers import SAMPLE_CT, SAMPLE_SEG


def test_volumes_count_voxels_times_voxel_volume():
    labels = np.zeros((10, 20, 30), np.uint8)
    labels[2:4, 5:10, 5:15] = 1  # 100 voxels
    labels[5, 0, 0] = 13
    volumes = organ_volumes_ml(labels, (0.8, 0.8, 2.5))  # 1.6 mm³ per voxel
    assert volumes[1] == pytest.approx(0.16) and volumes[13] == pytest.approx(0.0016)
    assert volumes[2] == 0.0 and len(volumes) == 13


def test_report_prints_volumes_and_draws_both_slices(tmp_path, capsys):
    ct = sitk.ReadImage(str(SAMPLE_CT))
    array = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    array[40:60, 30:60, 20:50] = 3
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(ct)
    sitk.WriteImage(labels, str(tmp_path / "case.nii.gz"))
    png = tmp_path / "case.png"
    assert main([str(tmp_path / "case.nii.gz"), "--ct", str(SAMPLE_CT), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    ml = 20 * 30 * 30 * np.prod(ct.GetSpacing()) / 1000
    assert f"spleen {ml:>25.1f}" in out
    assert "not found: liver" in out
    picture = sitk.ReadImage(str(png))
    assert picture.GetNumberOfComponentsPerPixel() == 3 and picture.GetWidth() > 400
    rgb = sitk.GetArrayFromImage(picture)
    assert (rgb[..., 0] != rgb[..., 1]).any()  # the organ is coloured
    # The legend shows the spleen's colour (a square of it, beyond both slices).
    assert (rgb == COLOURS[3]).all(axis=-1).sum() >= 100


def test_report_scores_against_a_totalsegmentator_reference(tmp_path, capsys):
    reference = sitk.ReadImage(str(SAMPLE_SEG))
    flare = from_totalsegmentator(sitk.GetArrayFromImage(reference))
    half = flare.copy()
    half[half.shape[0] // 2 :] = 0  # the prediction: the reference's lower half
    labels = sitk.GetImageFromArray(half)
    labels.CopyInformation(reference)
    sitk.WriteImage(labels, str(tmp_path / "case.nii.gz"))
    args = [str(tmp_path / "case.nii.gz"), "--reference", str(SAMPLE_SEG)]
    assert main([*args, "--totalsegmentator"]) == 0
    out = capsys.readouterr().out
    liver = flare == 1
    expected = 2 * (half == 1).sum() / ((half == 1).sum() + liver.sum())
    row = next(line for line in out.splitlines() if line.startswith("liver"))
    assert float(row.split()[-1]) == pytest.approx(expected, abs=5e-4) and expected < 0.99
    assert "mean DSC over the 12 organs in the reference" in out
    # Without --totalsegmentator its ids (up to 117) are refused, not scored near 0.
    assert main(args) == 2
    assert "--totalsegmentator" in capsys.readouterr().err


def test_report_of_a_missing_file_is_exit_code_2(tmp_path, capsys):
    assert main([str(tmp_path / "nothing.nii.gz")]) == 2
    assert "error" in capsys.readouterr().err
