"""How the processes of a run share its work: under ``torchrun`` (gloo on CPUs, NCCL on GPUs)
each trains on its shard of every epoch, and every process draws its epoch's randomness from
(seed, epoch, rank) alone, so a resumed run draws what an uninterrupted one would have.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Process:
    """This process's place in the run: its rank among ``world`` processes, its device."""

    rank: int
    world: int
    device: torch.device


@dataclass(frozen=True)
class EpochDraws:
    """One process's randomness for one epoch."""

    order: list[int]  # its shard of the labelled entries, in the order it takes them
    u_order: list[int]  # and of the unlabelled ones
    rng: np.random.Generator  # patches
    cpu: torch.Generator  # augmentation
    dev: torch.Generator  # noise on the device


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch of one process (rank 0's also seeds the shared permutations)."""
    return (seed * 1_000_003 + epoch * 7919 + rank) % 2**63


def shard(permutation: np.ndarray, rank: int, world: int) -> list[int]:
    """Every ``world``-th entry from ``rank`` on: the shards of all ranks are disjoint and
    cover the permutation; where its length is not a multiple of ``world`` it is repeated from
    its start, as ``DistributedSampler`` does, so every rank has as many."""
    return np.resize(permutation, -(-len(permutation) // world) * world)[rank::world].tolist()


def draw_epoch(seed: int, epoch: int, proc: Process, sizes: Sequence[int]) -> EpochDraws:
    """The epoch's shards (of the labelled and the unlabelled sets: ``sizes``) and generators.

    Every process draws the same permutations, from (seed, epoch), and takes its shard. Rank 0
    goes on with that stream for its patches, so that a single process draws what it always
    has (the shipped weights were trained so); the other ranks draw theirs, and every rank its
    augmentation and dropout, from (seed, epoch, rank).
    """
    shared = np.random.default_rng(epoch_seed(seed, epoch))
    order, u_order = (shard(shared.permutation(n), proc.rank, proc.world) for n in sizes)
    own = epoch_seed(seed, epoch, proc.rank)
    torch.manual_seed(own)  # dropout, on every device
    cpu = torch.Generator().manual_seed(own)
    dev = cpu if proc.device.type == "cpu" else torch.Generator(proc.device).manual_seed(own)
    rng = shared if proc.rank == 0 else np.random.default_rng(own)
    return EpochDraws(order, u_order, rng, cpu, dev)


def init_distributed() -> Process:
    """This process from torchrun's environment, or the single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return Process(rank, world, torch.device("cuda", local))
    return Process(rank, world, torch.device("cpu"))
