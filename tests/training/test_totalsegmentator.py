"""TotalSegmentator label ids -> FLARE22 ids, on the bundled label map."""

import numpy as np
import pytest
import SimpleITK as sitk

from inference.organs import ORGANS, TOTALSEGMENTATOR_TO_FLARE
from tests.helpers import ROOT
from training.totalsegmentator import to_flare


def test_every_flare_organ_has_one_totalsegmentator_class():
    assert sorted(TOTALSEGMENTATOR_TO_FLARE.values()) == [o.label for o in ORGANS]


def test_the_bundled_label_map_maps_to_flare_ids_in_place():
    ts = sitk.ReadImage(str(ROOT / "data" / "totalsegmentator" / "example_seg.nii.gz"))
    flare = to_flare(ts)
    a, b = sitk.GetArrayFromImage(ts), sitk.GetArrayFromImage(flare)
    assert flare.GetOrigin() == ts.GetOrigin() and flare.GetDirection() == ts.GetDirection()
    assert np.array_equal(b == 1, a == 5)  # liver
    assert np.array_equal(b == 5, a == 52)  # aorta
    assert set(np.unique(b)) <= set(range(14))
    assert not (b == 10).any()  # the esophagus is outside this scan
    assert ((a != 0) & (b == 0)).any()  # bones and the like become background


def fake_fixtures(root):
    """The sdist's reference files that write_dataset reads, small and made here."""
    from tests.helpers import write_dicom_series

    ct = sitk.Cast(sitk.ReadImage(str(ROOT / "data" / "totalsegmentator" / "example_ct.nii.gz")), 2)
    ct = ct[::4, ::4, ::4]
    write_dicom_series(ct, root / "example_ct_dicom")
    labels = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    labels[5:10, 10:15, 10:15] = 5  # TotalSegmentator's liver
    seg = sitk.GetImageFromArray(labels)
    seg.CopyInformation(ct)
    sitk.WriteImage(seg, str(root / "example_seg_dicom.nii.gz"))
    (root / "aorta_report").mkdir()
    sitk.WriteImage(ct, str(root / "aorta_report" / "example_ct.nii.gz"))
    return root


@pytest.mark.parametrize("held_out", ["B", "A", "none"])
def test_each_fold_holds_out_its_patient(tmp_path, held_out):
    from training.dataset import labelled_cases
    from training.totalsegmentator import write_dataset

    fixtures = fake_fixtures(tmp_path / "fixtures")
    out = tmp_path / "dataset"
    write_dataset(out, fixtures, "A" if held_out == "B" else "B")  # a stale other layout
    write_dataset(out, fixtures, held_out)
    trained = {"B": ["patientA"], "A": ["patientB"], "none": ["patientA", "patientB"]}[held_out]
    assert [c.name for c in labelled_cases(out)] == trained
    tests = sorted(p.name for p in (out / "labelsTs").iterdir())
    assert tests == ([] if held_out == "none" else [f"patient{held_out}.nii.gz"])
    images = sorted(p.name for p in (out / "imagesTs").iterdir())
    assert images == {"B": ["patientB"], "A": ["patientA_0000.nii.gz"], "none": []}[held_out]
    if held_out != "B":  # patient B trained on: its series as one image, labels on its grid
        image = sitk.ReadImage(str(out / "imagesTr" / "patientB_0000.nii.gz"))
        labels = sitk.ReadImage(str(out / "labelsTr" / "patientB.nii.gz"))
        assert image.GetSize() == labels.GetSize()
        assert (sitk.GetArrayFromImage(labels) == 1).sum() == 125
