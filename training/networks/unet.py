"""Coarse stage: a 5-level residual 3D U-Net that finds the organs in the whole volume."""

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResidualUnit, conv3d, he_init


class CoarseUNet(nn.Module):
    """1 x 1 x S x S x S float (normalised CT) -> 1 x classes x S x S x S logits.

    Encoder levels are residual blocks of four 3x3x3 convs (two residual units, the first with a
    1x1x1 projection shortcut) separated by MaxPool(3, stride 2, pad 1); the decoder upsamples
    x2 trilinearly, concatenates the skip and applies a residual unit of two 3x3x3 convs.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (8, 16, 32, 64, 128),
        num_classes: int = 13,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(3, stride=2, padding=1)
        ins = (1, *channels[:-1])
        self.encoder = nn.ModuleList(
            nn.Sequential(ResidualUnit(i, o, dropout=dropout), ResidualUnit(o, o, dropout=dropout))
            for i, o in zip(ins, channels, strict=True)
        )
        self.decoder = nn.ModuleList(
            ResidualUnit(skip + deep, skip, dropout=dropout)
            for skip, deep in itertools.pairwise(channels)
        )
        self.head = conv3d(channels[0], num_classes, 1)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, level in enumerate(self.encoder):
            x = level(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in reversed(self.decoder):
            skip = skips.pop()
            up = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = block(torch.cat([skip, up], dim=1))
        return self.head(x)
