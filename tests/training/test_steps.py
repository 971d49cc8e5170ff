"""The losses, the augmentation and the discriminator step, at toy sizes on the CPU."""

import pytest
import torch
from torch import nn

from training.augment import augment
from training.config import TrainConfig
from training.losses import one_hot, soft_dice_loss
from training.networks import build_network, network_spec
from training.steps import Trainer, discriminator_step, judge, poison, supervised_step

S = 32


def test_soft_dice_is_zero_for_a_match_and_one_for_disjoint_masks():
    g = torch.zeros(2, 13, 8, 8, 8)
    g[:, 0, :4] = 1
    assert soft_dice_loss(g, g).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    p = torch.zeros_like(g)
    p[:, 0, 4:] = 1
    # Organ 1 disjoint: loss 1 in its channel, 0 in the 12 absent ones.
    assert soft_dice_loss(p, g).tolist() == pytest.approx([1 / 13, 1 / 13], abs=1e-6)
    assert one_hot(torch.tensor([[[[0, 1], [13, 2]]]]), 13).shape == (1, 13, 1, 2, 2)


def test_augmentation_is_reproducible_and_keeps_labels_aligned():
    cfg = TrainConfig(organ_offset_prob=1.0, noise_prob=0.0, contrast=0.0, brightness_hu=0.0)
    image = torch.full((2, 16, 16, 16), -100.0)
    labels = torch.zeros((2, 16, 16, 16), dtype=torch.uint8)
    image[:, 4:8, 4:8, 4:8], labels[:, 4:8, 4:8, 4:8] = 60.0, 1
    a = augment(image, labels, cfg, torch.Generator().manual_seed(3))
    b = augment(image, labels, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    out, moved = a
    for i in range(2):  # the organ moved with its labels and got one offset throughout
        organ = out[i][moved[i] == 1]
        assert organ.numel() == 64 and torch.all(organ == organ[0])
        assert organ[0] != 60.0
        assert torch.all(out[i][(moved[i] == 0) & (out[i] > -1000)] == -100.0)


def toy_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose two bright boxes are organs 1 and 2, and their one-hot ground truth."""
    x = torch.zeros(n, 1, S, S, S)
    labels = torch.zeros(n, S, S, S, dtype=torch.long)
    for i in range(n):
        for organ, value in ((1, 1.0), (2, 2.0)):
            z, y, xx = torch.randint(2, S - 12, (3,), generator=g).tolist()
            x[i, 0, z : z + 10, y : y + 10, xx : xx + 10] = value
            labels[i, z : z + 10, y : y + 10, xx : xx + 10] = organ
    return x, one_hot(labels, 13)


class SpeckledSegmenter(nn.Module):
    """A generator that finds the organs but speckles them: a plausibly bad prediction.

    Not a shifted one: the discriminator pools each input globally before comparing them
    (the paper's design), so it judges how a mask looks, not how well it is aligned.
    """

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], 13, S, S, S), -3.0)
        for organ, value in ((1, 1.0), (2, 2.0)):
            logits[:, organ - 1] = torch.where(x[:, 0] == value, 3.0, -3.0)
        flip = torch.rand(logits.shape) < 0.1
        return torch.where(flip, -logits, logits) + 0 * self.unused


def test_the_discriminator_learns_ground_truth_from_a_speckled_prediction():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    spec = network_spec("discriminator", input_size=S, channels=(8, 16, 32, 64), dropout=0.0)
    disc = build_network(spec)
    cfg = TrainConfig()  # mask poisoning on, at its default std
    gen = SpeckledSegmenter()
    t = Trainer(
        gen,
        torch.optim.SGD(gen.parameters(), 0.0),
        torch.amp.GradScaler(enabled=False),
        disc,
        torch.optim.Adam(disc.parameters(), 1e-3),
        torch.amp.GradScaler(enabled=False),
    )
    for _ in range(120):
        discriminator_step(t, *toy_batch(4, g), cfg, g)
    # Fresh samples, both orders: the (poisoned, as in training) ground truth must win.
    x, truth = toy_batch(16, g)
    truth = poison(truth, cfg.poison_std, g)
    with torch.no_grad():
        pred = torch.sigmoid(gen(x))
    right = (judge(t, [x], truth, pred)[:, 0] > 0.5).float().mean()
    right_swapped = (judge(t, [x], pred, truth)[:, 1] > 0.5).float().mean()
    assert float(right) >= 0.9 and float(right_swapped) >= 0.9


def test_a_step_with_non_finite_gradients_leaves_the_weights_alone(capsys):
    # What a CPU bf16 run met once: without a gradient scaler nothing skipped the step, and
    # Adam turned every weight into NaN.
    net = nn.Conv3d(1, 2, 3, bias=False)
    t = Trainer(net, torch.optim.Adam(net.parameters()), torch.amp.GradScaler(enabled=False))
    before = net.weight.detach().clone()
    x, target = torch.full((1, 1, 5, 5, 5), float("inf")), torch.zeros(1, 2, 3, 3, 3)
    supervised_step(t, x, target)
    assert torch.equal(net.weight, before)
    assert "update skipped" in capsys.readouterr().err
    supervised_step(t, torch.randn(1, 1, 5, 5, 5), target)  # a finite step still updates
    assert torch.isfinite(net.weight).all() and not torch.equal(net.weight, before)
