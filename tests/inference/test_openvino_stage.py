"""The CPU engine (the networks on OpenVINO): when the runtime picks it, and that it keeps the
labels."""

import importlib.util
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest
import SimpleITK as sitk

import inference.openvino_stage as ovs
from benchmarks.agreement import agreement
from inference.__main__ import main as infer_main
from inference.pipeline import Segmenter, load_stages
from inference.sessions import RuntimeConfig
from inference.stage_info import INPUT_NAME
from tests.helpers import ROOT, SAMPLE_CT

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed"
)


def test_auto_takes_openvino_where_it_is_installed(monkeypatch):
    monkeypatch.setattr(ovs, "openvino_installed", lambda: True)
    assert ovs.cpu_engine("auto") == "openvino"
    default = RuntimeConfig.for_device("cpu", "auto")
    assert default.engine == "openvino" and default.fine_precision == "f32"  # fp32's labels
    assert RuntimeConfig.for_device("cuda", "auto").engine == "onnxruntime"

    monkeypatch.setattr(ovs, "openvino_installed", lambda: False)
    assert ovs.cpu_engine("auto") == "onnxruntime"
    assert ovs.cpu_engine("openvino") == "openvino"  # asked for: the user's choice
    exact = RuntimeConfig.for_device("cpu", "openvino-f32")
    assert exact.engine == "openvino" and exact.fine_precision == "f32"
    assert RuntimeConfig.for_device("cpu", "openvino").fine_precision == "auto"
    assert RuntimeConfig.for_device("cpu", "auto").engine == "onnxruntime"


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
    assert len(err) == 1 and "_fp32.onnx" in err[0] and "not installed" in err[0]
    assert not list(outputs.glob("*.nii.gz"))
    # auto falls back to ONNX Runtime and segments.
    assert infer_main([*argv, "--device", "cpu"]) == 0
    assert (outputs / "a.nii.gz").exists()


@needs_openvino
@pytest.mark.parametrize("stage_name", ["coarse", "fine"])
def test_openvino_stage_gives_the_labels_of_the_whole_graph(small_weights, stage_name):
    """The network cut out of the graph, with numpy's preprocessing and label assignment
    around it, in f32: the whole graph's labels on ONNX Runtime, voxel for voxel."""
    path = small_weights / f"{stage_name}_fp32.onnx"
    stage = ovs.OpenVinoStage(path, "f32")
    assert stage.info.stage == stage_name and stage.info.precision == "fp32"
    crop = np.random.default_rng(0).integers(-1000, 400, (23, 31, 37)).astype(np.int16)
    labels = stage.run(crop)
    graph = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = graph.run(None, {INPUT_NAME: crop})[0]
    assert labels.dtype == np.uint8 and labels.shape == expected.shape
    np.testing.assert_array_equal(labels, expected)
    assert labels.any()  # not trivially equal


@needs_openvino
def test_openvino_stage_runs_again_and_can_be_stopped(small_weights):
    stage = ovs.OpenVinoStage(small_weights / "fine_fp32.onnx")
    crop = np.random.default_rng(0).integers(-1000, 400, (23, 31, 37)).astype(np.int16)
    first = stage.run(crop)
    np.testing.assert_array_equal(stage.run(crop), first)  # its memory handed back in between
    # Stopped (docker stop) while nothing runs, e.g. during the next crop's compile: the next
    # run raises instead of running the network for seconds.
    stage.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        stage.run(crop[:, :, :20])


@needs_openvino
def test_both_networks_are_read_on_the_calling_thread_and_compiled_beside_each_other(
    small_weights, monkeypatch
):
    """Reading and cutting hand numpy arrays across OpenVINO's Python bindings, whose first
    use from two threads at once deadlocked a start now and then: only the compiles, which
    hand over no arrays, may run in the pool."""
    threads = {"cut": set(), "compile": set()}
    cut, compile_ = ovs.keep_means_short, ovs.OpenVinoStage.compile

    def recorded(name, function):
        def call(*args):
            threads[name].add(threading.current_thread().name)
            return function(*args)

        return call

    monkeypatch.setattr(ovs, "keep_means_short", recorded("cut", cut))
    monkeypatch.setattr(ovs.OpenVinoStage, "compile", recorded("compile", compile_))
    config = RuntimeConfig.for_device("cpu", "openvino-f32")
    coarse, fine = load_stages(small_weights, config)
    assert threads["cut"] == {threading.current_thread().name}
    assert threads["compile"] and threading.current_thread().name not in threads["compile"]
    crop = np.random.default_rng(0).integers(-1000, 400, (23, 31, 37)).astype(np.int16)
    assert fine.run(crop).shape == crop.shape and coarse.run(crop).dtype == np.uint8


@pytest.mark.slow  # the shipped paper-size graphs on a real CT, on both engines
@needs_openvino
def test_the_openvino_engine_keeps_the_labels_of_onnxruntime():
    image = sitk.ReadImage(str(SAMPLE_CT))
    volume = sitk.GetArrayViewFromImage(image)
    geometry = image.GetSpacing(), image.GetDirection()
    results = {}
    for engine in ("onnxruntime", "openvino", "auto"):
        segmenter = Segmenter(ROOT / "weights", "cpu", cpu_engine=engine)
        assert segmenter.engine == ("onnxruntime" if engine == "onnxruntime" else "openvino")
        results[engine] = segmenter.segment(volume, *geometry).labels
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    # The default, OpenVINO in f32: ONNX Runtime's arithmetic but for the last bits of the
    # resizes.
    exact = agreement(results["auto"], results["onnxruntime"], voxel_ml)
    assert exact.voxels > 0.99999 and exact.min_dsc > 0.9999, exact
    # The fine network in bf16 (asked for): most labels, not all (docs/runtime.md); on the
    # shipped weights of this writing the least organ above 10 mL was at DSC 0.988.
    fast = agreement(results["openvino"], results["onnxruntime"], voxel_ml)
    assert fast.voxels > 0.9995 and fast.min_dsc > 0.95, fast
