"""The three steps of one adversarial semi-supervised iteration (the paper, section 2.2).

1. ``discriminator_step``: the generator's prediction and the (poisoned) ground truth of a
   labelled image, in random order; the discriminator learns which one is the ground truth.
2. ``supervised_step``: the generator learns from labelled images (soft Dice, plus BCE when
   ``bce_weight`` is set).
3. ``unlabelled_step``: an unlabelled image and its Gaussian-noised copy give two predictions;
   the discriminator picks the better; that one, binarised, is the pseudo label of both,
   weighted by the discriminator's confidence.
Each step updates one network only. The discriminator sees probabilities, never logits.
"""

import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .losses import discriminator_loss, soft_dice_loss


@dataclass
class Trainer:
    """The networks, their optimisers and gradient scalers, as the steps need them."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    disc: nn.Module | None = None
    disc_optimizer: torch.optim.Optimizer | None = None
    disc_scaler: torch.amp.GradScaler | None = None
    autocast_dtype: torch.dtype | None = None  # fp16 on a GPU, bf16 on a CPU, None: fp32
    bce_weight: float = 0.0  # supervised loss = Dice + this x binary cross-entropy

    def autocast(self):
        device = next(self.net.parameters()).device.type
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device, dtype=self.autocast_dtype)


def _finite_gradients(optimizer: torch.optim.Optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    return all(bool(torch.isfinite(g).all()) for g in grads if g is not None)


def _update(loss: torch.Tensor, optimizer, scaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if not scaler.is_enabled() and not _finite_gradients(optimizer):
        # fp16's gradient scaler skips a step whose gradients overflowed; fp32 and bf16 have no
        # scaler, and one such step would make every weight NaN through Adam's moments. A CPU
        # bf16 run met one at its 180th step (not repeatable: the same step replayed was finite).
        optimizer.zero_grad(set_to_none=True)
        print("warning: non-finite gradients, update skipped", file=sys.stderr)
        return
    scaler.step(optimizer)
    scaler.update()


def logits(t: Trainer, x: torch.Tensor) -> torch.Tensor:
    """The generator's logits, in fp32."""
    with t.autocast():
        return t.net(x).float()


def probabilities(t: Trainer, x: torch.Tensor) -> torch.Tensor:
    """Sigmoid of the generator's logits, in fp32."""
    return torch.sigmoid(logits(t, x))


def supervised_step(t: Trainer, x: torch.Tensor, target: torch.Tensor) -> float:
    """One generator update on a labelled batch; returns the Dice loss (without the BCE term)."""
    t.net.train()
    z = logits(t, x)
    dice = soft_dice_loss(torch.sigmoid(z), target).mean()
    loss = dice
    if t.bce_weight:
        loss = loss + t.bce_weight * F.binary_cross_entropy_with_logits(z, target)
    _update(loss, t.optimizer, t.scaler)
    return dice.item()


def poison(target: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    """Mask poisoning: noise on the one-hot ground truth, so exact 0/1 values give nothing away."""
    noise = torch.randn(target.shape, generator=g, device=target.device)
    return (target + std * noise).clamp(0.0, 1.0)


def discriminator_step(
    t: Trainer, x: torch.Tensor, target: torch.Tensor, cfg: TrainConfig, g: torch.Generator
) -> tuple[float, float]:
    """One discriminator update; returns (loss, share of samples it judged right)."""
    assert t.disc is not None and t.disc_optimizer is not None and t.disc_scaler is not None
    t.net.eval()  # the prediction as the generator makes it, no dropout
    with torch.no_grad():
        pred = probabilities(t, x)
    truth = poison(target, cfg.poison_std, g)
    # better[i] = which candidate slot holds the ground truth for sample i.
    better = torch.randint(0, 2, (x.shape[0],), generator=g, device=x.device)
    slot1 = better.view(-1, 1, 1, 1, 1).bool()
    cand0, cand1 = torch.where(slot1, pred, truth), torch.where(slot1, truth, pred)
    t.disc.train()
    with t.autocast():
        logits = t.disc(x, cand0, cand1)
    loss = discriminator_loss(logits, better)
    _update(loss, t.disc_optimizer, t.disc_scaler)
    right = (logits.argmax(dim=1) == better).float().mean()
    return loss.item(), right.item()


def judge(t: Trainer, images: list[torch.Tensor], cand0, cand1) -> torch.Tensor:
    """N x 2 probabilities that each candidate is the better, averaged over the images given."""
    assert t.disc is not None
    t.disc.eval()
    with torch.no_grad(), t.autocast():
        votes = [torch.softmax(t.disc(img, cand0, cand1).float(), dim=1) for img in images]
    return torch.stack(votes).mean(dim=0)


def unlabelled_step(
    t: Trainer, u: torch.Tensor, cfg: TrainConfig, g: torch.Generator
) -> tuple[float, float]:
    """One generator update on an unlabelled batch; returns (loss, mean confidence)."""
    noised = u + cfg.unlabelled_noise_std * torch.randn(u.shape, generator=g, device=u.device)
    t.net.train()
    # One forward over both (instance norm keeps samples apart): one forward per backward.
    pred_u, pred_n = probabilities(t, torch.cat([u, noised])).chunk(2)
    # The discriminator sees each image with both candidates ("separately", paper §2.2).
    votes = judge(t, [u, noised], pred_u.detach(), pred_n.detach())
    confidence, winner = votes.max(dim=1)
    best = torch.where(winner.view(-1, 1, 1, 1, 1).bool(), pred_n, pred_u).detach()
    pseudo = (best >= 0.5).float()
    per_sample = (soft_dice_loss(pred_u, pseudo) + soft_dice_loss(pred_n, pseudo)) / 2
    loss = cfg.pseudo_weight * (confidence * per_sample).mean()
    _update(loss, t.optimizer, t.scaler)
    return loss.item(), confidence.mean().item()
