import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from inference.orientation import Orientation


@pytest.mark.parametrize("axes", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", list(itertools.product([False, True], repeat=3)))
def test_reorienting_with_itk_and_back_is_exact(axes, flips):
    rng = np.random.default_rng(1)
    canonical = rng.integers(-1000, 1000, (4, 5, 6)).astype(np.int16)
    source = Orientation(axes, flips).undo(canonical)  # some scan's storage of that anatomy
    image = sitk.GetImageFromArray(np.ascontiguousarray(source))
    # Give it the direction that storage implies, then let the code recover the orientation.
    d = np.zeros((3, 3))
    o = Orientation(axes, flips)
    for c in range(3):
        src_axis = o.axes[c]  # source array axis -> canonical array axis c
        d[2 - c, 2 - src_axis] = -1.0 if o.flips[c] else 1.0
    image.SetDirection(d.ravel().tolist())
    found = Orientation.from_direction(image.GetDirection())
    assert found == o
    assert np.array_equal(found.apply(sitk.GetArrayFromImage(image)), canonical)
    # ITK's own reorientation agrees with ours.
    itk = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))
    assert np.array_equal(itk, canonical)


def test_oblique_directions_snap_to_the_nearest_axes():
    angle = np.deg2rad(20)
    c, s = np.cos(angle), np.sin(angle)
    rotated = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1, -1, 1])
    o = Orientation.from_direction(tuple(rotated.ravel()))
    assert o.axes == (0, 1, 2) and o.flips == (False, True, False)


def test_spacing_follows_the_axes():
    o = Orientation((2, 0, 1), (False, False, False))
    assert o.spacing((0.5, 0.8, 3.0)) == (0.5, 3.0, 0.8)
