"""``python -m training --stage coarse|fine [--config FILE] [--flags]``: train one stage.

One loop, top to bottom: build the networks, load the cache, then per epoch shuffle, and per
iteration run the discriminator step, the supervised step and the unlabelled step (only the
supervised one during the warm-up and cool-down iterations, or with ``--no-adversarial``).
Every epoch ends with ``OUT/STAGE/last.pt``; validation Dice per organ every ``--val-every``
epochs, ``best.pt`` when it improves. ``--resume`` continues from ``last.pt`` as if the run had
never stopped: every epoch draws its randomness from (seed, epoch, rank) alone, and the
checkpoint holds the optimisers (bit for bit in fp32 on CPUs; on GPUs only where cuDNN and
torch are made deterministic, which this does not do). It refuses other settings, another
number of processes and a changed cache (``index.json``'s sha256).

Under ``torchrun`` each process trains on its shard (gloo on CPUs, NCCL on GPUs): all draw the
epoch's permutation from (seed, epoch), as PyTorch's ``DistributedSampler`` does, and each
takes every N-th entry from its rank on; patches and augmentation come from each process's own
generators. Rank 0 logs to ``log.csv``, rank R > 0 to ``log.rankR.csv``.
"""

import argparse
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from inference.organs import LABEL_NAMES, NUM_ORGANS
from inference.stage_info import STAGES

from . import config as configuration
from .augment import augment
from .checkpoint import (
    CheckpointError,
    StageSettings,
    load_checkpoint,
    read_payload,
    save_checkpoint,
    sha256_file,
)
from .config import ConfigError, TrainConfig
from .data import INDEX_NAME, CacheError, CacheSet, load_index, oversampling, split
from .distributed import EpochDraws, Process, draw_epoch, init_distributed
from .losses import one_hot
from .networks import NetworkSpec, SpecError, build_network, network_spec
from .patches import sample_patch
from .revive import dead_organs, revive_dead_organs
from .runlog import LOG_FIELDS, Log
from .steps import Trainer, discriminator_step, supervised_step, unlabelled_step
from .transforms import assign_labels, normalize


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says what to do."""


def specs(cfg: TrainConfig) -> tuple[NetworkSpec, NetworkSpec]:
    """The generator's and the discriminator's specs, at the configured sizes."""
    over = {"input_size": cfg.input_size} if cfg.input_size else {}
    gen = network_spec(cfg.stage, **over, **({"channels": cfg.channels} if cfg.channels else {}))
    disc_over = {"channels": cfg.disc_channels} if cfg.disc_channels else {}
    return gen, network_spec("discriminator", input_size=gen.input_size, **disc_over)


def batch(
    data: CacheSet,
    indices: list[int],
    cfg: TrainConfig | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HU images (N x Z x Y x X float) and labels (uint8, or None when unlabelled): whole
    cubes, or random patches when ``cfg.patch_size`` is set (drawn from ``rng``)."""
    items = [data[i] for i in indices]
    if cfg is not None and cfg.patch_size:
        assert rng is not None
        patches = [
            sample_patch(
                im,
                lb,
                cfg.patch_size,
                cfg.patch_scale,
                cfg.patch_organ_prob,
                rng,
                cfg.patch_slab_prob,
                cfg.patch_slab_scale,
            )
            for im, lb in items
        ]
        images = torch.stack([im for im, _ in patches])
        return images, None if items[0][1] is None else torch.stack([lb for _, lb in patches])
    image = torch.from_numpy(np.stack([np.asarray(im, np.float32) for im, _ in items]))
    if items[0][1] is None:
        return image, None
    return image, torch.from_numpy(np.stack([np.asarray(lb) for _, lb in items]))


