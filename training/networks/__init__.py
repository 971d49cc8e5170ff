"""The network registry: the one place where the sizes of the method's networks are fixed.

``NetworkSpec`` holds everything needed to rebuild a network; it is stored in checkpoints and
in the exported ONNX metadata. ``python -m training.networks`` prints parameter counts.
"""

import dataclasses
import json
from dataclasses import dataclass

from torch import nn

from inference.organs import NUM_ORGANS

from .discriminator import Discriminator
from .efficientsegnet import EfficientSegNet
from .unet import CoarseUNet

DEPTH_FACTOR = 16  # four halvings: the input side must be a multiple of this


class SpecError(ValueError):
    """A network asked for that the registry cannot give (unknown name, unusable size)."""


@dataclass(frozen=True)
class NetworkSpec:
    name: str  # "coarse", "fine" or "discriminator"
    input_size: int  # side of the cube the network sees, in voxels
    channels: tuple[int, ...]  # per level; for the discriminator (stem, *trunk)
    num_classes: int = NUM_ORGANS
    dropout: float = 0.2

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, fields: dict) -> "NetworkSpec":
        return cls(**{**fields, "channels": tuple(fields["channels"])})

    @classmethod
    def from_json(cls, text: str) -> "NetworkSpec":
        return cls.from_dict(json.loads(text))


PAPER_SPECS: dict[str, NetworkSpec] = {
    "coarse": NetworkSpec("coarse", 160, (8, 16, 32, 64, 128)),
    "fine": NetworkSpec("fine", 192, (16, 32, 64, 128, 256)),
    "discriminator": NetworkSpec("discriminator", 160, (64, 128, 256, 512)),
}


def network_spec(name: str, **overrides: object) -> NetworkSpec:
    """The paper's spec for ``name``, with any field overridden (tests use small sizes)."""
    if name not in PAPER_SPECS:
        raise SpecError(f"unknown network {name!r}; expected one of {sorted(PAPER_SPECS)}")
    spec = dataclasses.replace(PAPER_SPECS[name], **overrides)
    if spec.input_size % DEPTH_FACTOR:
        raise SpecError(f"input_size {spec.input_size} of {name!r} is not a multiple of 16")
    return spec


def build_network(spec: NetworkSpec) -> nn.Module:
    """A freshly He-initialised network for ``spec``."""
    if spec.name == "coarse":
        return CoarseUNet(spec.channels, spec.num_classes, spec.dropout)
    if spec.name == "fine":
        return EfficientSegNet(spec.channels, spec.num_classes, spec.dropout)
    if spec.name == "discriminator":
        stem, *trunk = spec.channels
        return Discriminator(spec.num_classes, stem, tuple(trunk), spec.dropout)
    raise ValueError(f"unknown network {spec.name!r}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "PAPER_SPECS",
    "CoarseUNet",
    "Discriminator",
    "EfficientSegNet",
    "NetworkSpec",
    "SpecError",
    "build_network",
    "count_parameters",
    "network_spec",
]
