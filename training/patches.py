"""Random patches of cached cubes, at random per-axis scales (``--patch-size``).

A patch is cut from the memory-mapped cube (only its voxels are read), then resized to
``size^3``: a cut side longer than ``size`` shrinks the anatomy along that axis, a shorter one
stretches it, as thicker or thinner slices and larger or smaller patients would. Labels are
resized organ by organ (``resize_labels``) so that thin organs survive.
"""

import numpy as np
import torch

from .transforms import resize, resize_labels


def patch_box(
    shape: tuple[int, ...],
    size: int,
    scale: tuple[float, float],
    centre: tuple[int, ...] | None,
    rng: np.random.Generator,
    z_scale: tuple[float, float] | None = None,
) -> tuple[slice, ...]:
    """The slices of one patch: per axis a side of ``size x U[scale]`` (``z_scale`` for the
    first axis when given; within the volume), placed around ``centre`` (anywhere when None)
    and kept inside the volume."""
    box = []
    for axis, n in enumerate(shape):
        low, high = z_scale if axis == 0 and z_scale is not None else scale
        side = int(np.clip(round(size * rng.uniform(low, high)), 1, n))
        if centre is None:
            start = int(rng.integers(0, n - side + 1))
        else:
            start = int(np.clip(centre[axis] - side // 2, 0, n - side))
        box.append(slice(start, start + side))
    return tuple(box)


def organ_centre(labels: np.ndarray, rng: np.random.Generator) -> tuple[int, ...] | None:
    """A random voxel of an organ drawn uniformly among those in view (small organs get as many
    patches as the liver); None when no organ is in view."""
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=2)[1:]
    present = np.flatnonzero(counts) + 1
    if not len(present):
        return None
    organ = rng.choice(present)
    voxels = np.flatnonzero(np.asarray(labels).reshape(-1) == organ)
    return tuple(int(i) for i in np.unravel_index(rng.choice(voxels), labels.shape))


def sample_patch(
    image: np.ndarray,
    labels: np.ndarray | None,
    size: int,
    scale: tuple[float, float],
    organ_prob: float,
    rng: np.random.Generator,
    slab_prob: float = 0.0,
    slab_scale: tuple[float, float] = (1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One ``size^3`` float HU patch (and its uint8 labels, None when unlabelled).

    With probability ``slab_prob`` the z side is cut at ``size x U[slab_scale]`` instead: a
    thin slab stretched through the slices, as a scan of few slices reaches the fine network
    (its crop spans all the slices there are). No draw is made when ``slab_prob`` is 0.
    """
    centre = None
    if labels is not None and rng.random() < organ_prob:
        centre = organ_centre(labels, rng)
    z_scale = slab_scale if slab_prob and rng.random() < slab_prob else None
    box = patch_box(image.shape, size, scale, centre, rng, z_scale)
    cut = torch.from_numpy(np.array(image[box], dtype=np.float32))
    if cut.shape != (size,) * 3:
        cut = resize(cut[None, None], (size,) * 3)[0, 0]
    if labels is None:
        return cut, None
    cut_labels = torch.from_numpy(np.array(labels[box], dtype=np.uint8))
    if cut_labels.shape != (size,) * 3:
        cut_labels = resize_labels(cut_labels, size)
    return cut, cut_labels
