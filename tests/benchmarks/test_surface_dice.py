"""benchmarks/surface_dice.py: analytic cases and agreement with DeepMind's surface-distance."""

import math
import warnings

import numpy as np
import pytest
import surface_distance as deepmind
from scipy import ndimage

from benchmarks.surface_dice import (
    neighbour_codes,
    normalized_surface_dice,
    surface_dice_at_tolerance,
    surface_distances,
    surfel_area_table,
)
from inference.report import dice

SPACING = (0.8, 1.5, 2.5)


def cube(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, a + n) for a, n in zip(start, size, strict=True))] = True
    return mask


def reference(mask_gt, mask_pred, spacing, tolerance) -> float:
    """DeepMind's compute_surface_distances + compute_surface_dice_at_tolerance."""
    with warnings.catch_warnings():  # it calls the deprecated scipy.ndimage.filters namespace
        warnings.simplefilter("ignore", DeprecationWarning)
        distances = deepmind.compute_surface_distances(mask_gt, mask_pred, spacing)
    return float(deepmind.compute_surface_dice_at_tolerance(distances, tolerance))


def test_identical_masks_score_one():
    mask = cube((20, 20, 20), (3, 4, 5), (9, 7, 6))
    mask[5:8, 5:8, 11:14] = True  # not convex
    assert dice(mask, mask) == 1.0
    assert normalized_surface_dice(mask, mask, SPACING, 0.0) == 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 2])
def test_shifted_cube(axis, shift):
    n = 8
    start = [4, 4, 4]
    gt = cube((20, 20, 20), start, (n, n, n))
    start[axis] += shift
    pred = cube((20, 20, 20), start, (n, n, n))
    assert dice(gt, pred) == (n - shift) / n
    # Every surfel is at most shift * spacing from the other surface, the faces exactly so:
    # the tolerance test is "<=".
    far = shift * SPACING[axis]
    assert normalized_surface_dice(gt, pred, SPACING, far) == 1.0
    assert normalized_surface_dice(gt, pred, SPACING, far * (1 - 1e-9)) < 1.0
    assert normalized_surface_dice(gt, pred, SPACING, 0.0) < 1.0


def test_far_apart_shapes_score_zero():
    gt = cube((40, 20, 20), (2, 5, 5), (6, 6, 6))
    pred = cube((40, 20, 20), (25, 5, 5), (6, 6, 6))
    assert dice(gt, pred) == 0.0
    assert normalized_surface_dice(gt, pred, SPACING, 5.0) == 0.0


def box_area(size, spacing) -> float:
    """Marching-cubes area of a box of voxels: faces between the outer voxel centres, a
    chamfer along each edge and a triangle at each corner."""
    n, s = size, spacing
    faces = 2 * sum((n[a] - 1) * (n[b] - 1) * s[a] * s[b] for a, b in ((1, 2), (0, 2), (0, 1)))
    edges = 4 * sum(
        (n[a] - 1) * s[a] * 0.5 * math.hypot(s[b], s[c])
        for a, b, c in ((0, 1, 2), (1, 0, 2), (2, 0, 1))
    )
    corners = math.sqrt((s[1] * s[2]) ** 2 + (s[0] * s[2]) ** 2 + (s[0] * s[1]) ** 2)
    return faces + edges + corners


def test_box_surface_area_is_exact_in_the_axis_order():
    size = (7, 5, 3)
    mask = cube((12, 12, 12), (2, 3, 1), size)
    area = surface_distances(mask, mask, SPACING).surfel_areas_gt.sum()
    assert area == pytest.approx(box_area(size, SPACING), rel=1e-12)
    # The table is not symmetric under a permutation of the axes: the order matters.
    assert area != pytest.approx(box_area(size, SPACING[::-1]), rel=1e-3)


