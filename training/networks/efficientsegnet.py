"""Fine stage: EfficientSegNet, which outlines the organs inside the coarse stage's box."""

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvNorm, ConvNormAct, ResidualUnit, anisotropic_unit, conv3d, he_init


def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[2:], mode="trilinear", align_corners=False)


class ContextBlock(nn.Module):
    """Global context at the bottleneck, on a quarter of the channels.

    Pyramid branch: a 3x3x3 conv on x plus 3x3x3 convs on x average-pooled by 2 and by 4, upsampled
    and summed. Strip branch: averages over (y, x), (z, x) and (z, y) -- pooling by (1, N, N),
    (N, 1, N), (N, N, 1) at an N^3 bottleneck -- each followed by a kernel-3 conv along the axis
    it kept, broadcast back and summed. Both are fused with a residual to the reduced input and
    expanded back to ``channels``.
    """

    def __init__(self, channels: int, dropout: float = 0.2) -> None:
        super().__init__()
        inner = channels // 4
        self.reduce = ConvNormAct(channels, inner, 1, dropout=dropout)
        self.pyramid_in = ConvNormAct(inner, inner, 1, dropout=dropout)
        self.pyramid = nn.ModuleList(ConvNorm(inner, inner, 3) for _ in range(3))
        self.pyramid_out = ConvNormAct(inner, inner, 3, dropout=dropout)
        self.strip_in = ConvNormAct(inner, inner, 1, dropout=dropout)
        self.strip = nn.ModuleList(
            ConvNorm(inner, inner, k) for k in ((3, 1, 1), (1, 3, 1), (1, 1, 3))
        )
        self.strip_out = ConvNormAct(inner, inner, 3, dropout=dropout)
        self.fuse = ConvNorm(2 * inner, inner, 1)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.expand = nn.Sequential(
            ConvNormAct(inner, inner, 3, dropout=dropout), conv3d(inner, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.reduce(x)

        p = self.pyramid_in(x0)
        pyramid = self.pyramid[0](p)
        for conv, k in zip(self.pyramid[1:], (2, 4), strict=True):
            # Cap the pool so a small test-size bottleneck keeps >= 2 voxels per axis.
            k = max(1, min(k, min(p.shape[2:]) // 2))
            pyramid = pyramid + _upsample_to(conv(F.avg_pool3d(p, k)), p)
        pyramid = self.pyramid_out(pyramid)

        s = self.strip_in(x0)
        along_z, along_y, along_x = self.strip
        # Adding the three strips broadcasts each back over the axes it averaged.
        strip = (
            along_z(s.mean(dim=(3, 4), keepdim=True))
            + along_y(s.mean(dim=(2, 4), keepdim=True))
            + along_x(s.mean(dim=(2, 3), keepdim=True))
        )
        strip = self.strip_out(strip)

        return self.expand(self.act(x0 + self.fuse(torch.cat([pyramid, strip], dim=1))))


class EfficientSegNet(nn.Module):
    """1 x 1 x S x S x S float (normalised CT crop) -> 1 x classes x S x S x S logits.

    Encoder: five stages of two residual units of 3x3x3 convs; every stage after the first
    halves the resolution with a stride-2 first conv. A context block at the bottleneck. Decoder:
    1x1x1 conv to the next channel count, trilinear x2, add the skip, one anisotropic unit.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 64, 128, 256),
        num_classes: int = 13,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        ins = (1, *channels[:-1])
        self.encoder = nn.ModuleList(
            nn.Sequential(
                ResidualUnit(i, o, stride=1 if n == 0 else 2, dropout=dropout),
                ResidualUnit(o, o, dropout=dropout),
            )
            for n, (i, o) in enumerate(zip(ins, channels, strict=True))
        )
        self.context = ContextBlock(channels[-1], dropout=dropout)
        self.reduce = nn.ModuleList(
            ConvNormAct(deep, skip, 1, dropout=dropout)
            for skip, deep in itertools.pairwise(channels)
        )
        self.decoder = nn.ModuleList(anisotropic_unit(c, dropout) for c in channels[:-1])
        self.head = conv3d(channels[0], num_classes, 1)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.context(skips.pop())
        for reduce, block in zip(reversed(self.reduce), reversed(self.decoder), strict=True):
            skip = skips.pop()
            x = block(_upsample_to(reduce(x), skip) + skip)
        return self.head(x)
