"""``python -m training`` end to end on a tiny synthetic dataset, at 32³ on the CPU."""

import argparse
import csv
import json
import socket
import subprocess
import sys

import pytest
import torch

from export.__main__ import main as export_main
from tests.helpers import ROOT
from tests.training.test_prepare import make_dataset
from training.checkpoint import load_checkpoint
from training.config import add_arguments, command, from_args, from_dict
from training.prepare import main as prepare_main
from training.train import main

TINY = [
    "--input-size",
    "32",
    "--channels",
    "2",
    "4",
    "8",
    "16",
    "32",
    "--disc-channels",
    "4",
    "8",
    "16",
    "32",
    "--val-fraction",
    "0",
    "--log-every",
    "100",
]
QUIET = ["--shift-fraction", "0", "--noise-prob", "0", "--organ-offset-prob", "0"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    dataset = make_dataset(root)
    out = root / "cache"
    sizes = ["--coarse-size", "32", "--fine-size", "32", "--fine-crops", "2"]
    assert prepare_main(["--dataset", str(dataset), "--out", str(out), *sizes]) == 0
    return out


def train(cache, out, *extra: str) -> int:
    return main(["--cache", str(cache), "--out", str(out), *TINY, *extra])


def log_rows(run) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_supervised_iterations_lower_the_loss(cache, tmp_path):
    args = ["--stage", "coarse", "--no-adversarial", "--epochs", "12", "--batch-labelled", "3"]
    assert train(cache, tmp_path, *args, *QUIET, "--lr", "1e-2", "--val-every", "12") == 0
    losses = [float(r["dice_loss"]) for r in log_rows(tmp_path / "coarse")]
    assert len(losses) == 12
    # Organs absent from a case cost ~1 until every voxel of their channel is driven to 0:
    # the loss starts near 1 and falls slowly, but steadily.
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.003
    assert (tmp_path / "coarse" / "best.pt").exists()
    assert (tmp_path / "coarse" / "config.json").exists()


# The CPU recipe's options: patches at random scales (resized to 32^3), Dice + BCE. Without its
# --cpu-bf16: bf16 autocast is not bitwise repeatable on every CPU (the same run twice differed
# on an AVX512-BF16 CPU, one thread or two), so an exact resume can only be asked of fp32.
PATCHES = ["--patch-size", "32", "--patch-scale", "0.75", "1.33", "--bce-weight", "1"]


@pytest.mark.parametrize("extra", [[], PATCHES], ids=["whole", "patches"])
def test_resume_continues_exactly_like_an_uninterrupted_run(cache, tmp_path, extra):
    adversarial = [
        *extra,
        "--stage",
        "fine",
        "--iters-per-epoch",
        "2",
        "--batch-labelled",
        "2",
        "--batch-unlabelled",
        "1",
        "--warmup-iters",
        "1",
        "--cooldown-iters",
        "1",
    ]
    assert train(cache, tmp_path / "a", *adversarial, "--epochs", "4") == 0
    assert train(cache, tmp_path / "b", *adversarial, "--epochs", "4", "--stop-after", "2") == 0
    assert torch.load(tmp_path / "b" / "fine" / "last.pt", weights_only=True)["epoch"] == 2
    assert train(cache, tmp_path / "b", *adversarial, "--epochs", "4", "--resume") == 0
    a = torch.load(tmp_path / "a" / "fine" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "fine" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key in ("model", "discriminator"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    phases = [r["phase"] for r in log_rows(tmp_path / "a" / "fine")]
    assert phases == ["warmup"] + ["adversarial"] * 6 + ["cooldown"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(log_rows(tmp_path / "a" / "fine")) == strip(log_rows(tmp_path / "b" / "fine"))
    # The adversarial steps really ran: the discriminator's loss and the pseudo-label loss.
    row = log_rows(tmp_path / "a" / "fine")[3]
    assert float(row["disc_loss"]) > 0 and 0.5 <= float(row["confidence"]) <= 1


def test_a_run_is_not_overwritten_nor_resumed_with_other_settings(cache, tmp_path, capsys):
    args = ["--stage", "coarse", "--no-adversarial", "--epochs", "1"]
    assert train(cache, tmp_path, *args) == 0
    assert train(cache, tmp_path, *args) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert train(cache, tmp_path, *args, "--resume", "--lr", "0.5") == 2
    assert "other settings (lr)" in capsys.readouterr().err


def test_trained_checkpoints_export_to_stage_graphs(cache, tmp_path):
    for stage in ("coarse", "fine"):
        assert train(cache, tmp_path, "--stage", stage, "--no-adversarial", "--epochs", "1") == 0
    ckpt = [str(tmp_path / s / "last.pt") for s in ("coarse", "fine")]
    assert load_checkpoint(tmp_path / "fine" / "last.pt").spec.input_size == 32
    out = tmp_path / "weights"
    assert export_main(["--checkpoint", *ckpt, "--precision", "fp32", "--out", str(out)]) == 0
    assert (out / "coarse_fp32.onnx").exists() and (out / "fine_fp32.onnx").exists()
    # The manifest says how each stage was trained and on which data.
    manifest = json.loads((out / "manifest.json").read_text())
    coarse = manifest["training"]["coarse"]
    assert coarse["config"]["stage"] == "coarse" and coarse["epoch"] == 1
    assert sorted(coarse["data"]) == ["case_a", "case_b", "case_c", "u1"]
    assert len(coarse["data"]["case_a"]["labels_sha256"]) == 64
    # A run's config.json replays it: the same settings as the checkpoint's.
    replay = from_args(argparse.Namespace(config=tmp_path / "coarse" / "config.json"))
    assert replay == from_dict(coarse["config"])
    assert coarse["command"] == command(replay) and "--no-adversarial" in coarse["command"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_torchrun_on_gloo(cache, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "training",
        "--stage",
        "fine",
        "--cache",
        str(cache),
        "--out",
        str(tmp_path),
        *TINY,
        "--epochs",
        "2",
        "--batch-labelled",
        "1",
        "--batch-unlabelled",
        "1",
        "--warmup-iters",
        "0",
        "--cooldown-iters",
        "0",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr
    state = torch.load(tmp_path / "fine" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and "discriminator" in state
    # 3 cases x 2 crops over 2 processes, batch 1: 3 iterations per epoch, logged by rank 0.
    assert len(log_rows(tmp_path / "fine")) == 2 * 3


@pytest.mark.parametrize(
    "name", ["flare22_coarse", "flare22_fine", "totalsegmentator_coarse", "totalsegmentator_fine"]
)
def test_shipped_configs_parse(name):
    cfg = from_args(argparse.Namespace(config=ROOT / "training" / "configs" / f"{name}.toml"))
    assert cfg.stage == name.split("_")[1]
    iterations = cfg.epochs * cfg.iters_per_epoch
    # Each recipe has an adversarial phase between its supervised warm-up and cool-down.
    assert not iterations or cfg.warmup_iters + cfg.cooldown_iters < iterations


@pytest.mark.parametrize("name", ["flare22_fine", "totalsegmentator_coarse"])
def test_the_recorded_training_command_replays_the_config(name):
    cfg = from_args(argparse.Namespace(config=ROOT / "training" / "configs" / f"{name}.toml"))
    words = command(cfg).split()
    assert words[:3] == ["python", "-m", "training"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args(words[3:])) == cfg
