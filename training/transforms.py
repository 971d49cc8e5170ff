"""Intensity and size transforms shared by training and the exported stage graphs.

These functions are the one implementation of preprocessing and label assignment: training
calls them on batches, and ``export`` wraps them around the networks inside the ONNX graphs, so
the runtime never repeats them. Tensors are ``N x C x Z x Y x X``.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from inference.transforms import MIN_STD_HU  # the z-score's floor, the graphs' and numpy's


def resize(x: torch.Tensor, size: tuple[int, int, int] | torch.Size) -> torch.Tensor:
    """Trilinear resize of a float volume batch to ``size`` (half-pixel centres, no antialias)."""
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)


def volume_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over (z, y, x) per sample and channel, kept as N x C x 1 x 1 x 1.

    Averaging along x, then y, then z keeps every float sum short (at most one axis long).
    ONNX Runtime's CPU kernels sum a whole reduction in one accumulator: over a 160^3 volume
    that costs 1e-3 of relative accuracy, against about 1e-6 this way.
    """
    return x.mean(dim=4, keepdim=True).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)


def normalize(x: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Clip to the HU window, then z-score each volume with its own mean and std (fp32)."""
    x = x.float().clamp(window[0], window[1])
    centred = x - volume_mean(x)
    std = volume_mean(centred * centred).sqrt().clamp_min(MIN_STD_HU)
    return centred / std


def preprocess(
    hu: torch.Tensor, size: int, window: tuple[float, float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """HU volume batch of any size and dtype -> network input ``N x 1 x size^3`` in ``dtype``.

    The resize runs in ``dtype`` (half the memory on a GPU in fp16); the statistics in fp32.
    """
    x = resize(hu.to(dtype), (size, size, size))
    return normalize(x, window).to(dtype)


def assign_labels(
    logits: torch.Tensor,
    size: tuple[int, int, int] | torch.Size | None = None,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Per-organ logits ``N x K x ...`` -> uint8 labels ``N x ...`` in 0..K, optionally resized.

    Equivalent to an argmax over ``[background, organ 1..K]`` with a background channel of
    constant probability ``threshold``: a voxel gets the organ of its largest sigmoid when that
    is above the threshold, else 0. When ``size`` is given, each organ's logits are upsampled
    trilinearly one channel at a time and folded into a running maximum, so at most two float
    maps of the output size exist at once instead of K.
    """
    n = logits.shape[0]
    out_size = tuple(logits.shape[2:]) if size is None else tuple(size)
    best = logits.new_full((n, 1, *out_size), math.log(threshold / (1.0 - threshold)))
    labels = torch.zeros((n, 1, *out_size), dtype=torch.uint8, device=logits.device)
    for k in range(logits.shape[1]):
        channel = logits[:, k : k + 1]
        if size is not None:
            channel = resize(channel, out_size)
        better = channel > best
        best = torch.where(better, channel, best)
        labels = torch.where(better, k + 1, labels)
    return labels[:, 0]


def resize_labels(
    labels: np.ndarray | torch.Tensor, size: int | tuple[int, int, int] | torch.Size
) -> np.ndarray | torch.Tensor:
    """uint8 ``(z, y, x)`` labels -> labels of ``size`` (an int for a cube), same type as given.

    Each organ's one-hot channel is resized trilinearly, one at a time so that only two float
    maps of the output size exist at once; a voxel gets the organ of the largest resized value
    when that is at least 0.5, else 0. Unlike nearest-neighbour, a thin organ keeps the voxels
    it mostly covers; and label values themselves are never interpolated.
    """
    is_numpy = isinstance(labels, np.ndarray)
    # torch wants writable arrays: a read-only memmap is copied, once.
    src = torch.from_numpy(np.require(labels, requirements=["C", "W"])) if is_numpy else labels
    out_size = (size,) * 3 if isinstance(size, int) else tuple(size)
    best = torch.zeros((1, 1, *out_size), dtype=torch.float32, device=src.device)
    out = torch.zeros((1, 1, *out_size), dtype=torch.uint8, device=src.device)
    # bincount, not unique: unique sorts, 50x slower on a whole CT's labels.
    present = torch.bincount(src.reshape(-1), minlength=256)[1:].nonzero()[:, 0] + 1
    for k in present.tolist():
        channel = resize((src == k).to(torch.float32)[None, None], out_size)
        better = channel > best  # ties keep the lower id
        torch.maximum(best, channel, out=best)
        out.masked_fill_(better, k)
    out = out.masked_fill_(best < 0.5, 0)[0, 0]
    return out.numpy() if is_numpy else out
