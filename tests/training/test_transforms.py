import math

import pytest
import torch
import torch.nn.functional as F

from training.transforms import assign_labels, normalize, preprocess, volume_mean


def reference_labels(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """argmax over [background, organs] with a constant background probability."""
    background = torch.full_like(logits[:, :1], math.log(threshold / (1 - threshold)))
    return torch.cat([background, logits], dim=1).argmax(dim=1).to(torch.uint8)


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.8])
def test_labels_are_argmax_with_a_background_channel(threshold):
    torch.manual_seed(0)
    logits = torch.randn(2, 13, 9, 10, 11) * 3
    labels = assign_labels(logits, threshold=threshold)
    assert labels.dtype == torch.uint8
    assert torch.equal(labels, reference_labels(logits, threshold))
    probs = torch.sigmoid(logits)
    assert torch.equal(labels == 0, probs.max(dim=1).values <= threshold)


def test_resized_labels_match_resizing_all_channels_first():
    torch.manual_seed(1)
    logits = torch.randn(1, 13, 8, 12, 12) * 2
    size = (21, 17, 30)
    full = F.interpolate(logits, size=size, mode="trilinear", align_corners=False)
    labels = assign_labels(logits, size)
    assert labels.shape == (1, *size)
    assert torch.equal(labels, reference_labels(full, 0.5))


def test_normalize_gives_zero_mean_unit_std_inside_the_window():
    torch.manual_seed(2)
    hu = torch.randn(2, 1, 20, 30, 40) * 800
    x = normalize(hu, (-325.0, 325.0))
    clipped = hu.clamp(-325, 325)
    assert torch.allclose(
        x * clipped.std(dim=(1, 2, 3, 4), correction=0, keepdim=True)
        + clipped.mean(dim=(1, 2, 3, 4), keepdim=True),
        clipped,
        atol=1e-2,
    )
    assert torch.allclose(x.mean(dim=(1, 2, 3, 4)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x.std(dim=(1, 2, 3, 4), correction=0), torch.ones(2), atol=1e-4)


def test_normalize_of_a_constant_volume_is_zero_not_nan():
    x = normalize(torch.full((1, 1, 4, 4, 4), 100.0), (-325.0, 325.0))
    assert torch.equal(x, torch.zeros_like(x))


def test_volume_mean_is_the_mean():
    x = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(volume_mean(x), x.mean(dim=(2, 3, 4), keepdim=True))


def test_preprocess_resizes_any_volume_to_the_network_cube():
    hu = torch.randint(-1000, 1000, (1, 1, 37, 80, 64), dtype=torch.int16)
    x = preprocess(hu, 32, (-325.0, 325.0), torch.float16)
    assert x.shape == (1, 1, 32, 32, 32) and x.dtype == torch.float16
