"""Every setting of a training run, in one frozen dataclass.

Filled from a TOML file (or a run's ``config.json``: ``--config``) and then ``--kebab-case``
flags, written as ``config.json`` beside the run's outputs and embedded in every checkpoint, so
a checkpoint says how it was made and a resumed run can check it continues the same one.
Batch sizes are per process: under ``torchrun`` with N processes the batch is N times larger.
"""

import argparse
import dataclasses
import inspect
import json
import re
import shlex
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path

from inference.hu import HU_WINDOW


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The training CLIs' help: module docstrings as written, each flag's default shown."""


class ConfigError(ValueError):
    """A setting that cannot be used (unknown, of the wrong type, out of range); names it."""


@dataclass(frozen=True)
class TrainConfig:
    stage: str = "coarse"  # "coarse" or "fine"
    cache: str = "build/cache"  # python -m training.prepare --out
    out: str = "build/train"  # checkpoints, logs and config.json go to OUT/STAGE
    # Network size: 0 and () mean the paper's (training.networks.PAPER_SPECS).
    input_size: int = 0  # the network's input cube side (0: the paper's 160 or 192)
    channels: tuple[int, ...] = ()  # the generator's channels per level (): the paper's)
    disc_channels: tuple[int, ...] = ()  # the discriminator's trunk channels (): the paper's)
    # Optimisation (paper, Tables 2-3): Adam with beta2 0.99, lr 1e-3 halved at epoch 200.
    epochs: int = 300  # passes over the labelled set (or of iters_per_epoch iterations)
    iters_per_epoch: int = 0  # 0: one pass over this process's share of the labelled set
    batch_labelled: int = 4  # labelled images per step, per process
    batch_unlabelled: int = 2  # unlabelled images per adversarial step, per process
    lr: float = 1e-3  # the generator's Adam learning rate ...
    lr_halve_epoch: int = 200  # ... halved from this epoch on ("halve"), or
    # "poly": lr x (1 - epoch / epochs)^0.9 each epoch, nnU-Net's decay towards 0 at the end.
    lr_schedule: str = "halve"
    betas: tuple[float, float] = (0.9, 0.99)  # Adam's betas, both networks
    disc_lr: float = 1e-4  # the discriminator's learning rate
    amp: bool = True  # fp16 autocast on a GPU
    cpu_bf16: bool = False  # bf16 autocast on a CPU: ~3x faster on CPUs with AMX
    # Dice alone is the paper's loss; + this x binary cross-entropy (nnU-Net's pairing) gives
    # every voxel a gradient from the first step, which matters when steps are few (CPU runs).
    bce_weight: float = 0.0
    # Random patches of this side instead of the whole cached cube (0: whole). The networks are
    # fully convolutional, so the exported graphs still take the whole cube; a 96^3 patch costs
    # a quarter of a 160^3 step. Each patch side is drawn from side x U[patch_scale] and resized
    # to the patch side (per axis: slice thickness changes too).
    patch_size: int = 0
    patch_scale: tuple[float, float] = (1.0, 1.0)  # patch side x U[lo, hi] cut, then resized
    patch_organ_prob: float = 0.5  # centred on a voxel of a random organ in view, else anywhere
    # In this share of patches the z side is cut at patch_size x U[patch_slab_scale]: a few
    # slices stretched to the patch, as a thin scan (a 20-slice slab) reaches the fine network.
    patch_slab_prob: float = 0.0
    patch_slab_scale: tuple[float, float] = (0.1, 0.5)  # z side x U[lo, hi] in slab patches
    # Augmentation of HU volumes before the window (random shift, contrast and brightness,
    # per-organ HU offset on labelled images, Gaussian noise).
    shift_fraction: float = 0.1  # up to this fraction of the side, per axis
    contrast: float = 0.1  # HU scaled by a factor in [1 - c, 1 + c]
    brightness_hu: float = 30.0  # then shifted by up to this many HU
    organ_offset_hu: float = 200.0  # each organ shifted by U[-o, o) HU ...
    organ_offset_prob: float = 0.5  # ... in this share of labelled samples
    noise_hu: float = 20.0  # Gaussian noise of this std in HU ...
    noise_prob: float = 0.5  # ... in this share of samples
    hu_window: tuple[float, float] = HU_WINDOW  # clipped to before the z-score, as the graphs
    # Spatial augmentation (training.spatial), after the shift and before the intensities: each
    # of rotation, scaling and elastic deformation in this share of samples, all combined into
    # one resampling. Never a flip: left and right organs have their own labels.
    spatial_prob: float = 0.0
    rotate_deg: tuple[float, float] = (15.0, 5.0)  # up to ± this about z (axial plane), y and x
    scale: tuple[float, float] = (0.85, 1.15)  # anatomy scaled by U[lo, hi] along each axis
    elastic_voxels: float = 3.0  # control points moved by up to this many voxels per axis ...
    elastic_points: int = 5  # ... on a grid of this many per axis (a cubic B-spline between)
    # Adversarial semi-supervised learning (training.steps; the paper, section 2.2).
    adversarial: bool = True  # needs unlabelled images in the cache
    warmup_iters: int = 50  # supervised only, at the start ...
    cooldown_iters: int = 50  # ... and at the end
    unlabelled_noise_std: float = 0.2  # the noised copy: + N(0, std) on the normalised image
    poison_std: float = 0.1  # mask poisoning: + N(0, std) on the one-hot ground truth
    pseudo_weight: float = 1.0  # unlabelled loss = this x confidence x Dice to the pseudo label
    # Validation and checkpoints.
    val_fraction: float = 0.2  # of the labelled cases (all crops of a case on one side)
    val_cases: tuple[str, ...] = ()  # explicit validation cases instead of a fraction
    # "PATTERN=N": the training entries of cases whose name matches the shell pattern come N
    # times per epoch, e.g. "patient*=16" gives real cases a share among synthetic ones.
    oversample: tuple[str, ...] = ()
    # Epochs between validations (Dice per organ in val.csv; also after the last epoch). 0: none,
    # e.g. when there are no validation cases and the training set is large.
    val_every: int = 10
    seed: int = 0  # of everything random: initialisation, order, patches, augmentation
    # Start the generator from these weights instead of at random (fine-tuning; a resumed run
    # continues from its own checkpoint): a training checkpoint (.pt) or a stage graph (.onnx).
    init: str = ""
    # Before the first step, refit the head row of any organ it has no positive weight for (so
    # that organ can never win a voxel) on the training cases' whole cubes (training/revive.py).
    revive_dead_organs: bool = False
    log_every: int = 10  # iterations between progress lines

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.stage

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Fields a resumed run may change: how long it runs and how it reports, and where the cache and
# the outputs are (a resume checks the cache's content by its index's sha256 instead).
RESUMABLE_CHANGES = frozenset({"epochs", "val_every", "log_every", "cache", "out"})


def _field_type(f: dataclasses.Field) -> type:
    return typing.get_type_hints(TrainConfig)[f.name]


def _coerce(value: object, kind: type) -> object:
    """A TOML or JSON value as the field's type (lists become tuples)."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        args = typing.get_args(kind)
        item = args[0]
        return tuple(item(v) for v in value)  # type: ignore[union-attr]
    if kind is bool and isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return kind(value)


