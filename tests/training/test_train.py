"""``python -m training`` end to end on a tiny synthetic dataset, at 32³ on the CPU."""

import argparse
import csv
import dataclasses
import itertools
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import training.train
from export.__main__ import main as export_main
from inference.stage_info import StageInfo
from tests.helpers import ROOT
from tests.training.test_prepare import make_dataset
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig, add_arguments, command, from_args, from_dict
from training.data import CacheSet, oversampling, split
from training.distributed import Process, draw_epoch, shard
from training.prepare import main as prepare_main
from training.train import learning_rate, main, validate

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
MARGIN_MM = 30.0  # not prepare's default: the export test sees it reach the graph


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    dataset = make_dataset(root)
    out = root / "cache"
    sizes = ["--coarse-size", "32", "--fine-size", "32", "--fine-crops", "2"]
    margin = ["--margin-mm", str(MARGIN_MM)]
    assert prepare_main(["--dataset", str(dataset), "--out", str(out), *sizes, *margin]) == 0
    return out


def train(cache, out, *extra: str) -> int:
    return main(["--cache", str(cache), "--out", str(out), *TINY, *extra])


def log_rows(run, rank: int = 0) -> list[dict]:
    with open(run / ("log.csv" if rank == 0 else f"log.rank{rank}.csv"), newline="") as f:
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
    # The fine crop margin the cache was prepared with is the one inference will crop with.
    model = onnx.load(out / "fine_fp32.onnx")
    info = StageInfo.from_metadata({p.key: p.value for p in model.metadata_props})
    assert info.roi_margin_mm == MARGIN_MM
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
    assert state["epoch"] == 2 and "discriminator" in state and state["world_size"] == 2
    # 3 cases x 2 crops over 2 processes, batch 1: 3 iterations per epoch, in each log.
    rows = {rank: log_rows(tmp_path / "fine", rank) for rank in (0, 1)}
    assert len(rows[0]) == len(rows[1]) == 2 * 3
    everything = sorted(CacheSet(cache, "fine").names)
    for epoch in ("0", "1"):
        taken = [[r["entries"] for r in rows[k] if r["epoch"] == epoch] for k in (0, 1)]
        assert not set(taken[0]) & set(taken[1])  # each entry once per epoch ...
        assert sorted(taken[0] + taken[1]) == everything  # ... and every one of them


