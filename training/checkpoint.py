"""The checkpoint format shared by training and export.

A checkpoint is one stage's network: its spec, the settings that must travel with its weights
into the exported graph, and the weights. Training adds its own keys (optimizer, epoch,
config) beside these; export reads only these.
"""

import dataclasses
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inference.hu import HU_WINDOW
from inference.stage_info import STAGES

from .networks import NetworkSpec, build_network

FORMAT = "flare22-checkpoint/1"
TRAINING_KEYS = ("config", "epoch", "best_dice")  # what python -m training records


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or not in the expected format."""


@dataclass(frozen=True)
class StageSettings:
    """Settings trained with a stage's weights and exported with them."""

    hu_window: tuple[float, float] = HU_WINDOW
    threshold: float = 0.5
    roi_margin_mm: float = 20.0
    min_component_mm3: float = 1000.0

    @classmethod
    def from_dict(cls, values: dict) -> "StageSettings":
        """Settings as a checkpoint stores them (``dataclasses.asdict``: lists for tuples)."""
        return cls(**{**values, "hu_window": tuple(values["hu_window"])})


@dataclass
class StageCheckpoint:
    spec: NetworkSpec
    settings: StageSettings
    state_dict: dict[str, torch.Tensor]
    # How training made it (config, epochs done, best validation Dice); empty if not trained.
    training: dict = dataclasses.field(default_factory=dict)

    @property
    def stage(self) -> str:
        return self.spec.name

    def network(self) -> nn.Module:
        net = build_network(self.spec)
        net.load_state_dict(self.state_dict)
        return net


def save_checkpoint(
    path: Path, net: nn.Module, spec: NetworkSpec, settings: StageSettings, **extra: object
) -> None:
    """Write ``net`` with what export needs, plus any training ``extra`` keys."""
    if spec.name not in STAGES:
        raise ValueError(f"only stage networks {STAGES} have checkpoints, not {spec.name!r}")
    payload = {
        "format": FORMAT,
        "spec": dataclasses.asdict(spec),
        "settings": dataclasses.asdict(settings),
        "model": net.state_dict(),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_payload(path: Path) -> dict:
    """Everything a checkpoint file holds (training's keys too); ``CheckpointError`` naming it
    when unreadable or not a checkpoint."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint ({reason})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    return payload


def load_checkpoint(path: Path) -> StageCheckpoint:
    payload = read_payload(path)
    return StageCheckpoint(
        spec=NetworkSpec.from_dict(payload["spec"]),
        settings=StageSettings.from_dict(payload["settings"]),
        state_dict=payload["model"],
        training={k: payload[k] for k in TRAINING_KEYS if k in payload},
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
