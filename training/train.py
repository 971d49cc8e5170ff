"""``python -m training --stage coarse|fine [--config FILE] [--flags]``: train one stage.

One loop, top to bottom: build the networks, load the cache, then per epoch shuffle, and per
iteration run the discriminator step, the supervised step and the unlabelled step (only the
supervised one during the warm-up and cool-down iterations, or with ``--no-adversarial``).
Every epoch ends with ``OUT/STAGE/last.pt``; validation Dice per organ every ``--val-every``
epochs, ``best.pt`` when it improves. ``--resume`` continues from ``last.pt`` exactly: every
epoch draws its randomness from (seed, epoch, rank) alone, and the checkpoint holds the
optimisers. Under ``torchrun`` each process trains on its share (gloo on CPUs, NCCL on GPUs).
"""

import argparse
import csv
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from inference.organs import NUM_ORGANS

from . import config as configuration
from .augment import augment
from .checkpoint import StageSettings, save_checkpoint
from .config import TrainConfig
from .data import CacheSet, split
from .losses import one_hot
from .networks import NetworkSpec, build_network, network_spec
from .patches import sample_patch
from .steps import Trainer, discriminator_step, supervised_step, unlabelled_step
from .transforms import assign_labels, normalize

LOG_FIELDS = [
    "epoch",
    "step",
    "phase",
    "dice_loss",
    "disc_loss",
    "disc_acc",
    "unl_loss",
    "confidence",
    "lr",
    "seconds",
]


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says what to do."""


def specs(cfg: TrainConfig) -> tuple[NetworkSpec, NetworkSpec]:
    """The generator's and the discriminator's specs, at the configured sizes."""
    over = {"input_size": cfg.input_size} if cfg.input_size else {}
    gen = network_spec(cfg.stage, **over, **({"channels": cfg.channels} if cfg.channels else {}))
    disc_over = {"channels": cfg.disc_channels} if cfg.disc_channels else {}
    return gen, network_spec("discriminator", input_size=gen.input_size, **disc_over)


def seed_epoch(cfg: TrainConfig, epoch: int, rank: int, device: torch.device):
    """Generators for one epoch of one process, from (seed, epoch, rank) only."""
    seed = (cfg.seed * 1_000_003 + epoch * 7919 + rank) % 2**63
    torch.manual_seed(seed)  # dropout, on every device
    cpu = torch.Generator().manual_seed(seed)
    dev = torch.Generator(device=device).manual_seed(seed) if device.type != "cpu" else cpu
    return np.random.default_rng(seed), cpu, dev


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


def phase(cfg: TrainConfig, step: int, total: int, has_unlabelled: bool) -> str:
    if not (cfg.adversarial and has_unlabelled):
        return "supervised"
    if step < cfg.warmup_iters:
        return "warmup"
    return "cooldown" if step >= total - cfg.cooldown_iters else "adversarial"


@torch.no_grad()
def validate(
    net: torch.nn.Module, data: CacheSet, indices, cfg, device, autocast=None
) -> list[float]:
    """Dice per organ over ``indices`` at the network's resolution (NaN: absent everywhere)."""
    net.eval()
    autocast = autocast or nullcontext()
    hits = np.zeros(NUM_ORGANS)
    sizes = np.zeros(NUM_ORGANS)
    for i in indices:
        image, labels = batch(data, [i])
        with autocast:
            logits = net(network_input(image, cfg, device)).float()
        pred = assign_labels(logits, None, 0.5).cpu()
        for k in range(1, NUM_ORGANS + 1):
            p, g = pred == k, labels == k
            hits[k - 1] += 2 * (p & g).sum().item()
            sizes[k - 1] += p.sum().item() + g.sum().item()
    return [h / s if s else math.nan for h, s in zip(hits, sizes, strict=True)]


def resume_state(cfg: TrainConfig, resume: bool) -> dict | None:
    """The state of ``last.pt`` to continue from; None to start afresh."""
    path = cfg.run_dir / "last.pt"
    if not path.exists():
        return None
    if not resume:
        raise TrainingError(f"{path} exists: pass --resume to continue it, or another --out")
    state = torch.load(path, map_location="cpu", weights_only=True)
    changed = configuration.differences(configuration.from_dict(state["config"]), cfg)
    if changed:
        raise TrainingError(f"{path}: was trained with other settings ({', '.join(changed)})")
    return state


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


