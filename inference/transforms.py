"""The stage graphs' preprocessing and label assignment in numpy, for the engine that runs the
networks alone (``inference.openvino_stage``).

The arithmetic of ``training.transforms``, which the exported graphs wrap around the networks,
done so that memory stays flat in the number of slices:
- ``network_input`` resizes the int16 volume to the network's cube a few slices at a time, so
  no float copy of the whole volume exists;
- ``labels_at_size`` upsamples each organ's logits only inside the box where that organ can
  win a voxel (``organ_box``), a slab of output slices at a time.

Rounding differs from ONNX Runtime's kernels in the last bits: the trilinear resize is done
here one axis at a time, as three 2-tap interpolations, where ONNX Runtime sums 8 taps.
"""

import numpy as np

# Floor of the z-score's denominator, in HU: keeps a constant volume from dividing by zero
# (training.transforms and the graphs take it from here).
MIN_STD_HU = 1e-3
# Slices done at once: by ``network_input``, 16 x 512 x 512 x 4 B = 16 MiB of float input; by
# ``labels_at_size``, the running maximum and each organ's part of 16 output slices.
SLAB = 16
# How far below the threshold an organ's logit on the network grid still counts for its box:
# far above the rounding of a convex combination of 8 logits (about 1e-5 at |logit| = 50).
BOX_MARGIN = 1e-2

Taps = tuple[np.ndarray, np.ndarray, np.ndarray]