def test_sphere_area_close_to_four_pi_r_squared():
    """A sphere round in mm, anisotropic in voxels. Marching cubes on a binary mask overestimates
    area (about 9 % at isotropic spacing, 15 % at this anisotropy): the official table's bias."""
    radius = 15.0
    axes = []
    for s in SPACING:
        n = int(2 * radius / s) + 6
        axes.append((np.arange(n) - (n - 1) / 2) * s)
    x, y, z = np.ix_(*axes)
    sphere = x**2 + y**2 + z**2 <= radius**2
    area = surface_distances(sphere, sphere, SPACING).surfel_areas_gt.sum()
    assert 1.0 < area / (4 * math.pi * radius**2) < 1.2
    isotropic = surface_distances(sphere, sphere, (1.0, 1.0, 1.0)).surfel_areas_gt.sum()
    assert isotropic != pytest.approx(area, rel=0.05)  # spacing is used


def test_empty_masks():
    empty = np.zeros((10, 10, 10), bool)
    some = cube((10, 10, 10), (2, 2, 2), (3, 3, 3))
    assert math.isnan(dice(empty, empty))
    assert math.isnan(normalized_surface_dice(empty, empty, SPACING, 2.0))
    assert dice(some, empty) == dice(empty, some) == 0.0
    assert normalized_surface_dice(some, empty, SPACING, 100.0) == 0.0
    assert normalized_surface_dice(empty, some, SPACING, 100.0) == 0.0
    d = surface_distances(some, empty, SPACING)
    assert d.distances_gt_to_pred.size > 0 and np.isinf(d.distances_gt_to_pred).all()
    assert d.surfel_areas_pred.size == 0


def test_object_touching_the_array_border():
    mask = cube((6, 6, 6), (0, 0, 0), (6, 6, 6))
    area = surface_distances(mask, mask, SPACING).surfel_areas_gt.sum()
    assert area == pytest.approx(box_area((6, 6, 6), SPACING), rel=1e-12)


def test_neighbour_codes_equal_the_reference_correlation():
    mask = np.random.default_rng(0).random((9, 7, 5)) > 0.5
    crop = np.zeros((10, 8, 6), np.uint8)
    crop[:-1, :-1, :-1] = mask
    kernel = deepmind.lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    expected = ndimage.correlate(crop, kernel, mode="constant", cval=0)
    np.testing.assert_array_equal(neighbour_codes(mask), expected)


def test_area_table_is_deepminds():
    table = deepmind.lookup_tables.create_table_neighbour_code_to_surface_area(SPACING)
    np.testing.assert_array_equal(surfel_area_table(SPACING), table)


def blob(rng, shape) -> np.ndarray:
    """A random smooth shape, sometimes in several pieces."""
    field = ndimage.gaussian_filter(rng.random(shape), rng.uniform(1.0, 3.0))
    return field > np.quantile(field, rng.uniform(0.5, 0.9))


def random_pairs(count: int):
    rng = np.random.default_rng(2022)
    while count:
        shape = tuple(int(n) for n in rng.integers(20, 41, 3))
        gt = blob(rng, shape)
        # The prediction: a shifted, grown or shrunk copy, or an unrelated blob.
        if rng.random() < 0.7:
            pred = np.roll(gt, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2))
            pred = ndimage.binary_dilation(pred) if rng.random() < 0.5 else pred
        else:
            pred = blob(rng, shape)
        if gt.any() and pred.any():  # the reference calls the removed np.Inf otherwise
            spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, 3))
            yield gt, pred, spacing
            count -= 1


@pytest.mark.parametrize(("gt", "pred", "spacing"), list(random_pairs(24)))
def test_agrees_with_deepmind(gt, pred, spacing):
    ours = surface_distances(gt, pred, spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = deepmind.compute_surface_distances(gt, pred, spacing)
    # The same surfels at the same distances (the reference sorts them; we do not).
    np.testing.assert_array_equal(np.sort(ours.distances_gt_to_pred), ref["distances_gt_to_pred"])
    np.testing.assert_array_equal(np.sort(ours.distances_pred_to_gt), ref["distances_pred_to_gt"])
    for tolerance in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0):
        expected = deepmind.compute_surface_dice_at_tolerance(ref, tolerance)
        assert abs(surface_dice_at_tolerance(ours, tolerance) - expected) <= 1e-9
    assert (
        abs(normalized_surface_dice(gt, pred, spacing, 2.0) - reference(gt, pred, spacing, 2.0))
        <= 1e-9
    )
