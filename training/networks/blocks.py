"""Building blocks shared by the three networks.

Every conv is bias-free and followed by InstanceNorm3d (no affine); activations are
LeakyReLU(0.01); Dropout3d acts only in train mode. Kernel sizes are given in the project's
``(z, y, x)`` order (see ``inference.AXES``).
"""

import torch
from torch import nn

Kernel = int | tuple[int, int, int]

LEAKY_SLOPE = 0.01


def _triple(k: Kernel) -> tuple[int, int, int]:
    return (k, k, k) if isinstance(k, int) else k


def conv3d(in_ch: int, out_ch: int, kernel: Kernel = 3, stride: int = 1) -> nn.Conv3d:
    """Bias-free conv with "same" padding (for odd kernels)."""
    k = _triple(kernel)
    return nn.Conv3d(in_ch, out_ch, k, stride=stride, padding=tuple(n // 2 for n in k), bias=False)


class ConvNorm(nn.Sequential):
    """conv -> InstanceNorm."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Kernel = 3, stride: int = 1) -> None:
        super().__init__(conv3d(in_ch, out_ch, kernel, stride), nn.InstanceNorm3d(out_ch))


class ConvNormAct(nn.Sequential):
    """conv -> InstanceNorm -> LeakyReLU -> Dropout3d."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: Kernel = 3, stride: int = 1, dropout: float = 0.2
    ) -> None:
        super().__init__(
            conv3d(in_ch, out_ch, kernel, stride),
            nn.InstanceNorm3d(out_ch),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            nn.Dropout3d(dropout),
        )


class ResidualUnit(nn.Module):
    """Two convs plus a shortcut, then LeakyReLU.

    The shortcut is the identity when shape is kept, else a strided 1x1x1 projection. The first
    conv carries the stride. ``kernels`` lets the decoder use the anisotropic pair.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        kernels: tuple[Kernel, Kernel] = (3, 3),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(in_ch, out_ch, kernels[0], stride, dropout),
            ConvNorm(out_ch, out_ch, kernels[1]),
        )
        keep = stride == 1 and in_ch == out_ch
        self.shortcut = nn.Identity() if keep else ConvNorm(in_ch, out_ch, 1, stride)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


# The paper's anisotropic block: a k x k conv in the axial plane (y, x), then a k conv through
# the slices (z). In (z, y, x) layout that is kernel (1, k, k) then (k, 1, 1). The public code
# applied (3, 3, 1) to (z, y, x) tensors, which spans z and y instead; we follow the paper.
AXIAL_THEN_THROUGH = ((1, 3, 3), (3, 1, 1))


def anisotropic_unit(channels: int, dropout: float = 0.2) -> ResidualUnit:
    """Axial 1x3x3 conv, then through-plane 3x1x1 conv, identity residual."""
    return ResidualUnit(channels, channels, kernels=AXIAL_THEN_THROUGH, dropout=dropout)


def he_init(module: nn.Module) -> None:
    """He-normal init of every conv (the paper's "he" normal initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