def from_dict(values: dict) -> TrainConfig:
    """A config from a mapping of field names; ``ConfigError`` naming an unknown name or a
    value of the wrong type."""
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown training settings: {', '.join(unknown)}")
    coerced = {}
    for name, value in values.items():
        try:
            coerced[name] = _coerce(value, _field_type(known[name]))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"setting {name} = {value!r}: {e}") from e
    return TrainConfig(**coerced)


def field_help() -> dict[str, str]:
    """Each field's comment in ``TrainConfig``'s source: the one on its line, else the comment
    block above its group. The comments are the settings' documentation, kept in one place."""
    helps: dict[str, str] = {}
    block: list[str] = []
    after_field = False
    for line in inspect.getsource(TrainConfig).splitlines():
        code, _, comment = line.strip().partition("#")
        if not code and comment:  # a comment line; the first after a field starts a block
            block = [comment.strip()] if after_field else [*block, comment.strip()]
            after_field = False
        elif match := re.match(r"(\w+): ", code):
            helps[match.group(1)] = comment.strip() or " ".join(block)
            after_field = True
    return helps


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One ``--kebab-case`` flag per field, with its comment and default; tuples take several
    values."""
    defaults, helps = TrainConfig().to_dict(), field_help()
    group = p.add_argument_group("settings (also from --config; a flag wins over the file)")
    for f in dataclasses.fields(TrainConfig):
        kind = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        default = defaults[f.name]
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = f"{helps.get(f.name, '')} [{shown}]".replace("%", "%%")
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            group.add_argument(flag, nargs="*", type=item, default=None, help=text)
        else:
            group.add_argument(flag, type=kind, default=None, help=text)


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``--config`` file's values, overridden by the flags given."""
    values: dict = {}
    if getattr(args, "config", None):
        # TOML, or the config.json a run writes (so any run can be replayed from its own).
        with open(args.config, "rb") as f:
            try:
                is_json = str(args.config).endswith(".json")
                values.update(json.load(f) if is_json else tomllib.load(f))
            except ValueError as e:  # TOMLDecodeError, JSONDecodeError
                raise ConfigError(f"{args.config}: {e}") from e
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return from_dict(values)


def differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Names of the fields whose values differ and that a resumed run may not change."""
    da, db = a.to_dict(), b.to_dict()
    return sorted(k for k in da if da[k] != db[k] and k not in RESUMABLE_CHANGES)


def command(config: TrainConfig) -> str:
    """The ``python -m training`` command line that trains with exactly ``config``: one flag
    per setting that differs from the default."""
    words = ["python", "-m", "training"]
    defaults = TrainConfig().to_dict()
    for name, value in config.to_dict().items():
        if value == defaults[name] and name != "stage":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple | list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)  # quoted where a shell would change it ("patient*=16")


def write_json(config: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(config.to_dict(), indent=1) + "\n")


__all__ = [
    "ConfigError",
    "HelpFormatter",
    "TrainConfig",
    "add_arguments",
    "command",
    "differences",
    "from_args",
    "from_dict",
    "write_json",
]