def test_every_process_takes_its_own_shard_of_one_shared_permutation():
    cpu = torch.device("cpu")
    for n, world in [(6, 2), (7, 2), (13, 4), (3, 4), (5, 1)]:
        shards = [draw_epoch(0, 3, Process(r, world, cpu), (n, 2)).order for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # as many for every process
        taken = [i for s in shards for i in s]
        if n % world == 0:
            assert sorted(taken) == list(range(n))  # disjoint, and together the whole set
        else:  # the shortfall repeats the permutation's start, as DistributedSampler does
            assert set(taken) == set(range(n))
    assert shard(np.arange(5), 1, 2) == [1, 3, 0]


def test_a_single_process_draws_what_it_drew_before_the_shards_were_shared():
    # The shipped weights were trained by one process with these draws: keep them bit for bit.
    seed, epoch = 3, 5
    old = np.random.default_rng((seed * 1_000_003 + epoch * 7919) % 2**63)
    draws = draw_epoch(seed, epoch, Process(0, 1, torch.device("cpu")), (6, 4))
    assert draws.order == old.permutation(6).tolist()
    assert draws.u_order == old.permutation(4).tolist()
    assert draws.rng.random() == old.random()


def test_validation_assigns_labels_at_the_stage_threshold(cache):
    data = CacheSet(cache, "coarse")

    class Sure(torch.nn.Module):  # every voxel liver with probability sigmoid(0.5) = 0.62
        def forward(self, x):
            logits = torch.full((x.shape[0], 13, *x.shape[2:]), -9.0)
            logits[:, 0] = 0.5
            return logits

    cfg = TrainConfig()
    at_half = validate(Sure(), data, cfg, torch.device("cpu"), 0.5)
    at_07 = validate(Sure(), data, cfg, torch.device("cpu"), 0.7)
    assert at_half[0] > 0 and at_07[0] == 0


def test_a_resume_refuses_another_process_count_or_cache(cache, tmp_path, capsys):
    own = tmp_path / "cache"
    shutil.copytree(cache, own)
    args = ["--stage", "coarse", "--no-adversarial", "--epochs", "2", "--stop-after", "1"]
    assert train(own, tmp_path, *args) == 0
    # A stopped run says how to go on.
    assert "stopped after epoch 1 of 2" in capsys.readouterr().err
    last = tmp_path / "coarse" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["world_size"] == 1 and len(state["cache_sha256"]) == 64
    capsys.readouterr()

    torch.save({**state, "world_size": 2}, last)
    assert train(own, tmp_path, *args, "--resume") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "trained by 2 process(es), not 1" in line and "--nproc-per-node 2" in line

    torch.save(state, last)
    index = own / "index.json"
    index.write_text(index.read_text() + "\n")
    assert train(own, tmp_path, *args, "--resume") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "trained on another cache" in line and str(index) in line

    # A checkpoint from before both were recorded: one process, and the cache is not checked.
    torch.save({k: v for k, v in state.items() if k not in ("world_size", "cache_sha256")}, last)
    assert train(own, tmp_path, *args, "--resume") == 0
    assert f"{last} does not record its cache" in capsys.readouterr().err
    assert torch.load(last, weights_only=True)["epoch"] == 2


def test_expected_errors_are_one_line_and_bugs_keep_their_traceback(
    cache, tmp_path, capsys, monkeypatch
):
    assert train(cache, tmp_path, "--stage", "coarse", "--input-size", "33") == 2
    assert capsys.readouterr().err.startswith("error: input_size 33")
    assert train(cache, tmp_path, "--stage", "coarse", "--oversample", "nobody=2") == 2
    assert capsys.readouterr().err.startswith("error: oversample 'nobody=2': no training case")
    assert train(cache, tmp_path, "--stage", "coarse", "--lr-schedule", "cosine") == 2
    assert capsys.readouterr().err.startswith("error: --lr-schedule must be halve or poly")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    assert main(["--config", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: ")

    def broken(*args):
        raise ValueError("a bug")

    monkeypatch.setattr(training.train, "set_up", broken)
    with pytest.raises(ValueError, match="a bug"):
        train(cache, tmp_path, "--stage", "coarse")


@pytest.mark.parametrize(
    "name",
    [
        "flare22_coarse",
        "flare22_fine",
        "totalsegmentator_coarse",
        "totalsegmentator_fine",
        "totalsegmentator_coarse_reverse",
        "totalsegmentator_fine_reverse",
    ],
)
def test_shipped_configs_parse(name):
    cfg = from_args(argparse.Namespace(config=ROOT / "training" / "configs" / f"{name}.toml"))
    assert cfg.stage == name.split("_")[1]
    iterations = cfg.epochs * cfg.iters_per_epoch
    # Each recipe has an adversarial phase between its supervised warm-up and cool-down.
    assert not iterations or cfg.warmup_iters + cfg.cooldown_iters < iterations


@pytest.mark.parametrize(
    "name",
    [
        "flare22_fine",
        "totalsegmentator_coarse",
        "synth_fine",
        "totalsegmentator_fine_cubes",
        "totalsegmentator_coarse_cubes",
        "totalsegmentator_coarse_all",
        "totalsegmentator_fine_all",
        "totalsegmentator_fine_reverse",
        "totalsegmentator_coarse_reverse_cubes",
    ],
)
def test_the_recorded_training_command_replays_the_config(name):
    cfg = from_args(argparse.Namespace(config=ROOT / "training" / "configs" / f"{name}.toml"))
    words = shlex.split(command(cfg))
    assert words[:3] == ["python", "-m", "training"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args(words[3:])) == cfg
    # A value a shell would expand is quoted.
    cfg = dataclasses.replace(cfg, oversample=("patient*=16",))
    assert from_args(parser.parse_args(shlex.split(command(cfg))[3:])) == cfg


def test_the_whole_cube_step_goes_on_from_the_patch_recipes_fine_network():
    configs = ROOT / "training" / "configs"
    patches = from_args(argparse.Namespace(config=configs / "totalsegmentator_fine.toml"))
    cubes = from_args(argparse.Namespace(config=configs / "totalsegmentator_fine_cubes.toml"))
    assert cubes.init == str(patches.run_dir / "last.pt") and cubes.cache == patches.cache
    assert cubes.stage == patches.stage and cubes.input_size == patches.input_size
    assert patches.patch_size and not cubes.patch_size  # the whole cube the graph runs on
    assert cubes.run_dir != patches.run_dir  # its own run: the patch checkpoint stays


def test_the_coarse_whole_cube_step_revives_the_patch_recipes_coarse_network():
    configs = ROOT / "training" / "configs"
    patches = from_args(argparse.Namespace(config=configs / "totalsegmentator_coarse.toml"))
    cubes = from_args(argparse.Namespace(config=configs / "totalsegmentator_coarse_cubes.toml"))
    assert cubes.init == str(patches.run_dir / "last.pt") and cubes.stage == patches.stage
    assert cubes.revive_dead_organs and not cubes.patch_size and not cubes.adversarial
    assert cubes.run_dir != patches.run_dir
    fine = from_args(argparse.Namespace(config=configs / "totalsegmentator_fine_cubes.toml"))
    assert cubes.run_dir.parent == fine.run_dir.parent  # make weights exports both from there


@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_the_last_step_on_every_patient_goes_on_from_the_folds_networks(stage):
    configs = ROOT / "training" / "configs"
    fold = from_args(argparse.Namespace(config=configs / f"totalsegmentator_{stage}_cubes.toml"))
    last = from_args(argparse.Namespace(config=configs / f"totalsegmentator_{stage}_all.toml"))
    assert last.init == str(fold.run_dir / "last.pt") and last.stage == fold.stage
    assert last.cache != fold.cache and last.run_dir.parent != fold.run_dir.parent
    assert not last.patch_size and not last.adversarial and not last.revive_dead_organs
    # make weights exports both stages of the last step from one folder.
    other = "fine" if stage == "coarse" else "coarse"
    pair = from_args(argparse.Namespace(config=configs / f"totalsegmentator_{other}_all.toml"))
    assert pair.run_dir.parent == last.run_dir.parent and pair.cache == last.cache


@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_the_reverse_fold_never_trains_on_patient_a(stage):
    configs = ROOT / "training" / "configs"
    patches = from_args(
        argparse.Namespace(config=configs / f"totalsegmentator_{stage}_reverse.toml")
    )
    cubes = from_args(
        argparse.Namespace(config=configs / f"totalsegmentator_{stage}_reverse_cubes.toml")
    )
    every = from_args(argparse.Namespace(config=configs / f"totalsegmentator_{stage}_all.toml"))
    # The cache of every labelled case, patient A in no training sample of either step.
    cases = ["patientA", "patientB"] + [f"synth_{i:03d}" for i in range(16)]
    for cfg in (patches, cubes):
        assert cfg.cache == every.cache
        train_cases, val_cases = split(cases, list(cfg.val_cases) or cfg.val_fraction, cfg.seed)
        assert val_cases == ["patientA"] and not cfg.val_every
        assert "patientA" not in train_cases
        assert oversampling(cfg.oversample, train_cases) == {"patientB": 16}
    assert patches.patch_size and not cubes.patch_size and not cubes.adversarial
    assert cubes.init == str(patches.run_dir / "last.pt") and cubes.stage == patches.stage
    assert cubes.revive_dead_organs == (stage == "coarse")  # as in the other fold
    # Its own folders (make reverse-fold exports both stages of the cube step from one).
    assert patches.run_dir.parent != every.run_dir.parent != cubes.run_dir.parent
    other = "fine" if stage == "coarse" else "coarse"
    pair = from_args(
        argparse.Namespace(config=configs / f"totalsegmentator_{other}_reverse_cubes.toml")
    )
    assert pair.run_dir.parent == cubes.run_dir.parent


@pytest.mark.parametrize(
    ("flags", "change"),
    [
        (["--bce-weight", "0", "--out", "build/ablation_dice_only"], {"bce_weight": 0.0}),
        (["--lr-schedule", "poly", "--out", "build/ablation_poly"], {"lr_schedule": "poly"}),
    ],
)
def test_an_ablation_run_changes_one_setting_of_the_reverse_folds_patch_step(flags, change):
    # The commands of docs/training.md, "Loss and schedule, measured".
    config = ROOT / "training" / "configs" / "totalsegmentator_fine_reverse.toml"
    base = from_args(argparse.Namespace(config=config))
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_arguments(parser)
    cfg = from_args(parser.parse_args(["--config", str(config), *flags]))
    # Its own folder, so the baseline's checkpoint (scored with it) stays.
    assert cfg.run_dir != base.run_dir
    assert dataclasses.replace(cfg, out=base.out) == dataclasses.replace(base, **change)
    assert f"--config $base {' '.join(flags)}" in (ROOT / "docs" / "training.md").read_text(
        encoding="utf-8"
    )


def test_the_learning_rate_schedules():
    halve = TrainConfig(lr=1e-3, epochs=16, lr_halve_epoch=12)
    assert [learning_rate(halve, e) for e in (0, 11, 12, 15)] == [1e-3, 1e-3, 5e-4, 5e-4]
    poly = dataclasses.replace(halve, lr_schedule="poly")
    rates = [learning_rate(poly, e) for e in range(16)]
    assert rates[0] == 1e-3 and all(a > b > 0 for a, b in itertools.pairwise(rates))
    assert rates[-1] == pytest.approx(1e-3 * (1 / 16) ** 0.9)


def test_every_setting_has_its_help_and_default_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    settings = text.split("settings (also from --config", 1)[1]  # past the usage lines
    defaults = TrainConfig().to_dict()
    for name, default in defaults.items():
        flag = "--" + name.replace("_", "-")
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        after = re.split(rf"{flag}[ ,]", settings, maxsplit=1)[-1]
        assert f"[{shown}]" in after[:600], name  # its own help, then its default
    assert "one pass over this process's share of the labelled set [0]" in text


def test_val_every_0_never_validates(cache, tmp_path):
    # A large training set without validation cases would be re-run whole at every validation.
    args = ["--stage", "coarse", "--no-adversarial", "--epochs", "2", "--val-every", "0"]
    assert train(cache, tmp_path, *args) == 0
    run = tmp_path / "coarse"
    assert (run / "val.csv").read_text().count("\n") == 1  # the header alone
    assert (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_init_starts_from_a_checkpoint_or_a_stage_graph(cache, tmp_path, capsys):
    base = ["--no-adversarial", "--epochs", "1"]
    assert train(cache, tmp_path / "a", "--stage", "fine", *base) == 0
    first = tmp_path / "a" / "fine" / "last.pt"
    graphs = tmp_path / "weights"
    assert (
        export_main(["--checkpoint", str(first), "--precision", "fp32", "--out", str(graphs)]) == 0
    )
    expected = load_checkpoint(first).state_dict
    # lr 0: Adam moves nothing, so the run ends with the weights it started from.
    for name, init in (("pt", first), ("onnx", graphs / "fine_fp32.onnx")):
        out = tmp_path / name
        assert train(cache, out, "--stage", "fine", *base, "--lr", "0", "--init", str(init)) == 0
        got = load_checkpoint(out / "fine" / "last.pt").state_dict
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
    # Weights of another network are refused in one line.
    capsys.readouterr()
    assert train(cache, tmp_path / "c", "--stage", "coarse", *base, "--init", str(first)) == 2
    assert capsys.readouterr().err.startswith(f"error: {first}: holds ")


def test_a_dead_organ_channel_is_refit_before_the_first_step(cache, tmp_path, capsys):
    base = ["--stage", "coarse", "--no-adversarial", "--epochs", "1"]
    assert train(cache, tmp_path / "a", *base) == 0
    ckpt = load_checkpoint(tmp_path / "a" / "coarse" / "last.pt")
    net = ckpt.network()
    with torch.no_grad():  # the liver's row negative on every feature: it can never win a voxel
        net.head.weight[0] = -net.head.weight[0].abs()
        net.head.weight[1:, 0] = net.head.weight[1:, 0].abs() + 0.1  # every other row alive
    dead = tmp_path / "dead.pt"
    save_checkpoint(dead, net, ckpt.spec, ckpt.settings)
    capsys.readouterr()
    # lr 0: the run ends with the weights it started from, after the refit.
    run = ["--init", str(dead), "--lr", "0", "--revive-dead-organs"]
    assert train(cache, tmp_path / "b", *base, *run) == 0
    assert "refit (revive_dead_organs): liver" in capsys.readouterr().err
    got = load_checkpoint(tmp_path / "b" / "coarse" / "last.pt").state_dict["head.weight"]
    assert not torch.equal(got[0], net.state_dict()["head.weight"][0])
    assert torch.equal(got[1:], net.state_dict()["head.weight"][1:])  # the living rows stay
