"""Spatial augmentation: reproducible, exact at identity, never a flip, labels never blended."""

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from tests.training.test_train import cache, log_rows, train  # noqa: F401 (cache: a fixture)
from training.augment import augment
from training.config import (
    TrainConfig,
    add_arguments,
    command,
    differences,
    from_args,
    from_dict,
)
from training.spatial import AIR_HU, affine, draw, phantom, sampling_grid, spatial, warp

# Every transform in every sample, at the default ranges (±15° about z, ±5° about y and x,
# scales 0.85-1.15, a field of up to 3 voxels).
ON = TrainConfig(spatial_prob=1.0)
IDENTITY = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def kidneys(shape=(24, 40, 48)) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1-sample batch: the right kidney (2, 200 HU) in the low-x half, which is the patient's
    right in the canonical orientation (x runs towards the left), the left kidney (13, 100 HU)
    in the high-x half, in soft tissue (0 HU)."""
    labels = torch.zeros((1, *shape), dtype=torch.uint8)
    labels[0, 8:16, 12:28, 6:16] = 2
    labels[0, 8:16, 12:28, 32:42] = 13
    image = torch.zeros(labels.shape)
    image[labels == 2], image[labels == 13] = 200.0, 100.0
    return image, labels


def test_the_same_seed_gives_the_same_batch_and_prob_zero_draws_nothing():
    image, labels = phantom(32)
    image, labels = image.repeat(3, 1, 1, 1), labels.repeat(3, 1, 1, 1)
    cfg = TrainConfig(spatial_prob=0.7)
    a = spatial(image, labels, cfg, torch.Generator().manual_seed(4))
    b = spatial(image, labels, cfg, torch.Generator().manual_seed(4))
    c = spatial(image, labels, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    g = torch.Generator().manual_seed(4)
    state = g.get_state()
    same = spatial(image, labels, TrainConfig(), g)  # spatial_prob 0 is the default
    assert same[0] is image and same[1] is labels  # bitwise: the inputs themselves
    assert torch.equal(g.get_state(), state)  # existing runs draw the same numbers as before
    unlabelled = spatial(image, None, cfg, torch.Generator().manual_seed(4))
    assert unlabelled[1] is None and torch.equal(unlabelled[0], a[0])


@pytest.mark.parametrize("shape", [(16, 16, 16), (12, 20, 28)])
def test_identity_parameters_give_back_the_input(shape):
    image = torch.randn(1, *shape) * 500
    labels = torch.randint(0, 14, (1, *shape), dtype=torch.uint8)
    cfg = TrainConfig(spatial_prob=1.0, rotate_deg=(0.0, 0.0), scale=(1.0, 1.0), elastic_voxels=0)
    out, moved = spatial(image, labels, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, image, atol=1e-2, rtol=0)  # HU
    assert torch.equal(moved, labels)
    # A zero field changes nothing either.
    out, moved = warp(image[0], labels[0], affine(*IDENTITY), torch.zeros(3, 5, 5, 5))
    torch.testing.assert_close(out, image[0], atol=1e-2, rtol=0)
    assert torch.equal(moved, labels[0])


def test_the_affine_part_never_flips():
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        matrix, _ = draw(ON, g)
        det = float(torch.linalg.det(matrix))
        assert det > 0
        assert 0.85**3 - 1e-9 <= det <= 1.15**3 + 1e-9
    # Nor does the field at 96³, the CPU recipe's patch: the whole map's Jacobian determinant
    # (finite differences of the sampling grid, in voxels) is positive everywhere.
    n = 96
    for _ in range(4):
        source = sampling_grid((n, n, n), *draw(ON, g))[0][..., [2, 1, 0]] * n / 2
        corner = source[:-1, :-1, :-1]
        steps = [source[1:, :-1, :-1], source[:-1, 1:, :-1], source[:-1, :-1, 1:]]
        jacobian = torch.stack([step - corner for step in steps], dim=-1)  # d source / d output
        assert float(torch.linalg.det(jacobian).min()) > 0


def test_an_organ_on_the_patients_right_stays_on_the_right():
    image, labels = kidneys()
    g = torch.Generator().manual_seed(1)
    half = labels.shape[-1] // 2
    x = torch.arange(labels.shape[-1])
    for _ in range(12):
        out, moved = spatial(image, labels, ON, g)
        assert (moved == 2).any() and (moved == 13).any()
        assert x.expand_as(moved)[moved == 2].max() < half
        assert x.expand_as(moved)[moved == 13].min() >= half
        assert x.expand_as(out)[out > 150].max() < half  # the image: only the right kidney


def test_labels_take_only_the_input_values():
    labels = torch.zeros((1, 24, 24, 24), dtype=torch.uint8)
    labels[0, 4:20, 4:20, 4:12], labels[0, 4:20, 4:20, 12:20] = 1, 3  # touching: never a 2
    labels[0, 10:12, 10:12, 2:22] = 8  # thin, across both
    image = labels.float() * 50
    g = torch.Generator().manual_seed(2)
    for _ in range(12):
        _, moved = spatial(image, labels, ON, g)
        assert set(moved.unique().tolist()) <= {0, 1, 3, 8}
        assert (moved == 8).any()


def whole_volume_labels(labels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """What ``warp`` does without cropping: every organ's one-hot resampled whole."""
    organs = torch.tensor([k for k in labels.unique().tolist() if k], dtype=torch.uint8)
    shares = F.grid_sample(
        (labels[None] == organs[:, None, None, None]).float()[None], grid, align_corners=False
    )[0]
    best, index = shares.max(dim=0)
    return torch.where(best + shares.sum(dim=0) > 1, organs[index], 0).to(torch.uint8)


