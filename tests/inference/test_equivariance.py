"""Property: segmenting a re-stored scan gives exactly the re-stored segmentation."""

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.__main__ import segment_file
from inference.orientation import Orientation
from inference.pipeline import Segmenter
from tests.helpers import SAMPLE_CT, reoriented


@pytest.fixture(scope="module")
def segmenter(small_weights):
    return Segmenter(small_weights, "cpu")


@pytest.fixture(scope="module")
def ct():
    return sitk.ReadImage(str(SAMPLE_CT))


orientations = st.builds(
    Orientation,
    st.sampled_from(list(itertools.permutations(range(3)))),
    st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
spacings = st.tuples(*[st.floats(0.5, 5.0)] * 3)
origins = st.tuples(*[st.floats(-500.0, 500.0)] * 3)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(o=orientations, spacing=spacings, origin=origins)
def test_segmentation_follows_any_storage_of_the_anatomy(
    segmenter, ct, tmp_path_factory, o, spacing, origin
):
    folder = tmp_path_factory.mktemp("case")
    image = sitk.Image(ct)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(folder / "plain.mha"))
    sitk.WriteImage(reoriented(image, o), str(folder / "turned.mha"))
    for name in ("plain", "turned"):
        segment_file(segmenter, folder / f"{name}.mha", folder)
    plain = sitk.ReadImage(str(folder / "plain.nii.gz"))
    turned = sitk.ReadImage(str(folder / "turned.nii.gz"))
    source = sitk.ReadImage(str(folder / "turned.mha"))
    assert turned.GetSize() == source.GetSize()
    assert np.allclose(turned.GetSpacing(), source.GetSpacing(), rtol=1e-6)
    assert np.allclose(turned.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert np.allclose(turned.GetDirection(), source.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(turned), o.undo(sitk.GetArrayFromImage(plain)))
