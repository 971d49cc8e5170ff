"""The image-label fusion discriminator: which of two segmentations fits the image better."""

import torch
from torch import nn

from .blocks import ResidualUnit, he_init


class Discriminator(nn.Module):
    """Image (N x 1 x S^3) and two candidates (N x classes x S^3 probabilities) -> N x 2 logits.

    Logit ``i`` says candidate ``i`` is the better one. Each input has its own stride-2
    residual stem to ``stem`` channels; a shared trunk (stride 2 each) and global max pooling
    turn each into a feature vector; the three vectors of one sample are concatenated (per
    sample: the public code concatenated along the batch axis, mixing samples when N > 1) and a
    linear layer scores them. Works at any input size divisible by 16.
    """

    def __init__(
        self,
        num_classes: int = 13,
        stem: int = 64,
        trunk: tuple[int, ...] = (128, 256, 512),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.image_stem = ResidualUnit(1, stem, stride=2, dropout=dropout)
        self.mask_stems = nn.ModuleList(
            ResidualUnit(num_classes, stem, stride=2, dropout=dropout) for _ in range(2)
        )
        ins = (stem, *trunk[:-1])
        self.trunk = nn.Sequential(
            *(
                ResidualUnit(i, o, stride=2, dropout=dropout)
                for i, o in zip(ins, trunk, strict=True)
            )
        )
        self.pool = nn.AdaptiveMaxPool3d(1)
        self.classifier = nn.Linear(3 * trunk[-1], 2)
        he_init(self)

    def forward(
        self, image: torch.Tensor, candidate0: torch.Tensor, candidate1: torch.Tensor
    ) -> torch.Tensor:
        n = image.shape[0]
        stems = [
            self.image_stem(image),
            self.mask_stems[0](candidate0),
            self.mask_stems[1](candidate1),
        ]
        # One trunk pass over the 3N stem outputs, then regroup as (N, 3 * C) per sample.
        feats = self.pool(self.trunk(torch.cat(stems, dim=0))).flatten(1)
        feats = feats.view(3, n, -1).transpose(0, 1).reshape(n, -1)
        return self.classifier(feats)