def test_organs_resampled_in_their_boxes_match_resampling_the_whole_volume():
    _, labels = phantom(48, seed=3)
    g = torch.Generator().manual_seed(3)
    cfg = TrainConfig(spatial_prob=1.0, scale=(0.7, 1.3), elastic_voxels=6.0)
    for _ in range(5):
        matrix, control = draw(cfg, g)
        _, moved = warp(torch.zeros(labels.shape[1:]), labels[0], matrix, control)
        expected = whole_volume_labels(labels[0], sampling_grid(labels.shape[1:], matrix, control))
        # The crops' coordinates round differently: a tie may break the other way, rarely.
        assert (moved != expected).sum() <= 2


@pytest.mark.parametrize("scales", [(1.1, 0.9, 1.15), (0.85, 0.85, 0.85), (1.15, 1.15, 1.15)])
def test_a_pure_scaling_scales_an_organ_volume_by_the_product_of_the_factors(scales):
    n = 64
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - (n - 1) / 2] * 3, indexing="ij")
    ball = sum((a / r) ** 2 for a, r in zip(axes, (20.0, 15.0, 17.0), strict=True)) <= 1
    labels = ball.to(torch.uint8) * 4
    _, moved = warp(torch.zeros(n, n, n), labels, affine((0.0, 0.0, 0.0), scales))
    ratio = (moved == 4).sum().item() / (labels == 4).sum().item()
    assert ratio == pytest.approx(scales[0] * scales[1] * scales[2], rel=0.015)
    # Through the config: --scale S S with nothing else scales every axis by S.
    cfg = TrainConfig(
        spatial_prob=1.0, rotate_deg=(0.0, 0.0), scale=scales[2:] * 2, elastic_voxels=0.0
    )
    _, moved = spatial(torch.zeros(1, n, n, n), labels[None], cfg, torch.Generator())
    ratio = (moved == 4).sum().item() / (labels == 4).sum().item()
    assert ratio == pytest.approx(scales[2] ** 3, rel=0.015)


