"""``python -m training.burst --tiny``: the GPU burst's steps, end to end, on the CPU."""

import json

import torch

import training.burst
from export.__main__ import main as export_main
from tests.training.test_prepare import make_dataset
from training.burst import main
from training.checkpoint import StageSettings, load_checkpoint, save_checkpoint
from training.networks import build_network, network_spec

RECORD = {"config": {}, "epoch": 1, "best_dice": 0.0}


def test_a_tiny_burst_packs_parts_that_unpack_into_exportable_checkpoints(tmp_path, monkeypatch):
    dataset = make_dataset(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    # Small parts, so that the fine stage comes back in several files as at paper size.
    monkeypatch.setattr(training.burst, "PART_BYTES", 100_000)
    argv = ["--dataset", str(dataset), "--out", str(out), "--work", str(work), "--tiny"]
    assert main([*argv, "--minutes", "5", "--synth", "1"]) == 0
    assert len(list((dataset / "labelsTr").glob("synth_*.nii.gz"))) == 1
    report = json.loads((out / "burst.json").read_text())
    for stage in ("coarse", "fine"):
        record = report["stages"][stage]
        assert record["ending"] == "finished" and record["epochs"] == 2
        assert set(record["seconds_per_iteration"]) == {"warmup", "adversarial", "cooldown"}
        assert len(record["files"]) > 1 and (out / "logs" / f"{stage}.log").is_file()

    checkpoints = tmp_path / "checkpoints"
    assert main(["--unpack", str(out), "--out", str(checkpoints)]) == 0
    for stage in ("coarse", "fine"):
        trained = torch.load(work / "train" / stage / "last.pt", weights_only=True)["model"]
        back = load_checkpoint(checkpoints / stage / "last.pt")
        assert back.training["epoch"] == 2
        for name, tensor in trained.items():  # fp16 on the way: equal to fp16 rounding
            assert torch.equal(back.state_dict[name], tensor.half().float())
    pair = [str(checkpoints / s / "last.pt") for s in ("coarse", "fine")]
    graphs = tmp_path / "graphs"
    assert export_main(["--checkpoint", *pair, "--precision", "fp32", "--out", str(graphs)]) == 0
    assert (graphs / "fine_fp32.onnx").is_file()


def test_paper_size_stages_come_back_in_what_a_gpu_machine_returns(tmp_path):
    # At most 8 files of 16 MiB come back: the parts of both stages, burst.json, two logs.
    files = []
    for stage in ("coarse", "fine"):
        spec = network_spec(stage)
        run = tmp_path / "train" / stage
        save_checkpoint(run / "last.pt", build_network(spec), spec, StageSettings(), **RECORD)
        files += training.burst.pack(run, tmp_path, stage)[0]
    assert len(files) + 3 <= 8
    assert all(p.stat().st_size < 16 * 2**20 for p in files)


def test_a_stage_still_running_at_the_time_limit_is_stopped(tmp_path):
    slow = {"slow": ["python3", "-c", "import time; time.sleep(60)"]}
    started = __import__("time").monotonic()
    ending = training.burst.run_stages(slow, 1.0, tmp_path)
    assert ending == {"slow": "stopped at the time limit"}
    assert __import__("time").monotonic() - started < 30


def test_unpack_without_parts_is_an_error(tmp_path, capsys):
    assert main(["--unpack", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "no packed stage parts" in capsys.readouterr().err


def test_patient_a_is_restored_from_the_tracked_tree(tmp_path):
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "labelsTr" / "patientA.nii.gz").write_bytes(b"labels")
    training.burst.restore_bundled(tmp_path)
    restored = tmp_path / "imagesTr" / "patientA_0000.nii.gz"
    assert restored.read_bytes() == training.burst.BUNDLED_CT.read_bytes()
