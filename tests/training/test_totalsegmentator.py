"""TotalSegmentator label ids -> FLARE22 ids, on the bundled label map."""

import numpy as np
import SimpleITK as sitk

from inference.organs import ORGANS
from tests.helpers import ROOT
from training.totalsegmentator import TS_TO_FLARE, to_flare


def test_every_flare_organ_has_one_totalsegmentator_class():
    assert sorted(TS_TO_FLARE.values()) == [o.label for o in ORGANS]


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
