"""Volumetric Dice and the normalized surface Dice (NSD) of two 3D masks, on numpy 2.

NSD is DeepMind's surface-distance method (``compute_surface_distances`` followed by
``compute_surface_dice_at_tolerance``), which the FLARE22 official script uses:

- crop both masks to the bounding box of their union, with one zero voxel after the last
  voxel of each axis (and the correlation's zero boundary before the first);
- the 2x2x2 neighbour code of every voxel corner (``ENCODE_NEIGHBOURHOOD_3D_KERNEL``); corners
  whose code is neither 0 nor 255 are surface elements ("surfels"), whose area in mm^2 comes
  from DeepMind's marching-cubes table ``create_table_neighbour_code_to_surface_area``;
- the distance of each surfel of one mask to the nearest surfel of the other (scipy's
  Euclidean feature transform with ``sampling=spacing``, the distance formula scipy uses);
- NSD = (area of the surfels of each mask within ``tolerance`` mm, ``<=``, of the other
  surface) / (total surfel area of both masks).

Differences from the reference that do not change the values: no sort of the surfels (the
reference's pure-Python ``sorted(zip(...))`` dominates its run time; only sums follow, so the
order changes the result by at most a few ulps of summation), distances only at surfels
instead of a full distance map, neighbour codes by shifted-slice adds instead of
``ndimage.correlate``, and an empty surface gives infinite distances without ``np.Inf`` (which
numpy 2 removed, so the reference crashes there).

Arrays are indexed (x, y, z) with ``spacing`` in mm in the same order; the surfel-area table is
not symmetric under a permutation of the axes, so the order matters (FLARE22 used nibabel's
order, the ITK index order).
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from surface_distance import lookup_tables

Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class SurfaceDistances:
    """Per surfel of each mask: distance (mm) to the other surface and area (mm^2); unsorted."""

    distances_gt_to_pred: np.ndarray
    distances_pred_to_gt: np.ndarray
    surfel_areas_gt: np.ndarray
    surfel_areas_pred: np.ndarray


@lru_cache(maxsize=32)
def _area_table(spacing: Spacing) -> np.ndarray:
    table = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    table.flags.writeable = False  # shared by every call with this spacing
    return table


def surfel_area_table(spacing: Spacing) -> np.ndarray:
    """DeepMind's area (mm^2) of the surface inside a 2x2x2 cell, per neighbour code (256)."""
    # float() keeps the value exactly (float32 zooms widen exactly), so the cache key is stable.
    return _area_table(tuple(float(s) for s in spacing))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box holding every true voxel, or None for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """The 2x2x2 neighbour code at every voxel corner of ``mask``: shape ``mask.shape + 1``.

    Equals the reference's ``ndimage.correlate(crop, ENCODE_NEIGHBOURHOOD_3D_KERNEL,
    mode="constant", cval=0)`` of the mask with one zero voxel appended on each axis: corner
    ``i`` sees voxels ``i - 1`` and ``i`` along every axis, outside voxels being 0.
    """
    kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    padded = np.zeros(tuple(n + 2 for n in mask.shape), np.uint8)
    padded[1:-1, 1:-1, 1:-1] = mask
    codes = np.zeros(tuple(n + 1 for n in mask.shape), np.uint8)
    # Eight shifted views of the padded mask, one per kernel weight: a uint8 sum of distinct
    # powers of two never overflows, and this is several times faster than ndimage.correlate.
    for offset in np.ndindex(*kernel.shape):
        view = tuple(slice(o, o + n) for o, n in zip(offset, codes.shape, strict=True))
        weight = int(kernel[offset])
        codes += padded[view] * np.uint8(weight) if weight != 1 else padded[view]
    return codes


def _surfels(codes: np.ndarray) -> np.ndarray:
    """Mask of the corners on the surface: code neither 0 (outside) nor 255 (inside)."""
    # uint8 wrap-around: 0 -> 255 and 255 -> 254, every other code stays below 254.
    return (codes - np.uint8(1)) < np.uint8(254)


def _distances_to(surfels: np.ndarray, points: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from each flat index in ``points`` to the nearest true voxel of ``surfels``.

    scipy's feature transform gives the nearest surfel; the distance is then computed as
    ``distance_transform_edt`` does (int offset, times spacing, squares summed over axes in
    order, square root), so the values are bitwise those of the reference's distance map.
    """
    if points.size == 0:
        return np.zeros(0)
    if not surfels.any():
        return np.full(points.size, np.inf)  # no surface to reach: never within tolerance
    nearest = ndimage.distance_transform_edt(
        ~surfels, sampling=spacing, return_distances=False, return_indices=True
    )
    coords = np.unravel_index(points, surfels.shape)
    total = np.zeros(points.size)
    for axis, index in enumerate(coords):
        offset = (nearest[axis].reshape(-1)[points] - index).astype(np.float64) * spacing[axis]
        total += offset * offset
    return np.sqrt(total)


def surface_distances(
    mask_gt: np.ndarray, mask_pred: np.ndarray, spacing: Spacing
) -> SurfaceDistances:
    """Surfel distances and areas of two same-shape 3D boolean masks, as the reference.

    An empty mask has no surfels; the other mask's surfels are then infinitely far.
    """
    if mask_gt.shape != mask_pred.shape or mask_gt.ndim != 3 or len(spacing) != 3:
        raise ValueError(
            f"need two 3D masks of one shape and 3 spacings, got "
            f"{mask_gt.shape}, {mask_pred.shape}, {spacing}"
        )
    box = _bounding_box(mask_gt | mask_pred)
    if box is None:
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    table = surfel_area_table(spacing)
    sampling = np.asarray(spacing, dtype=np.float64)
    codes_gt, codes_pred = neighbour_codes(mask_gt[box]), neighbour_codes(mask_pred[box])
    surfels_gt, surfels_pred = _surfels(codes_gt), _surfels(codes_pred)
    # Flat indices in C order: the reference's boolean-mask order of the surfels.
    points_gt, points_pred = np.flatnonzero(surfels_gt), np.flatnonzero(surfels_pred)
    return SurfaceDistances(
        distances_gt_to_pred=_distances_to(surfels_pred, points_gt, sampling),
        distances_pred_to_gt=_distances_to(surfels_gt, points_pred, sampling),
        surfel_areas_gt=table[codes_gt.reshape(-1)[points_gt]],
        surfel_areas_pred=table[codes_pred.reshape(-1)[points_pred]],
    )


def surface_dice_at_tolerance(distances: SurfaceDistances, tolerance_mm: float) -> float:
    """Area of surfels within ``tolerance_mm`` (``<=``) of the other surface over all area.

    NaN when neither mask has a surface (both empty): the reference's 0/0.
    """
    total = float(np.sum(distances.surfel_areas_gt) + np.sum(distances.surfel_areas_pred))
    if total == 0.0:
        return float("nan")
    close_gt = distances.surfel_areas_gt[distances.distances_gt_to_pred <= tolerance_mm]
    close_pred = distances.surfel_areas_pred[distances.distances_pred_to_gt <= tolerance_mm]
    return float((np.sum(close_gt) + np.sum(close_pred)) / total)


def normalized_surface_dice(
    mask_gt: np.ndarray, mask_pred: np.ndarray, spacing: Spacing, tolerance_mm: float
) -> float:
    """NSD of two masks at ``tolerance_mm``: 1 for matching surfaces, 0 if one mask is empty."""
    return surface_dice_at_tolerance(surface_distances(mask_gt, mask_pred, spacing), tolerance_mm)
