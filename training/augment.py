"""Random augmentation of HU volumes and their labels, before the HU window.

Everything acts on ``N x Z x Y x X`` float HU tensors (and uint8 labels), drawing from one
``torch.Generator`` so a run is reproducible from its seed. The order follows the physics:
geometry first (shift, then rotation, scaling and elastic deformation: ``training.spatial``),
then the organs' own intensity (per-organ HU offset), the scanner's (contrast and brightness)
and noise last.
"""

import torch

from .config import TrainConfig
from .spatial import AIR_HU, spatial


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def shift(
    image: torch.Tensor, labels: torch.Tensor | None, fraction: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Translate each sample by up to ``fraction`` of its side per axis (whole voxels)."""
    if fraction <= 0:
        return image, labels
    image, labels = image.clone(), None if labels is None else labels.clone()
    for i in range(image.shape[0]):
        offsets = [
            int(torch.randint(-int(fraction * n), int(fraction * n) + 1, (1,), generator=g))
            for n in image.shape[1:]
        ]
        image[i] = _translate(image[i], offsets, AIR_HU)
        if labels is not None:
            labels[i] = _translate(labels[i], offsets, 0)
    return image, labels


def _translate(x: torch.Tensor, offsets: list[int], fill: float) -> torch.Tensor:
    out = torch.full_like(x, fill)
    src, dst = [], []
    for d, n in zip(offsets, x.shape, strict=True):
        src.append(slice(max(0, -d), n - max(0, d)))
        dst.append(slice(max(0, d), n - max(0, -d)))
    out[tuple(dst)] = x[tuple(src)]
    return out


def organ_offsets(
    image: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, g: torch.Generator
) -> torch.Tensor:
    """Shift each organ's HU by its own U[-o, o) in a share of samples (public code's trick).

    Teaches the network shape over absolute HU, which varies with contrast phase.
    """
    out = image.clone()
    for i in range(image.shape[0]):
        if float(torch.rand(1, generator=g)) >= cfg.organ_offset_prob:
            continue
        for organ in labels[i].unique().tolist():
            if organ:
                offset = float(_uniform(1, -cfg.organ_offset_hu, cfg.organ_offset_hu, g))
                out[i][labels[i] == organ] += offset
    return out


def intensity(image: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """Contrast about the window's centre, brightness, and Gaussian noise in a share of samples."""
    n = image.shape[0]
    view = (n,) + (1,) * (image.ndim - 1)
    centre = sum(cfg.hu_window) / 2
    scale = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g).view(view)
    offset = _uniform(n, -cfg.brightness_hu, cfg.brightness_hu, g).view(view)
    out = (image - centre) * scale + centre + offset
    noisy = (torch.rand(n, generator=g) < cfg.noise_prob).float().view(view)
    return out + noisy * cfg.noise_hu * torch.randn(image.shape, generator=g)


def augment(
    image: torch.Tensor, labels: torch.Tensor | None, cfg: TrainConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All of the above, and ``spatial`` after the shift, for a labelled (``labels`` given) or
    unlabelled batch."""
    image, labels = shift(image, labels, cfg.shift_fraction, g)
    image, labels = spatial(image, labels, cfg, g)
    if labels is not None:
        image = organ_offsets(image, labels, cfg, g)
    return intensity(image, cfg, g), labels
