"""Losses of the method: the paper's soft Dice, and the discriminator's cross-entropy."""

import torch
import torch.nn.functional as F

# Keeps an organ absent from both prediction and target at loss 0 instead of 0/0.
DICE_EPS = 1e-5


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``N x Z x Y x X`` labels 0..K -> ``N x K x Z x Y x X`` float masks of organs 1..K."""
    organs = torch.arange(1, num_classes + 1, device=labels.device).view(1, -1, 1, 1, 1)
    return (labels.unsqueeze(1) == organs).float()


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample: mean over organ channels of ``1 - 2 sum(p g) / (sum(p^2) + sum(g^2))``.

    The paper's loss (Tables 2-3). Returns ``N`` values so a caller can weight samples (the
    pseudo-label loss weights each by the discriminator's confidence).
    """
    dims = tuple(range(2, probs.ndim))
    p, g = probs.float(), target.float()
    overlap = (p * g).sum(dims)
    total = (p * p).sum(dims) + (g * g).sum(dims)
    return (1.0 - (2.0 * overlap + DICE_EPS) / (total + DICE_EPS)).mean(dim=1)


def discriminator_loss(logits: torch.Tensor, better: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the discriminator's 2 logits against the index of the better candidate."""
    return F.cross_entropy(logits.float(), better)
