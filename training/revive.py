"""Revive organ channels that can never win a voxel, by refitting their row of the head.

Every conv is bias-free, and the 1x1x1 head reads features that come out of a LeakyReLU (almost
all >= 0). An organ whose head row has gone negative on every feature can then never pass the
threshold: its logit is at most about 0 wherever it is, and training does not get it out,
because the gradient through a negative row only pushes the features down inside the organ,
towards a logit of 0 and no further. The patch-trained coarse network ended that way for the
liver, the largest organ: 8 features for 13 organs, and not one with a positive weight for it;
its liver logit had a median of -0.79 inside the liver and never passed -0.46 (docs/training.md,
"A dead liver channel"). Without the liver the fine crop is the box of the other organs, which
need not hold the whole liver on another body.

``revive_dead_organs`` finds such organs (a head row with no positive weight) and refits each
one's row by L2-regularised logistic regression on the head's inputs over the training cases'
whole cubes (no intercept: the head has none), so the channel can pass the threshold again; the
training that follows shapes the features from there. A criterion on the logits instead (never
above the threshold inside the organ) missed the liver: on one synthetic cube of 17 it passed
in a few voxels.
"""

import numpy as np
import torch
from torch import nn

from .transforms import normalize

# Voxels drawn for the fit, over all cubes; the regularisation keeps the row's weights at the
# size of the others (a few units: an unregularised fit put -77 on one feature).
FIT_VOXELS = 400_000
FIT_L2 = 100.0
NEWTON_STEPS = 30


@torch.no_grad()
def head_inputs(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The features entering ``net.head`` for one normalised ``1 x 1 x S x S x S`` input,
    voxels x channels."""
    seen = {}
    hook = net.head.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    try:
        net(x)
    finally:
        hook.remove()
    return seen["x"][0].flatten(1).T.float().numpy()


def dead_organs(net: nn.Module) -> list[int]:
    """Organs (1-based ids) whose head row has no positive weight."""
    rows = net.head.weight.detach().flatten(1)
    return [int(k) + 1 for k in torch.nonzero(rows.amax(dim=1) <= 0).flatten()]


def refit_row(features: np.ndarray, target: np.ndarray, l2: float = FIT_L2) -> np.ndarray:
    """Weights ``w`` (no intercept) of the logistic regression of ``target`` (0/1 per voxel) on
    ``features``, with ``l2 |w|^2 / 2``, by Newton's method from 0."""
    w = np.zeros(features.shape[1])
    eye = l2 * np.eye(len(w))
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(features @ w)))
        hessian = (features * (p * (1.0 - p))[:, None]).T @ features + eye
        w -= np.linalg.solve(hessian, features.T @ (p - target) + l2 * w)
    return w


def revive_dead_organs(
    net: nn.Module,
    cubes: list[tuple[np.ndarray, np.ndarray]],
    hu_window: tuple[float, float],
    seed: int = 0,
) -> list[int]:
    """Refit the head row of every dead organ (``dead_organs``) present in ``cubes`` (HU image,
    labels at the network's cube); their ids."""
    present = set().union(*(np.unique(labels).tolist() for _, labels in cubes))
    dead = [k for k in dead_organs(net) if k in present]
    if not dead:
        return []
    rng = np.random.default_rng(seed)
    per_cube = FIT_VOXELS // len(cubes)
    was_training = net.training
    net.eval()
    drawn_features, drawn_labels = [], []
    for image, labels in cubes:
        x = normalize(torch.from_numpy(np.asarray(image, np.float32))[None, None], hu_window)
        features, flat = head_inputs(net, x), np.asarray(labels).ravel()
        pick = rng.choice(len(flat), min(per_cube, len(flat)), replace=False)
        drawn_features.append(features[pick].astype(np.float64))
        drawn_labels.append(flat[pick])
    net.train(was_training)
    features, labels = np.concatenate(drawn_features), np.concatenate(drawn_labels)
    weight = net.head.weight
    for k in dead:
        row = refit_row(features, (labels == k).astype(np.float64))
        with torch.no_grad():
            weight[k - 1] = torch.from_numpy(row).to(weight).view_as(weight[k - 1])
    return dead