def test_what_comes_into_view_from_outside_the_volume_is_air():
    image = torch.full((20, 32, 32), 100.0)
    out, _ = warp(image, None, affine((0.0, 0.0, 0.0), (0.5, 0.5, 0.5)))
    assert torch.all(out[:4] == AIR_HU) and torch.all(out[:, :7] == AIR_HU)
    assert torch.all(out[:, :, -7:] == AIR_HU)
    torch.testing.assert_close(out[8:12, 12:20, 12:20], torch.full((4, 8, 8), 100.0))
    # A rotation in the axial plane brings air into the corners of every slice.
    out, _ = warp(image, None, affine((15.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    assert torch.all(out[:, 0, 0] == AIR_HU) and torch.all(out[:, -1, -1] == AIR_HU)
    assert float(out.min()) >= AIR_HU and float(out.max()) <= 100.0 + 1e-3


def test_augment_with_spatial_options_keeps_shapes_and_moves_labels_with_images():
    image, labels = kidneys()
    image, labels = image.repeat(2, 1, 1, 1), labels.repeat(2, 1, 1, 1)
    quiet = dict(organ_offset_prob=0.0, noise_prob=0.0, contrast=0.0, brightness_hu=0.0)
    cfg = TrainConfig(spatial_prob=1.0, shift_fraction=0.0, **quiet)
    out, moved = augment(image, labels, cfg, torch.Generator().manual_seed(0))
    assert out.shape == image.shape and moved.shape == labels.shape and moved.dtype == torch.uint8
    assert not torch.equal(moved, labels)
    # The image moved with its labels: the right kidney's voxels are mostly its 200 HU.
    assert float(out[moved == 2].median()) == pytest.approx(200.0, abs=1.0)
    out, none = augment(image, None, cfg, torch.Generator().manual_seed(0))
    assert none is None and out.shape == image.shape


def test_the_options_are_flags_checked_on_resume_and_absent_from_old_configs():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = "--spatial-prob 0.5 --rotate-deg 10 3 --scale 0.9 1.1 --elastic-voxels 2"
    cfg = from_args(parser.parse_args([*flags.split(), "--elastic-points", "4"]))
    assert (cfg.spatial_prob, cfg.rotate_deg, cfg.scale) == (0.5, (10.0, 3.0), (0.9, 1.1))
    assert (cfg.elastic_voxels, cfg.elastic_points) == (2.0, 4)
    assert from_args(parser.parse_args(command(cfg).split()[3:])) == cfg
    assert differences(TrainConfig(), cfg) == [
        "elastic_points",
        "elastic_voxels",
        "rotate_deg",
        "scale",
        "spatial_prob",
    ]
    # A checkpoint's config from before these options resumes with their defaults (off).
    new = {"spatial_prob", "rotate_deg", "scale", "elastic_voxels", "elastic_points"}
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in new}
    assert differences(from_dict(old), TrainConfig()) == []


@pytest.mark.parametrize(
    "changes, named",
    [({"scale": (1.2, 0.8)}, "--scale"), ({"rotate_deg": (15.0,)}, "--rotate-deg")],
)
def test_unusable_options_are_errors_that_name_them(changes, named):
    cfg = from_dict({**TrainConfig(spatial_prob=1.0).to_dict(), **changes})
    with pytest.raises(ValueError, match=named):
        spatial(torch.zeros(1, 8, 8, 8), None, cfg, torch.Generator())


def test_a_training_run_with_spatial_augmentation(cache, tmp_path):  # noqa: F811 (the fixture)
    args = ["--stage", "coarse", "--epochs", "1", "--iters-per-epoch", "2", "--spatial-prob", "1"]
    args += ["--batch-labelled", "1", "--batch-unlabelled", "1", "--warmup-iters", "0"]
    assert train(cache, tmp_path, *args, "--cooldown-iters", "0") == 0
    rows = log_rows(tmp_path / "coarse")
    assert [r["phase"] for r in rows] == ["adversarial"] * 2  # labelled and unlabelled batches
    assert json.loads((tmp_path / "coarse" / "config.json").read_text())["spatial_prob"] == 1.0
