"""Export of small stage graphs: metadata, shapes, parity with torch, reproducibility, CLI."""

import dataclasses
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.__main__ import main as export_main
from export.check import check_weights, random_cases
from inference.organs import LABEL_NAMES
from inference.stage_info import INPUT_NAME, StageInfo, graph_filename
from tests.helpers import SMALL, SMALL_RANDOM_GRAPHS
from training.checkpoint import (
    CheckpointError,
    StageSettings,
    load_checkpoint,
    save_checkpoint,
    sha256_file,
)
from training.networks import build_network, network_spec

SETTINGS = StageSettings(hu_window=(-400.0, 400.0), threshold=0.5, min_component_mm3=500.0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for stage in ("coarse", "fine"):
        torch.manual_seed(7)
        spec = network_spec(stage, **SMALL[stage])
        paths[stage] = folder / f"{stage}.pt"
        save_checkpoint(paths[stage], build_network(spec), spec, SETTINGS, epoch=1)
    return paths


@pytest.fixture(scope="module")
def weights(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights")
    args = ["--checkpoint", str(checkpoints["coarse"]), str(checkpoints["fine"]), "--out", str(out)]
    assert export_main(args) == 0
    return out


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_metadata_travels_with_the_graph(weights, checkpoints, stage, precision):
    meta = session(weights / graph_filename(stage, precision)).get_modelmeta()
    info = StageInfo.from_metadata(meta.custom_metadata_map)
    assert info.stage == stage and info.precision == precision
    assert info.input_size == SMALL[stage]["input_size"]
    assert info.hu_window == (-400.0, 400.0)
    assert info.min_component_mm3 == 500.0 and info.roi_margin_mm == 20.0
    assert info.labels == LABEL_NAMES and info.labels[13] == "left kidney"
    assert info.checkpoint_sha256 == sha256_file(checkpoints[stage])
    assert info.opset == 21 and info.version


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graphs_take_any_volume_and_return_uint8_labels(weights, precision):
    coarse = session(weights / graph_filename("coarse", precision))
    fine = session(weights / graph_filename("fine", precision))
    for shape in [(7, 33, 20), (50, 41, 64)]:
        image = np.random.default_rng(0).integers(-1000, 1000, shape, dtype=np.int16)
        (labels,) = coarse.run(None, {INPUT_NAME: image})
        assert labels.shape == (32, 32, 32) and labels.dtype == np.uint8
        (labels,) = fine.run(None, {INPUT_NAME: image})
        assert labels.shape == shape and labels.dtype == np.uint8
        assert labels.max() <= 13


def test_graphs_match_torch_on_random_and_real_ct(weights, sample_ct):
    cases = random_cases(0, ((40, 50, 60),))
    cases["sample ct"] = sample_ct
    results = check_weights(weights, cases)
    assert len(results) == 2 * 2 * len(cases)
    failed = [r for r in results if not r.passed]
    assert not failed
    fp32 = [r for r in results if r.graph.endswith("fp32.onnx")]
    assert all(r.label_agreement >= 0.9999 and r.quantile_prob_diff <= 1e-4 for r in fp32)


@pytest.mark.slow  # two parity checks of four graphs: 32 s on a busy 2-core CPU
def test_check_fails_when_metadata_does_not_describe_the_graph(weights, tmp_path):
    for f in weights.iterdir():
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / graph_filename("fine", "fp32")
    model = onnx.load(path)
    for prop in model.metadata_props:
        if prop.key == "flare22.hu_window":
            prop.value = "[-100.0, 100.0]"  # the graph itself still clips to [-400, 400]
    onnx.save(model, path)
    assert export_main(["--check", str(tmp_path)]) == 1
    assert export_main(["--check", str(weights)]) == 0


def test_export_is_byte_reproducible(checkpoints, weights, tmp_path):
    assert (
        export_main(
            [
                "--checkpoint",
                str(checkpoints["coarse"]),
                "--out",
                str(tmp_path),
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    name = graph_filename("coarse", "fp32")
    assert (tmp_path / name).read_bytes() == (weights / name).read_bytes()


def test_random_init_is_seeded(tmp_path):
    for seed in (3, 4):
        out = tmp_path / str(seed)
        assert export_main([*SMALL_RANDOM_GRAPHS, "--seed", str(seed), "--out", str(out)]) == 0
    name = graph_filename("coarse", "fp32")
    assert (tmp_path / "3" / name).read_bytes() != (tmp_path / "4" / name).read_bytes()
    meta = session(tmp_path / "3" / name).get_modelmeta().custom_metadata_map
    assert StageInfo.from_metadata(meta).checkpoint_sha256 == "random-init seed=3"


def test_checkpoint_round_trip_and_bad_files(checkpoints, tmp_path):
    ckpt = load_checkpoint(checkpoints["fine"])
    assert ckpt.stage == "fine" and ckpt.settings == SETTINGS
    assert ckpt.spec == network_spec("fine", **SMALL["fine"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        load_checkpoint(bad)
    assert export_main(["--checkpoint", str(bad), "--out", str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w").exists()


def test_exit_codes_tell_a_parity_failure_from_an_error(tmp_path, capsys, monkeypatch):
    import export.__main__ as cli

    with pytest.raises(SystemExit):
        export_main(["--help"])
    assert "1 a graph failed the --check parity" in capsys.readouterr().out
    assert export_main(["--check", str(tmp_path)]) == 2  # no graphs: an error, not a failure
    assert "no stage graphs found" in capsys.readouterr().err

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "run_export", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # not swallowed into one line
        export_main([*SMALL_RANDOM_GRAPHS, "--out", str(tmp_path)])


def test_settings_are_a_frozen_record():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SETTINGS.threshold = 0.3  # type: ignore[misc]
