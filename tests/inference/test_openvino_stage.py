"""The fine stage on OpenVINO bf16: when the runtime picks it, and that it keeps the labels."""

import importlib.util
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import inference.openvino_stage as ovs
from benchmarks.agreement import agreement
from inference.__main__ import main as infer_main
from inference.pipeline import Segmenter
from inference.sessions import RuntimeConfig
from tests.helpers import ROOT, SAMPLE_CT

SPIN = "session.intra_op.allow_spinning"
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed"
)


def test_auto_takes_openvino_only_where_the_cpu_has_native_bf16(monkeypatch):
    monkeypatch.setattr(ovs, "openvino_bf16_reason", lambda: None)
    assert ovs.cpu_engine("auto") == "openvino"
    config = RuntimeConfig.for_device("cpu", "auto")
    assert config.fine_engine == "openvino"
    # ONNX Runtime's idle threads must not spin beside OpenVINO's.
    assert config.session_options().get_session_config_entry(SPIN) == "0"
    assert RuntimeConfig.for_device("cuda", "auto").fine_engine == "onnxruntime"

    monkeypatch.setattr(ovs, "openvino_bf16_reason", lambda: "this CPU has no native bf16")
    assert ovs.cpu_engine("auto") == "onnxruntime"
    assert ovs.cpu_engine("openvino") == "openvino"  # asked for: the user's choice
    plain = RuntimeConfig.for_device("cpu", "auto")
    assert plain.fine_engine == "onnxruntime" and plain.spin


def test_openvino_asked_for_but_missing_is_one_line_before_any_work(
    small_weights, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT)), str(inputs / "a_0000.nii.gz"))
    argv = ["-i", str(inputs), "-o", str(outputs), "--weights", str(small_weights)]
    assert infer_main([*argv, "--device", "cpu", "--cpu-engine", "openvino"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fine_fp32.onnx" in err[0] and "not installed" in err[0]
    assert not list(outputs.glob("*.nii.gz"))
    # auto falls back to ONNX Runtime and segments.
    assert infer_main([*argv, "--device", "cpu"]) == 0
    assert (outputs / "a.nii.gz").exists()


@needs_openvino
def test_openvino_stage_reads_the_graph_metadata_and_labels_the_crop(small_weights):
    stage = ovs.OpenVinoStage(small_weights / "fine_fp32.onnx")
    assert stage.info.stage == "fine" and stage.info.precision == "fp32"
    crop = np.random.default_rng(0).integers(-1000, 400, (23, 31, 37)).astype(np.int16)
    labels = stage.run(crop)
    assert labels.shape == crop.shape and labels.dtype == np.uint8
    assert labels.max() <= max(stage.info.labels)
    # Stopped (docker stop) while nothing runs, e.g. during the next crop's compile: the next
    # run raises instead of running the network for seconds.
    stage.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        stage.run(crop[:, :, :20])


@pytest.mark.slow  # the shipped paper-size graphs on a real CT, on both engines
@needs_openvino
def test_openvino_fine_stage_keeps_the_labels_of_onnxruntime():
    image = sitk.ReadImage(str(SAMPLE_CT))
    volume = sitk.GetArrayViewFromImage(image)
    geometry = image.GetSpacing(), image.GetDirection()
    results = {}
    for engine in ("onnxruntime", "openvino"):
        segmenter = Segmenter(ROOT / "weights", "cpu", cpu_engine=engine)
        assert segmenter.fine_engine == engine
        results[engine] = segmenter.segment(volume, *geometry).labels
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    kept = agreement(results["openvino"], results["onnxruntime"], voxel_ml)
    assert kept.kept, kept