class Log:
    """Rows to ``log.csv`` and ``val.csv`` (rank 0); a resumed run keeps only earlier epochs."""

    def __init__(self, run_dir: Path, resume_epoch: int, active: bool) -> None:
        self.active = active
        self.path, self.val_path = run_dir / "log.csv", run_dir / "val.csv"
        if not active:
            return
        organs = [f"dice_{k}" for k in range(1, NUM_ORGANS + 1)]
        self._start(self.path, LOG_FIELDS, lambda r: int(r["epoch"]) < resume_epoch)
        self._start(
            self.val_path,
            ["epoch", "mean_dice", *organs],
            lambda r: int(r["epoch"]) <= resume_epoch,
        )

    @staticmethod
    def _start(path: Path, fields: list[str], keep) -> None:
        rows = []
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if keep(r)]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    def row(self, path: Path, values: dict) -> None:
        if self.active:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=list(values)).writerow(values)


def train(cfg: TrainConfig, resume: bool = False, stop_after: int = 0) -> Path:
    """Run training as configured; returns the run folder.

    ``resume`` continues ``last.pt``; ``stop_after`` > 0 ends this invocation after that many
    epochs (a later ``resume`` goes on as if never stopped: CPU time adds up over runs).
    """
    rank, world, device = init_distributed()
    gen_spec, disc_spec = specs(cfg)
    cache = Path(cfg.cache)
    labelled = CacheSet(cache, cfg.stage, "labelled", size=gen_spec.input_size)
    unlabelled = CacheSet(cache, cfg.stage, "unlabelled")
    if cfg.adversarial and not len(unlabelled):
        raise TrainingError(f"{cfg.cache}: no unlabelled images; pass --no-adversarial")
    val_spec = list(cfg.val_cases) or cfg.val_fraction
    train_cases, val_cases = split(labelled.cases, val_spec, cfg.seed)
    train_set = CacheSet(cache, cfg.stage, "labelled", cases=train_cases)
    # No validation cases (a one-patient dataset): report Dice on the training cases.
    val_set = CacheSet(cache, cfg.stage, "labelled", cases=val_cases) if val_cases else train_set
    val_label = "validation" if val_cases else "training (no validation cases)"

    torch.manual_seed(cfg.seed)  # the He-normal initialisation, the same in every process
    net = build_network(gen_spec).to(device)
    amp = cfg.amp and device.type == "cuda"
    # bf16 has fp32's range: no gradient scaling, so the scalers stay disabled on a CPU.
    cpu_bf16 = cfg.cpu_bf16 and device.type == "cpu"
    autocast = torch.float16 if amp else torch.bfloat16 if cpu_bf16 else None
    t = Trainer(
        net,
        torch.optim.Adam(net.parameters(), cfg.lr, cfg.betas),
        torch.amp.GradScaler(enabled=amp),
        autocast_dtype=autocast,
        bce_weight=cfg.bce_weight,
    )
    if cfg.adversarial:
        t.disc = build_network(disc_spec).to(device)
        t.disc_optimizer = torch.optim.Adam(t.disc.parameters(), cfg.disc_lr, cfg.betas)
        t.disc_scaler = torch.amp.GradScaler(enabled=amp)

    state = resume_state(cfg, resume)
    start_epoch, best = 0, -1.0
    if state:
        net.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scaler.load_state_dict(state["scaler"])
        if t.disc is not None:
            t.disc.load_state_dict(state["discriminator"])
            t.disc_optimizer.load_state_dict(state["disc_optimizer"])
            t.disc_scaler.load_state_dict(state["disc_scaler"])
        start_epoch, best = state["epoch"], state["best_dice"]
    raw_net, raw_disc = t.net, t.disc
    if world > 1:
        t.net = DistributedDataParallel(net)
        if t.disc is not None:
            t.disc = DistributedDataParallel(t.disc)

    per_rank = math.ceil(len(train_set) / world)
    iters = cfg.iters_per_epoch or math.ceil(per_rank / cfg.batch_labelled)
    total = cfg.epochs * iters
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        configuration.write_json(cfg, cfg.run_dir / "config.json")
        print(
            f"{cfg.stage}: {len(train_set)} training and {len(val_set)} {val_label} volumes, "
            f"{len(unlabelled)} unlabelled, {world} process(es) on {device}, "
            f"{iters} iterations x {cfg.epochs} epochs",
            file=sys.stderr,
        )
    log = Log(cfg.run_dir, start_epoch, rank == 0)
    settings = StageSettings(hu_window=cfg.hu_window)

    end_epoch = min(cfg.epochs, start_epoch + stop_after) if stop_after else cfg.epochs
    for epoch in range(start_epoch, end_epoch):
        rng, g_cpu, g_dev = seed_epoch(cfg, epoch, rank, device)
        lr = cfg.lr * (0.5 if epoch >= cfg.lr_halve_epoch else 1.0)
        for group in t.optimizer.param_groups:
            group["lr"] = lr
        order = rng.permutation(len(train_set))[rank::world].tolist()
        u_order = rng.permutation(len(unlabelled))[rank::world].tolist()
        for it in range(iters):
            step, started = epoch * iters + it, time.perf_counter()
            take = [
                order[(it * cfg.batch_labelled + j) % len(order)] for j in range(cfg.batch_labelled)
            ]
            hu, labels = augment(*batch(train_set, take, cfg, rng), cfg, g_cpu)
            x, target = network_input(hu, cfg, device), one_hot(labels.to(device), NUM_ORGANS)
            row = {"epoch": epoch, "step": step, "phase": phase(cfg, step, total, True)}
            if row["phase"] == "adversarial":
                row["disc_loss"], row["disc_acc"] = discriminator_step(t, x, target, cfg, g_dev)
            row["dice_loss"] = supervised_step(t, x, target)
            if row["phase"] == "adversarial":
                take_u = [
                    u_order[(it * cfg.batch_unlabelled + j) % len(u_order)]
                    for j in range(cfg.batch_unlabelled)
                ]
                u = network_input(
                    augment(batch(unlabelled, take_u, cfg, rng)[0], None, cfg, g_cpu)[0],
                    cfg,
                    device,
                )
                row["unl_loss"], row["confidence"] = unlabelled_step(t, u, cfg, g_dev)
            row.update(lr=lr, seconds=round(time.perf_counter() - started, 3))
            log.row(log.path, {k: row.get(k, "") for k in LOG_FIELDS})
            if rank == 0 and (step % cfg.log_every == 0 or it == iters - 1):
                shown = " ".join(
                    f"{k} {v:.4f}"
                    for k, v in row.items()
                    if isinstance(v, float) and k not in ("lr", "seconds")
                )
                print(
                    f"epoch {epoch} step {step} {row['phase']}: {shown} ({row['seconds']:.2f} s)",
                    file=sys.stderr,
                )

        if rank == 0:
            extra = {"config": cfg.to_dict(), "epoch": epoch + 1, "best_dice": best}
            if device.type == "cuda":  # what the stage needs on a GPU (training.burst reports it)
                extra["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
                dice = validate(raw_net, val_set, range(len(val_set)), cfg, device, t.autocast())
                mean = float(np.nanmean(dice)) if not np.isnan(dice).all() else 0.0
                log.row(
                    log.val_path,
                    {
                        "epoch": epoch + 1,
                        "mean_dice": mean,
                        **{f"dice_{k + 1}": d for k, d in enumerate(dice)},
                    },
                )
                print(f"epoch {epoch + 1}: {val_label} Dice {mean:.4f}", file=sys.stderr)
                if mean > best:
                    best = extra["best_dice"] = mean
                    save_checkpoint(cfg.run_dir / "best.pt", raw_net, gen_spec, settings, **extra)
            extra.update(optimizer=t.optimizer.state_dict(), scaler=t.scaler.state_dict())
            if raw_disc is not None:
                extra.update(
                    discriminator=raw_disc.state_dict(),
                    disc_spec=disc_spec.to_json(),
                    disc_optimizer=t.disc_optimizer.state_dict(),
                    disc_scaler=t.disc_scaler.state_dict(),
                )
            save_checkpoint(cfg.run_dir / "last.pt", raw_net, gen_spec, settings, **extra)
        if world > 1:
            dist.barrier()
    if world > 1:
        dist.destroy_process_group()
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
        if cfg.stage not in ("coarse", "fine"):
            raise ValueError(f"--stage must be coarse or fine, not {cfg.stage!r}")
        train(cfg, args.resume, args.stop_after)
    except (TrainingError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
