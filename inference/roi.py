"""The fine stage's region of interest, from the coarse stage's labels."""

import math

import numpy as np

from .components import largest_components_box

Box = tuple[slice, slice, slice]

# Air is about -1000 HU and fat -100; anything above this is taken to be the body.
BODY_HU = -500


def grid_box_to_volume(box: Box, grid: tuple[int, ...], shape: tuple[int, ...]) -> Box:
    """A box on a resized grid -> the voxels of the full volume it covers (half-pixel centres)."""
    out = []
    for s, g, n in zip(box, grid, shape, strict=True):
        scale = n / g
        out.append(slice(math.floor(s.start * scale), math.ceil(s.stop * scale)))
    return tuple(out)  # type: ignore[return-value]


def grow_box(
    box: Box, margin_mm: float, spacing_zyx: tuple[float, float, float], shape: tuple[int, ...]
) -> Box:
    """``box`` with ``margin_mm`` added on every side, clamped to the volume."""
    out = []
    for s, sp, n in zip(box, spacing_zyx, shape, strict=True):
        m = math.ceil(margin_mm / sp)
        out.append(slice(max(0, s.start - m), min(n, s.stop + m)))
    return tuple(out)  # type: ignore[return-value]


def body_box(volume: np.ndarray) -> Box | None:
    """Box of the largest connected region above ``BODY_HU`` (the patient), or None."""
    return largest_components_box((volume > BODY_HU).astype(np.uint8))


def fine_region(
    coarse_labels: np.ndarray,
    volume: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    margin_mm: float,
) -> tuple[Box, str]:
    """The crop for the fine stage and where it came from ("organs", "body" or "volume").

    Organs: the union box of each organ's largest coarse component, mapped to the volume, plus
    ``margin_mm``. When the coarse stage finds nothing: the body's box, else the whole volume.
    """
    shape = volume.shape
    box = largest_components_box(coarse_labels)
    if box is not None:
        box = grid_box_to_volume(box, coarse_labels.shape, shape)
        return grow_box(box, margin_mm, spacing_zyx, shape), "organs"
    box = body_box(volume)
    if box is not None and all(s.stop - s.start >= 2 for s in box):
        return box, "body"
    return tuple(slice(0, n) for n in shape), "volume"  # type: ignore[return-value]
