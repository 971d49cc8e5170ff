"""training/revive.py: an organ channel that can never win a voxel gets a head row that can."""

import numpy as np
import torch

from training.networks import build_network, network_spec
from training.revive import dead_organs, refit_row, revive_dead_organs

WINDOW = (-325.0, 325.0)


def tiny_coarse() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network(network_spec("coarse", input_size=32, channels=(4, 8, 16, 32, 64)))
    with torch.no_grad():
        net.head.weight[:, 0] = net.head.weight[:, 0].abs() + 0.1  # every row alive ...
        net.head.weight[0] = -net.head.weight[0].abs()  # ... but the liver's
    return net


def test_a_row_without_a_positive_weight_is_dead():
    assert dead_organs(tiny_coarse()) == [1]


def test_refit_row_separates_what_the_features_separate():
    rng = np.random.default_rng(0)
    features = rng.random((2000, 3))
    target = (features[:, 0] > features[:, 1]).astype(np.float64)
    w = refit_row(features, target, l2=1e-3)
    assert ((features @ w > 0) == target.astype(bool)).mean() > 0.97


def test_only_dead_organs_present_in_the_cubes_are_refit():
    net = tiny_coarse()
    before = net.head.weight.detach().clone()
    image = np.full((32, 32, 32), -100, np.int16)
    labels = np.zeros((32, 32, 32), np.uint8)
    image[8:24, 8:24, 8:24], labels[8:24, 8:24, 8:24] = 60, 1  # a bright liver
    assert revive_dead_organs(net, [(image, labels)], WINDOW) == [1]
    after = net.head.weight.detach()
    assert after[0].max() > 0 and torch.equal(after[1:], before[1:])
    # A dead organ nobody labelled is left alone: nothing to fit it on.
    net = tiny_coarse()
    assert revive_dead_organs(net, [(image, np.zeros_like(labels))], WINDOW) == []
    assert torch.equal(net.head.weight.detach(), before)