def network_input(hu: torch.Tensor, cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """Augmented HU -> N x 1 x S^3 network input, windowed and z-scored like the graphs."""
    return normalize(hu[:, None].to(device), cfg.hu_window)


def phase(cfg: TrainConfig, step: int, total: int) -> str:
    if not cfg.adversarial:
        return "supervised"
    if step < cfg.warmup_iters:
        return "warmup"
    return "cooldown" if step >= total - cfg.cooldown_iters else "adversarial"


@torch.no_grad()
def validate(
    net: nn.Module,
    data: CacheSet,
    cfg: TrainConfig,
    device: torch.device,
    threshold: float,
    autocast=None,
) -> list[float]:
    """Dice per organ over ``data`` at the network's resolution, labels assigned at the
    stage's ``threshold`` as its graph will (NaN: absent everywhere)."""
    net.eval()
    autocast = autocast or nullcontext()
    hits = np.zeros(NUM_ORGANS)
    sizes = np.zeros(NUM_ORGANS)
    for i in range(len(data)):
        image, labels = batch(data, [i])
        with autocast:
            logits = net(network_input(image, cfg, device)).float()
        pred = assign_labels(logits, None, threshold).cpu()
        for k in range(1, NUM_ORGANS + 1):
            p, g = pred == k, labels == k
            hits[k - 1] += 2 * (p & g).sum().item()
            sizes[k - 1] += p.sum().item() + g.sum().item()
    return [h / s if s else math.nan for h, s in zip(hits, sizes, strict=True)]


@dataclass(frozen=True)
class Data:
    """The cache's sets this run trains and validates on, and what it records of the cache."""

    train: CacheSet
    val: CacheSet
    val_label: str  # what ``val`` holds, for the messages
    unlabelled: CacheSet
    index_sha256: str  # a resume must find the same cache
    settings: StageSettings  # what the checkpoints carry into the exported graph


def load_data(cfg: TrainConfig, size: int) -> Data:
    """The cache's sets for ``cfg`` (checked to be built for ``size``^3 inputs)."""
    cache = Path(cfg.cache)
    labelled = CacheSet(cache, cfg.stage, "labelled", size=size)
    unlabelled = CacheSet(cache, cfg.stage, "unlabelled")
    if cfg.adversarial and not len(unlabelled):
        raise TrainingError(f"{cfg.cache}: no unlabelled images; pass --no-adversarial")
    val_spec = list(cfg.val_cases) or cfg.val_fraction
    train_cases, val_cases = split(labelled.cases, val_spec, cfg.seed)
    repeat = oversampling(cfg.oversample, train_cases)
    train_set = CacheSet(cache, cfg.stage, "labelled", cases=train_cases, repeat=repeat)
    # No validation cases (a one-patient dataset): report Dice on the training cases.
    val_set = CacheSet(cache, cfg.stage, "labelled", cases=val_cases or train_cases)
    val_label = "validation" if val_cases else "training (no validation cases)"
    # The fine crop margin prepare used: inference must crop as the fine network was taught.
    fine = load_index(cache)["stages"].get("fine") or {}
    margin = fine.get("margin_mm", StageSettings.roi_margin_mm)
    settings = StageSettings(hu_window=cfg.hu_window, roi_margin_mm=margin)
    index_sha256 = sha256_file(cache / INDEX_NAME)
    return Data(train_set, val_set, val_label, unlabelled, index_sha256, settings)


def build_trainer(
    cfg: TrainConfig, gen_spec: NetworkSpec, disc_spec: NetworkSpec, device: torch.device
) -> Trainer:
    """The networks, freshly initialised (the same in every process), and their optimisers."""
    torch.manual_seed(cfg.seed)  # the He-normal initialisation
    net = build_network(gen_spec).to(device)
    amp = cfg.amp and device.type == "cuda"
    # bf16 has fp32's range: no gradient scaling, so the scalers stay disabled on a CPU.
    cpu_bf16 = cfg.cpu_bf16 and device.type == "cpu"
    t = Trainer(
        net,
        torch.optim.Adam(net.parameters(), cfg.lr, cfg.betas),
        torch.amp.GradScaler(enabled=amp),
        autocast_dtype=torch.float16 if amp else torch.bfloat16 if cpu_bf16 else None,
        bce_weight=cfg.bce_weight,
    )
    if cfg.adversarial:
        t.disc = build_network(disc_spec).to(device)
        t.disc_optimizer = torch.optim.Adam(t.disc.parameters(), cfg.disc_lr, cfg.betas)
        t.disc_scaler = torch.amp.GradScaler(enabled=amp)
    return t


def resume_state(cfg: TrainConfig, resume: bool, proc: Process, index_sha256: str) -> dict | None:
    """The state of ``last.pt`` to continue from; None to start afresh. Refused when that run
    had other settings, another number of processes (its shards and batches) or another cache.
    Checkpoints from before the last two were recorded count as one process, cache unknown."""
    path = cfg.run_dir / "last.pt"
    if not path.exists():
        return None
    if not resume:
        raise TrainingError(f"{path} exists: pass --resume to continue it, or another --out")
    state = read_payload(path)
    changed = configuration.differences(configuration.from_dict(state["config"]), cfg)
    if changed:
        raise TrainingError(f"{path}: was trained with other settings ({', '.join(changed)})")
    world = state.get("world_size", 1)
    if world != proc.world:
        raise TrainingError(
            f"{path}: was trained by {world} process(es), not {proc.world}; resume it with as "
            f"many (torchrun --nproc-per-node {world}), or start a new run (another --out)"
        )
    index = Path(cfg.cache) / INDEX_NAME
    recorded = state.get("cache_sha256")
    if recorded is None and proc.rank == 0:
        print(f"warning: {path} does not record its cache; {index} is not checked", file=sys.stderr)
    if recorded is not None and recorded != index_sha256:
        raise TrainingError(
            f"{path}: was trained on another cache ({index} has changed); resume with that "
            "cache, or start a new run (another --out)"
        )
    return state


def initial_weights(path: Path, spec: NetworkSpec) -> dict[str, torch.Tensor]:
    """The generator weights ``--init`` names: a training checkpoint, or a stage graph (the
    shipped weights keep no checkpoint); refused unless they are ``spec``'s network."""
    if not path.is_file():
        raise TrainingError(f"{path}: no such checkpoint or stage graph (--init)")
    if path.suffix == ".onnx":
        from export.check import load_stage  # onnx only when a graph is given

        loaded = load_stage(path)[2]
    else:
        loaded = load_checkpoint(path)
    if loaded.spec != spec:
        raise TrainingError(f"{path}: holds {loaded.spec}, not this run's {spec} (--init)")
    return loaded.state_dict


def revive(net: nn.Module, data: Data, seed: int, rank: int) -> None:
    """``revive_dead_organs`` on the first cached cube of each training case (its whole volume
    for the coarse stage, its ground truth's box for the fine one)."""
    first: dict[str, int] = {}
    for i, case in enumerate(data.train.cases):
        first.setdefault(case, i)
    cubes = [data.train[i] for i in first.values()]
    s = data.settings
    revived = revive_dead_organs(net, cubes, s.hu_window, seed)
    if rank == 0:
        names = ", ".join(LABEL_NAMES[k] for k in revived) or "none"
        print(f"organs whose head row was refit (revive_dead_organs): {names}", file=sys.stderr)
        # The fit has no intercept: for a rare organ on few features it can come out without a
        # positive weight again (a 2-feature test network does).
        still = [LABEL_NAMES[k] for k in dead_organs(net) if k in revived]
        if still:
            print(f"warning: still without a positive weight: {', '.join(still)}", file=sys.stderr)


def restore(t: Trainer, state: dict) -> tuple[int, float]:
    """Load the networks, optimisers and scalers of ``state``; its (epochs done, best Dice)."""
    t.net.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scaler.load_state_dict(state["scaler"])
    if t.disc is not None:
        t.disc.load_state_dict(state["discriminator"])
        t.disc_optimizer.load_state_dict(state["disc_optimizer"])
        t.disc_scaler.load_state_dict(state["disc_scaler"])
    return state["epoch"], state["best_dice"]


@dataclass
class Run:
    """One process's run once set up: what the epochs, validation and saving work with."""

    cfg: TrainConfig
    proc: Process
    data: Data
    t: Trainer  # its networks wrapped for DistributedDataParallel under torchrun
    net: nn.Module  # the generator itself: validated and saved
    disc: nn.Module | None
    gen_spec: NetworkSpec
    disc_spec: NetworkSpec
    iters: int  # per epoch
    log: Log
    best: float  # best mean validation Dice so far


def set_up(cfg: TrainConfig, resume: bool, proc: Process) -> tuple[Run, int]:
    """The run, built and (``resume``) restored; the epoch it starts at."""
    gen_spec, disc_spec = specs(cfg)
    data = load_data(cfg, gen_spec.input_size)
    t = build_trainer(cfg, gen_spec, disc_spec, proc.device)
    state = resume_state(cfg, resume, proc, data.index_sha256)
    if state is None and cfg.init:
        t.net.load_state_dict(initial_weights(Path(cfg.init), gen_spec))
    if state is None and cfg.revive_dead_organs:
        revive(t.net, data, cfg.seed, proc.rank)
    start_epoch, best = restore(t, state) if state else (0, -1.0)
    net, disc = t.net, t.disc
    if proc.world > 1:
        t.net = DistributedDataParallel(net)
        if disc is not None:
            t.disc = DistributedDataParallel(disc)
    per_rank = math.ceil(len(data.train) / proc.world)
    iters = cfg.iters_per_epoch or math.ceil(per_rank / cfg.batch_labelled)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if proc.rank == 0:
        configuration.write_json(cfg, cfg.run_dir / "config.json")
        validated = (
            f"validating on {len(data.val)} other volumes"
            if data.val_label == "validation"
            else "no validation cases, so Dice is reported on the training volumes"
        )
        print(
            f"{cfg.stage} stage: training on {len(data.train)} labelled and "
            f"{len(data.unlabelled)} unlabelled volumes, {validated}; {proc.world} "
            f"process(es) on {proc.device}; {iters} iterations per epoch, epochs "
            f"{start_epoch + 1} to {cfg.epochs}.",
            file=sys.stderr,
        )
    log = Log(cfg.run_dir, start_epoch, proc.rank)
    return Run(cfg, proc, data, t, net, disc, gen_spec, disc_spec, iters, log, best), start_epoch


def take(order: list[int], it: int, size: int) -> list[int]:
    """Batch ``it`` of ``size`` entries of ``order``, wrapping around its end."""
    return [order[(it * size + j) % len(order)] for j in range(size)]


def train_step(run: Run, draws: EpochDraws, it: int, step: int) -> dict:
    """Iteration ``it`` of the epoch: the steps its phase runs; its log row's values."""
    cfg, t, data, device = run.cfg, run.t, run.data, run.proc.device
    entries = take(draws.order, it, cfg.batch_labelled)
    hu, labels = augment(*batch(data.train, entries, cfg, draws.rng), cfg, draws.cpu)
    x, target = network_input(hu, cfg, device), one_hot(labels.to(device), NUM_ORGANS)
    row = {
        "phase": phase(cfg, step, cfg.epochs * run.iters),
        "entries": " ".join(data.train.names[i] for i in entries),
    }
    if row["phase"] == "adversarial":
        row["disc_loss"], row["disc_acc"] = discriminator_step(t, x, target, cfg, draws.dev)
    row["dice_loss"] = supervised_step(t, x, target)
    if row["phase"] == "adversarial":
        u_entries = take(draws.u_order, it, cfg.batch_unlabelled)
        u_hu = batch(data.unlabelled, u_entries, cfg, draws.rng)[0]
        u = network_input(augment(u_hu, None, cfg, draws.cpu)[0], cfg, device)
        row["unl_loss"], row["confidence"] = unlabelled_step(t, u, cfg, draws.dev)
    return row


LR_SCHEDULES = ("halve", "poly")


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The generator's learning rate through ``epoch`` under ``cfg.lr_schedule``."""
    if cfg.lr_schedule == "poly":
        return cfg.lr * (1 - epoch / cfg.epochs) ** 0.9
    return cfg.lr * (0.5 if epoch >= cfg.lr_halve_epoch else 1.0)


def train_epoch(run: Run, epoch: int) -> None:
    """This process's iterations of ``epoch``, each a row of its log."""
    cfg = run.cfg
    draws = draw_epoch(cfg.seed, epoch, run.proc, (len(run.data.train), len(run.data.unlabelled)))
    lr = learning_rate(cfg, epoch)
    for group in run.t.optimizer.param_groups:
        group["lr"] = lr
    for it in range(run.iters):
        step, started = epoch * run.iters + it, time.perf_counter()
        row = {"epoch": epoch, "step": step, **train_step(run, draws, it, step)}
        row.update(lr=lr, seconds=round(time.perf_counter() - started, 3))
        run.log.row(run.log.path, {k: row.get(k, "") for k in LOG_FIELDS})
        if run.proc.rank == 0 and (step % cfg.log_every == 0 or it == run.iters - 1):
            shown = " ".join(
                f"{k} {v:.4f}"
                for k, v in row.items()
                if isinstance(v, float) and k not in ("lr", "seconds")
            )
            print(
                f"epoch {epoch} step {step} {row['phase']}: {shown} ({row['seconds']:.2f} s)",
                file=sys.stderr,
            )


def validation(run: Run, epoch: int) -> float:
    """Validation Dice after ``epoch``, logged and printed; its mean over the organs."""
    data, threshold = run.data, run.data.settings.threshold
    dice = validate(run.net, data.val, run.cfg, run.proc.device, threshold, run.t.autocast())
    mean = float(np.nanmean(dice)) if not np.isnan(dice).all() else 0.0
    values = {"epoch": epoch + 1, "mean_dice": mean}
    run.log.row(run.log.val_path, values | {f"dice_{k + 1}": d for k, d in enumerate(dice)})
    print(f"epoch {epoch + 1}: {data.val_label} Dice {mean:.4f}", file=sys.stderr)
    return mean


def save_epoch(run: Run, epoch: int) -> None:
    """Rank 0, after ``epoch``: validation when due (``best.pt`` when it improves), then
    ``last.pt`` with all a resume needs."""
    cfg, proc = run.cfg, run.proc
    extra = {
        "config": cfg.to_dict(),
        "epoch": epoch + 1,
        "best_dice": run.best,
        "world_size": proc.world,
        "cache_sha256": run.data.index_sha256,
    }
    if proc.device.type == "cuda":  # what the stage needs on a GPU (training.burst reports it)
        extra["cuda_peak_mib"] = torch.cuda.max_memory_allocated(proc.device) / 2**20
    save = (run.net, run.gen_spec, run.data.settings)
    if cfg.val_every and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
        mean = validation(run, epoch)
        if mean > run.best:
            run.best = extra["best_dice"] = mean
            save_checkpoint(cfg.run_dir / "best.pt", *save, **extra)
    t = run.t
    extra.update(optimizer=t.optimizer.state_dict(), scaler=t.scaler.state_dict())
    if run.disc is not None:
        extra.update(
            discriminator=run.disc.state_dict(),
            disc_spec=run.disc_spec.to_json(),
            disc_optimizer=t.disc_optimizer.state_dict(),
            disc_scaler=t.disc_scaler.state_dict(),
        )
    save_checkpoint(cfg.run_dir / "last.pt", *save, **extra)


def train(cfg: TrainConfig, resume: bool = False, stop_after: int = 0) -> Path:
    """Run training as configured; returns the run folder.

    ``resume`` continues ``last.pt``; ``stop_after`` > 0 ends this invocation after that many
    epochs (a later ``resume`` goes on as if never stopped: CPU time adds up over runs).
    """
    proc = init_distributed()
    run, start_epoch = set_up(cfg, resume, proc)
    end_epoch = min(cfg.epochs, start_epoch + stop_after) if stop_after else cfg.epochs
    for epoch in range(start_epoch, end_epoch):
        train_epoch(run, epoch)
        if proc.rank == 0:
            save_epoch(run, epoch)
        if proc.world > 1:
            dist.barrier()
    if proc.world > 1:
        dist.destroy_process_group()
    if proc.rank == 0 and end_epoch < cfg.epochs:
        print(
            f"stopped after epoch {end_epoch} of {cfg.epochs} ({cfg.run_dir / 'last.pt'}); to go "
            "on, run the same command with --resume (and, if you like, --stop-after N again).",
            file=sys.stderr,
        )
    return cfg.run_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML file (or a run's config.json) of settings")
    p.add_argument("--resume", action="store_true", help="continue OUT/STAGE/last.pt")
    p.add_argument("--stop-after", type=int, default=0, metavar="N", help="end after N epochs")
    configuration.add_arguments(p)
    args = p.parse_args(argv)
    try:
        cfg = configuration.from_args(args)
        if cfg.stage not in STAGES:
            raise ConfigError(f"--stage must be coarse or fine, not {cfg.stage!r}")
        if cfg.lr_schedule not in LR_SCHEDULES:
            known = " or ".join(LR_SCHEDULES)
            raise ConfigError(f"--lr-schedule must be {known}, not {cfg.lr_schedule!r}")
        train(cfg, args.resume, args.stop_after)
    except (TrainingError, ConfigError, CacheError, CheckpointError, SpecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)  # anything else is a bug: its traceback shows
        return 2
    return 0
