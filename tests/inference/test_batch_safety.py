"""The mistakes real users make cost them neither data nor a batch (``python -m inference``)."""

import gzip
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
import SimpleITK as sitk
from onnxruntime.capi.onnxruntime_pybind11_state import Fail

import inference.memory
import inference.pipeline
import inference.plan
from export.__main__ import main as export_main
from inference.io import Header, find_inputs
from inference.memory import estimated_peak_bytes
from inference.pipeline import DeviceError, Segmenter
from inference.plausibility import plausibility_warnings
from tests.helpers import ROOT, SAMPLE_CT, SMALL_RANDOM_GRAPHS, write_dicom_series
from tests.inference.test_cli import error_lines, run


def small_ct() -> sitk.Image:
    """The bundled CT at half resolution (61 x 51 x 56 at 6 mm), int16: a case in a second."""
    return sitk.Cast(sitk.ReadImage(str(SAMPLE_CT))[::2, ::2, ::2], sitk.sitkInt16)


def write(image: sitk.Image, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


# 1. Never overwrite an input.


def test_an_output_that_would_overwrite_an_input_is_refused(small_weights, tmp_path, capsys):
    folder = tmp_path / "scans"
    write(small_ct(), folder / "scan.nii.gz")
    before = (folder / "scan.nii.gz").read_bytes()
    assert run(small_weights, folder, folder) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scan.nii.gz" in err[0] and "overwrite" in err[0]
    assert (folder / "scan.nii.gz").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["scan.nii.gz"]


def test_an_output_inside_a_dicom_input_folder_is_refused(small_weights, tmp_path, capsys):
    series = tmp_path / "in" / "patient"
    write_dicom_series(small_ct(), series)
    files = sorted(p.name for p in series.iterdir())
    for inputs, outputs in ((series, series), (tmp_path / "in", series / "labels")):
        assert run(small_weights, inputs, outputs) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "inside the DICOM input folder" in err[0]
    assert sorted(p.name for p in series.iterdir()) == files


def test_outputs_beside_their_inputs_are_recognised_and_skipped(small_weights, tmp_path, capsys):
    folder = tmp_path / "scans"
    write(small_ct(), folder / "case_0000.nii.gz")
    for _ in range(2):  # the second run finds case.nii.gz, ours, among the inputs
        timings = tmp_path / "t.jsonl"
        timings.unlink(missing_ok=True)
        assert run(small_weights, folder, folder, "--timings", str(timings)) == 0
        assert error_lines(capsys.readouterr().err) == []
        assert sorted(p.name for p in folder.iterdir()) == ["case.nii.gz", "case_0000.nii.gz"]
        assert [json.loads(line)["case"] for line in timings.read_text().splitlines()] == ["case"]
    # A label map the user made (no mark in its header) is still an input.
    labels = sitk.ReadImage(str(folder / "case.nii.gz"))
    labels.EraseMetaData("ITK_FileNotes")
    labels.EraseMetaData("descrip")
    write(labels, folder / "mine.nii.gz")
    assert run(small_weights, folder, tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case.nii.gz", "mine.nii.gz"]


# 2. Two inputs, one case name.


def test_two_inputs_with_one_case_name_are_both_reported(small_weights, tmp_path, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    write(small_ct(), inputs / "case_0000.nii.gz")
    sitk.WriteImage(small_ct(), str(inputs / "case.mha"))
    write(small_ct(), inputs / "other_0000.nii.gz")
    assert run(small_weights, inputs, outputs) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = error_lines("\n".join(err))
    assert len(errors) == 1 and "case.mha" in errors[0] and "case_0000.nii.gz" in errors[0]
    assert err.index(errors[0]) == 0  # before any work
    assert sorted(p.name for p in outputs.iterdir()) == ["other.nii.gz"]


# 3. The output folder is checked before the work.


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_that_is_no_folder_fails_at_start(tmp_path, capsys, where):
    inputs = tmp_path / "in"
    write(small_ct(), inputs / "a_0000.nii.gz")
    (tmp_path / "file").write_text("not a folder")
    outputs = tmp_path / "file" if where == "a file" else tmp_path / "file" / "sub"
    # Weights that don't exist: had the networks been loaded first, the error would be theirs.
    assert run(tmp_path / "no_weights", inputs, outputs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "file") in err[0] and "Traceback" not in err[0]


def test_an_unwritable_output_folder_fails_at_start_saying_what_to_do(
    tmp_path, capsys, monkeypatch
):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    write(small_ct(), inputs / "a_0000.nii.gz")
    outputs.mkdir()

    def denied(*args, **kwargs):  # what a root-owned folder gives uid 1000 (root passes)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(inference.plan.tempfile, "mkstemp", denied)
    assert run(tmp_path / "no_weights", inputs, outputs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Permission denied" in err[0] and "uid 1000" in err[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_fails_at_start(tmp_path, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    write(small_ct(), inputs / "a_0000.nii.gz")
    outputs.mkdir(mode=0o555)
    assert run(tmp_path / "no_weights", inputs, outputs) == 2
    assert "cannot write" in capsys.readouterr().err


# 4. One case's failure never ends the batch.


@pytest.mark.parametrize(
    "fault", [MemoryError(), Fail("[ONNXRuntimeError] : 1 : FAIL : injected"), ValueError("bug")]
)
def test_a_failure_inside_one_case_is_its_error_line(
    small_weights, tmp_path, capsys, monkeypatch, fault
):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b", "c"):
        write(small_ct(), inputs / f"{name}_0000.nii.gz")
    segment = Segmenter.segment
    calls = []

    def faulty(self, *args):
        calls.append(1)
        if len(calls) == 2:  # case b
            raise fault
        return segment(self, *args)

    monkeypatch.setattr(Segmenter, "segment", faulty)
    assert run(small_weights, inputs, outputs) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "b_0000.nii.gz" in errors[0]
    assert sorted(p.name for p in outputs.iterdir()) == ["a.nii.gz", "c.nii.gz"]


# 5. Memory guard.


def nifti_bomb(path, size_xyz) -> None:
    """A small .nii.gz whose header declares ``size_xyz`` int16 voxels (data for 8³ only)."""
    small = tmp = path.with_name("tmp.nii")
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkInt16), str(small))
    data = bytearray(tmp.read_bytes())
    tmp.unlink()
    struct.pack_into("<3h", data, 42, *size_xyz)  # dim[1..3] of the NIfTI-1 header
    path.write_bytes(gzip.compress(bytes(data)))


def test_a_decompression_bomb_is_refused_before_its_voxels_are_read(
    small_weights, tmp_path, capsys
):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    nifti_bomb(inputs / "bomb_0000.nii.gz", (30000, 30000, 30000))  # 49 TiB of int16
    write(small_ct(), inputs / "good_0000.nii.gz")
    assert run(small_weights, inputs, outputs) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "bomb_0000.nii.gz" in errors[0]
    assert "more than any CT scanner makes" in errors[0]
    assert [p.name for p in outputs.iterdir()] == ["good.nii.gz"]


def test_a_case_larger_than_the_memory_available_is_refused(
    small_weights, tmp_path, capsys, monkeypatch
):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    # 1 GiB of int16 (a scanner's largest: under MAX_VOXELS), 3.8-9.4 GiB in all by engine.
    nifti_bomb(inputs / "big_0000.nii.gz", (512, 512, 2000))
    monkeypatch.setattr(inference.memory, "available_bytes", lambda: 2**29)
    assert run(small_weights, inputs, outputs) == 1
    assert "0.5 GiB are available" in capsys.readouterr().err
    assert list(outputs.iterdir()) == []


@pytest.mark.parametrize(
    ("engine", "peaks"),
    [
        ("onnxruntime", ((134, 2536), (300, 3012), (600, 4200))),
        ("openvino", ((134, 2150), (536, 2334), (1200, 2738))),
    ],
)
def test_the_memory_estimate_follows_the_measured_peaks(engine, peaks):
    # Peak RSS of python -m inference on the CPU, int16 cases of z x 512 x 512 (docs/runtime.md).
    for slices, measured_mib in peaks:
        header = Header(SAMPLE_CT, (512, 512, slices), 2)
        estimate = estimated_peak_bytes(header, (160, 192), engine) / 2**20
        assert measured_mib * 0.95 < estimate < measured_mib * 1.15, (slices, estimate)


# 6. Stopped cleanly.


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_ends_fast_and_leaves_nothing_partial(tmp_path, signum):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b", "c"):
        write(small_ct(), inputs / f"{name}_0000.nii.gz")
    # The shipped weights, so that the signal comes while the networks run (seconds a case).
    cmd = [sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(outputs)]
    child = subprocess.Popen(
        [*cmd, "--device", "cpu"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background jobs inherit SIGINT ignored, and Python keeps it so.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(4)
    sent = time.monotonic()
    child.send_signal(signum)
    _, err = child.communicate(timeout=30)
    assert time.monotonic() - sent < 3
    assert child.returncode == 128 + signum
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"stopped by {signal.Signals(signum).name}")
    assert "Traceback" not in err
    for path in outputs.iterdir():  # only whole label maps: no temporary or partial file
        assert not path.name.startswith(".")
        assert sitk.ReadImage(str(path)).GetSize() == small_ct().GetSize()


# 7. --device auto without a usable GPU.


# ONNX Runtime's CPU build warns that it has no CUDA provider: the situation under test.
ignore_no_cuda = pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")


@pytest.fixture(scope="module")
def small_weights_both(tmp_path_factory):
    out = tmp_path_factory.mktemp("small_weights_both")
    args = [*SMALL_RANDOM_GRAPHS[:-2], "--precision", "fp32", "fp16", "--out", str(out)]
    assert export_main(args) == 0
    return out


@ignore_no_cuda
def test_auto_falls_back_to_the_cpu_when_cuda_does_not_run(small_weights_both, monkeypatch, caplog):
    # The GPU build run without a GPU: ORT lists the CUDA provider, sessions get only the CPU.
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(inference.pipeline.ort, "get_available_providers", lambda: cuda)
    with caplog.at_level(logging.WARNING):
        segmenter = Segmenter(small_weights_both, "auto")
    assert segmenter.device == "cpu" and "CUDAExecutionProvider" not in segmenter.providers
    assert segmenter.coarse.info.precision == "fp32"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no usable GPU" in warnings[0] and "--gpus" in warnings[0]
    with pytest.raises(DeviceError):
        Segmenter(small_weights_both, "cuda")


@ignore_no_cuda
def test_auto_falls_back_when_cuda_sessions_fail(small_weights_both, monkeypatch, caplog):
    # A driver older than the CUDA that ONNX Runtime was built with fails at session creation.
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(inference.pipeline.ort, "get_available_providers", lambda: cuda)
    make_session = ort.InferenceSession

    def session(path, options, providers):
        if "fp16" in str(path):
            raise Fail("CUDA failure 35: CUDA driver version is insufficient for CUDA runtime")
        return make_session(path, options, providers=providers)

    monkeypatch.setattr(inference.pipeline.ort, "InferenceSession", session)
    with caplog.at_level(logging.WARNING):
        assert Segmenter(small_weights_both, "auto").device == "cpu"
    assert "driver version is insufficient" in caplog.text


# 8. Progress in logs.


def test_each_finished_case_is_a_line_when_stderr_is_not_a_terminal(
    small_weights, tmp_path, capsys
):
    inputs = tmp_path / "in"
    for name in ("a", "b"):
        write(small_ct(), inputs / f"{name}_0000.nii.gz")
    assert run(small_weights, inputs, tmp_path / "out") == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    for name, line in zip("ab", lines, strict=True):
        assert line.startswith(f"done {name}.nii.gz: 56x51x61 voxels")
        seconds = line.split(", ")[-1].split(" s")[0]
        assert "roi from " in line and seconds.replace(".", "").isdigit()


# 9. Plausibility warnings.


def test_what_does_not_look_like_an_abdominal_ct_is_named():
    ct = small_ct()
    assert plausibility_warnings(sitk.GetArrayViewFromImage(ct), ct.GetSpacing()) == []
    noise = np.random.default_rng(0).integers(0, 256, (40, 64, 64), dtype=np.uint8)
    assert any("no air" in w for w in plausibility_warnings(noise, (4.0, 4.0, 4.0)))
    labels = sitk.ReadImage(str(SAMPLE_CT.with_name("example_seg.nii.gz")))
    found = plausibility_warnings(sitk.GetArrayViewFromImage(labels), labels.GetSpacing())
    assert any("distinct values" in w for w in found)
    sliver = sitk.GetArrayFromImage(ct)[:, :, :2]  # 2 columns of 0.32 mm
    assert any("thick" in w for w in plausibility_warnings(sliver, (0.32, 6.0, 6.0)))


def test_an_implausible_input_is_warned_and_still_segmented(small_weights, tmp_path, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    write(small_ct(), inputs / "ct_0000.nii.gz")
    labels = sitk.Cast(sitk.ReadImage(str(SAMPLE_CT.with_name("example_seg.nii.gz"))), 1)
    write(labels, inputs / "labels.nii.gz")
    timings = tmp_path / "t.jsonl"
    assert run(small_weights, inputs, outputs, "--timings", str(timings)) == 0
    warned = [x for x in capsys.readouterr().err.splitlines() if x.startswith("WARNING ")]
    assert len(warned) == 1 and "labels.nii.gz" in warned[0] and "distinct values" in warned[0]
    records = {r["case"]: r for r in map(json.loads, timings.read_text().splitlines())}
    assert records["ct"]["warnings"] == [] and records["labels"]["warnings"]
    assert sorted(p.name for p in outputs.iterdir()) == ["ct.nii.gz", "labels.nii.gz"]


# 10. DICOM layouts.


def test_dicom_layouts_are_found(small_weights, tmp_path, capfd):
    ct = small_ct()
    root = tmp_path / "export"
    write_dicom_series(ct, root / "patient" / "study" / "series1")
    (root / "patient" / "notes").mkdir()
    (root / "patient" / "notes" / "readme.txt").write_text("no DICOM here")
    write_dicom_series(ct, root / "two" / "x", 1)
    write_dicom_series(ct, root / "two" / "x", 2)
    assert find_inputs(root) == [root / "patient" / "study" / "series1", root / "two" / "x"]
    series = root / "patient" / "study" / "series1"
    assert find_inputs(series) == [series]  # -i names the series folder itself

    assert run(small_weights, root, tmp_path / "out") == 1
    err = capfd.readouterr().err
    assert error_lines(err) == [f"ERROR {root / 'two' / 'x'}: holds 2 DICOM series, expected one"]
    assert "WARNING: In" not in err  # no raw ITK warnings for the folder without DICOM
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["series1.nii.gz"]
    assert run(small_weights, series, tmp_path / "out2") == 0
    assert [p.name for p in (tmp_path / "out2").iterdir()] == ["series1.nii.gz"]


@ignore_no_cuda
def test_auto_without_fp16_graphs_runs_the_cpu_graphs_and_says_how(
    small_weights, monkeypatch, caplog
):
    # Git stores the fp32 graphs only; on a GPU machine the fp16 ones must be derived first.
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(inference.pipeline.ort, "get_available_providers", lambda: cuda)
    with caplog.at_level(logging.WARNING):
        assert Segmenter(small_weights, "auto").device == "cpu"
    assert "no fp16 graphs" in caplog.text and "python -m export --derive" in caplog.text
    with pytest.raises(FileNotFoundError, match="--derive"):
        Segmenter(small_weights, "cuda")