def linear_taps(n_in: int, n_out: int) -> Taps:
    """Per output sample of a linear resize from ``n_in`` to ``n_out`` samples: the two source
    indices and the weight of the second. Half-pixel centres, no antialias, clamped at the
    edges: ONNX Resize's ``half_pixel`` and torch's ``align_corners=False``."""
    scale = np.float32(n_in / n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.clip(src, np.float32(0), np.float32(n_in - 1))
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0.astype(np.float32)


def interpolate(a: np.ndarray, axis: int, taps: Taps) -> np.ndarray:
    """``a`` sampled along ``axis`` at ``taps``: ``a[i0] * (1 - w) + a[i1] * w`` (float32)."""
    i0, i1, w = taps
    w = w.reshape([-1 if d == axis else 1 for d in range(a.ndim)])
    out = np.take(a, i0, axis=axis).astype(np.float32, copy=False)
    out *= 1 - w
    out += np.take(a, i1, axis=axis) * w
    return out


def network_input(volume: np.ndarray, size: int, window: tuple[float, float]) -> np.ndarray:
    """int16 ``(z, y, x)`` HU -> the network's ``1 x 1 x size^3`` float32 input: trilinear
    resize, clipped to ``window``, z-scored with the cube's own statistics (as the graphs do).
    In-plane first, ``SLAB`` slices at a time: the largest float array is ``z x size x size``."""
    taps = [linear_taps(n, size) for n in volume.shape]
    planes = np.empty((volume.shape[0], size, size), np.float32)
    for z in range(0, volume.shape[0], SLAB):
        slab = volume[z : z + SLAB].astype(np.float32)
        planes[z : z + SLAB] = interpolate(interpolate(slab, 2, taps[2]), 1, taps[1])
    x = interpolate(planes, 0, taps[0])
    del planes
    np.clip(x, window[0], window[1], out=x)
    x -= _volume_mean(x)
    std = np.sqrt(_volume_mean(np.square(x)))
    x /= np.maximum(std, np.float32(MIN_STD_HU))
    return x[None, None]


def _volume_mean(x: np.ndarray) -> np.ndarray:
    # Along x, then y, then z, as training.transforms.volume_mean: short float sums.
    return x.mean(axis=2, keepdims=True).mean(axis=1, keepdims=True).mean(axis=0, keepdims=True)


def threshold_logit(threshold: float) -> np.float32:
    """The logit at which an organ's sigmoid reaches ``threshold``: the background's level."""
    return np.float32(np.log(threshold / (1.0 - threshold)))


def labels_on_grid(logits: np.ndarray, threshold: float) -> np.ndarray:
    """``K x ...`` organ logits -> uint8 labels 0..K on the same grid: the organ of the largest
    logit where it is above the threshold's logit, else 0; ties keep the lower id."""
    best = np.full(logits.shape[1:], threshold_logit(threshold), np.float32)
    labels = np.zeros(logits.shape[1:], np.uint8)
    for k, channel in enumerate(logits):
        better = channel > best
        np.copyto(best, channel, where=better)
        labels[better] = k + 1
    return labels


def organ_box(logit: np.ndarray, level: float, taps: list[Taps]) -> tuple[slice, ...] | None:
    """The output box outside which this organ's upsampled ``logit`` stays at or below
    ``level``, so cannot win a voxel there; None when it is below everywhere.

    Each upsampled value is a convex combination of the (at most 8) grid values its taps
    name, so it can pass ``level`` only where one of those does: the box holds every output
    sample with a tap inside the grid box of the values above ``level - BOX_MARGIN``.
    """
    above = logit > level - BOX_MARGIN
    if not above.any():
        return None
    box = []
    for axis, (i0, i1, _) in enumerate(taps):
        hits = np.flatnonzero(above.any(axis=tuple(a for a in range(3) if a != axis)))
        # i0 and i1 never decrease: the first sample whose i1 reaches the box, up to the last
        # whose i0 is still in it.
        lo = int(np.searchsorted(i1, hits[0], side="left"))
        hi = int(np.searchsorted(i0, hits[-1], side="right"))
        box.append(slice(lo, hi))
    return tuple(box)


def labels_at_size(logits: np.ndarray, size: tuple[int, int, int], threshold: float) -> np.ndarray:
    """``K x S x S x S`` organ logits -> uint8 labels of ``size``: each organ's logits resized
    trilinearly to ``size`` and assigned as ``labels_on_grid`` does, each only inside its
    ``organ_box`` (outside it, that organ cannot beat the background), ``SLAB`` output slices
    at a time (the running maximum is a slab's, not the whole output's)."""
    level = threshold_logit(threshold)
    taps = [linear_taps(n, m) for n, m in zip(logits.shape[1:], size, strict=True)]
    boxes = [organ_box(logit, level, taps) for logit in logits]
    # Shrinking axes first keeps the intermediate arrays small.
    order = sorted(range(3), key=lambda a: size[a] / logits.shape[1 + a])
    labels = np.zeros(size, np.uint8)
    for z in range(0, size[0], SLAB):
        best = np.full((min(SLAB, size[0] - z), *size[1:]), level, np.float32)
        for k, box in enumerate(boxes):
            if box is None:
                continue
            part = (slice(max(box[0].start, z), min(box[0].stop, z + SLAB)), *box[1:])
            if any(s.start >= s.stop for s in part):
                continue  # not in this slab (or a shrinking resize skips what passes)
            value = _resized_part(logits[k], taps, part, order)
            here = (slice(part[0].start - z, part[0].stop - z), *part[1:])
            better = value > best[here]
            np.copyto(best[here], value, where=better)
            labels[part][better] = k + 1
    return labels


def _resized_part(
    logit: np.ndarray, taps: list[Taps], part: tuple[slice, ...], order
) -> np.ndarray:
    """The output samples ``part`` of ``logit`` resized at ``taps``, read from the grid block
    their taps name, one axis at a time in ``order``."""
    taps = [(i0[s], i1[s], w[s]) for (i0, i1, w), s in zip(taps, part, strict=True)]
    value = logit[tuple(slice(i0[0], i1[-1] + 1) for i0, i1, _ in taps)]
    for axis in order:
        i0, i1, w = taps[axis]
        value = interpolate(value, axis, (i0 - i0[0], i1 - i0[0], w))
    return value
