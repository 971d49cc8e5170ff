"""``python -m inference`` end to end with small random graphs on the bundled real CT."""

import gzip
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import SimpleITK as sitk

import inference.__main__ as cli
from inference.__main__ import TIMING_KEYS
from inference.__main__ import main as infer_main
from inference.io import Geometry
from inference.orientation import Orientation
from inference.stage_info import PREFIX
from tests.helpers import (
    ROOT,
    SAMPLE_CT,
    bundled_case_shortfalls,
    reoriented,
    write_dicom_series,
)


def error_lines(stderr: str) -> list[str]:
    """The ERROR lines of a run's stderr (progress and warning lines left out)."""
    return [line for line in stderr.splitlines() if line.startswith("ERROR ")]


def run(small_weights, inputs, outputs, *extra):
    io = ["-i", str(inputs), "-o", str(outputs)]
    return infer_main([*io, "--weights", str(small_weights), "--device", "cpu", *extra])


def test_outputs_keep_geometry_and_follow_the_anatomy(small_weights, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    image = sitk.ReadImage(str(SAMPLE_CT))
    sitk.WriteImage(image, str(inputs / "caseA_0000.nii.gz"))
    o = Orientation((2, 0, 1), (True, False, True))
    sitk.WriteImage(reoriented(image, o), str(inputs / "caseA_turned.mha"))
    assert run(small_weights, inputs, outputs, "--timings", str(tmp_path / "t.jsonl")) == 0
    assert sorted(p.name for p in outputs.iterdir()) == ["caseA.nii.gz", "caseA_turned.nii.gz"]
    for name, source in (("caseA", "caseA_0000.nii.gz"), ("caseA_turned", "caseA_turned.mha")):
        src, out = (
            sitk.ReadImage(str(inputs / source)),
            sitk.ReadImage(str(outputs / f"{name}.nii.gz")),
        )
        assert out.GetSize() == src.GetSize()
        assert np.allclose(out.GetSpacing(), src.GetSpacing())
        assert np.allclose(out.GetOrigin(), src.GetOrigin())
        assert np.allclose(out.GetDirection(), src.GetDirection())
        assert out.GetPixelID() == sitk.sitkUInt8
    plain = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs / "caseA.nii.gz")))
    turned = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs / "caseA_turned.nii.gz")))
    assert plain.any()
    assert np.array_equal(turned, o.undo(plain))
    records = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(records) == 2
    record = json.loads(records[0])
    # The coarse network on OpenVINO in f32, the fine one in bf16 where the CPU has it.
    engine = {"onnxruntime": "CPUExecutionProvider", "openvino": "OpenVINO f32 / "}
    assert record["providers"][0].startswith(engine[record["engine"]])
    assert record["roi_source"] in {
        "organs",
        "body",
        "volume",
    }
    assert all(record[k] >= 0 for k in TIMING_KEYS)
    assert record["total"] >= sum(record[k] for k in TIMING_KEYS)


def test_bad_inputs_are_reported_and_skipped(small_weights, tmp_path, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    good = sitk.ReadImage(str(SAMPLE_CT))
    sitk.WriteImage(good, str(inputs / "good_0000.nii.gz"))
    data = (inputs / "good_0000.nii.gz").read_bytes()
    (inputs / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (inputs / "garbled.nii.gz").write_bytes(data[:1000] + bytes(5000) + data[6000:])
    (inputs / "notanimage.nii.gz").write_bytes(gzip.compress(b"hello, not a NIfTI file"))
    sitk.WriteImage(sitk.Image(20, 30, sitk.sitkInt16), str(inputs / "flat2d.nii.gz"))
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), str(inputs / "vector.mha"))
    sitk.WriteImage(sitk.Image([8, 8, 8, 2], sitk.sitkInt16), str(inputs / "four_d.nii.gz"))
    sitk.WriteImage(sitk.Image([8, 8, 1], sitk.sitkInt16), str(inputs / "oneslice.nii.gz"))
    nan = sitk.GetImageFromArray(np.full((6, 7, 8), np.nan, np.float32))
    sitk.WriteImage(nan, str(inputs / "nan.mha"))  # the NIfTI writer turns NaN into 0
    wide = sitk.Image([8, 8, 8], sitk.sitkInt16)
    wide.SetSpacing((1.0, 1.0, 5000.0))
    sitk.WriteImage(wide, str(inputs / "absurd_spacing.nii.gz"))
    small = sitk.Image([8, 8, 4], sitk.sitkInt16)
    write_dicom_series(small, inputs / "two_series", 1)
    write_dicom_series(small, inputs / "two_series", 2)
    before = {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()}
    before["two_series"] = b""

    assert run(small_weights, inputs, outputs) == 1
    errors = error_lines(capsys.readouterr().err)
    bad = sorted(set(before) - {"good_0000.nii.gz"})
    assert len(errors) == len(bad)
    for name, line in zip(bad, sorted(errors, key=lambda e: e.split(":")[0]), strict=True):
        assert line.startswith("ERROR ") and name in line
    assert [p.name for p in outputs.iterdir()] == ["good.nii.gz"]
    after = {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()}
    assert after == {k: v for k, v in before.items() if k != "two_series"}


def test_no_inputs_is_exit_code_2(small_weights, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert run(small_weights, tmp_path / "in", tmp_path / "out") == 2
    assert "no input images" in capsys.readouterr().err


@pytest.mark.slow  # the shipped paper-size graphs on a real CT
def test_predict_sh_runs_the_cli(small_weights, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT)), str(inputs / "x_0000.nii.gz"))
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "predict.sh"), str(inputs), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
    )
    # predict.sh uses the default weights folder, which holds no graphs until trained
    # weights ship: it must fail cleanly, naming what is missing.
    if not (ROOT / "weights" / "coarse_fp32.onnx").exists():
        assert done.returncode == 2 and "coarse_fp32.onnx" in done.stderr
    else:
        assert done.returncode == 0 and (tmp_path / "out" / "x.nii.gz").exists()
    # Options after the two folders go to python -m inference.
    extra = ["--weights", str(small_weights), "--device", "cpu"]
    done = subprocess.run(
        [str(ROOT / "predict.sh"), str(inputs), str(tmp_path / "out2"), *extra],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out2" / "x.nii.gz").exists()


@pytest.mark.slow  # the shipped paper-size graphs on a real CT
def test_the_shipped_weights_find_the_organs_of_the_bundled_case(tmp_path):
    # What the container test checks too, without Docker: python -m inference, its default
    # weights (weights/), the bundled CT.
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SAMPLE_CT, inputs / "caseA_0000.nii.gz")
    cli = [sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(tmp_path / "out")]
    done = subprocess.run([*cli, "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "caseA.nii.gz")))
    assert not bundled_case_shortfalls(labels)


def test_reoriented_test_images_hold_the_same_anatomy():
    image = sitk.ReadImage(str(SAMPLE_CT))
    turned = reoriented(image, Orientation((1, 2, 0), (True, True, False)))
    # Every voxel of the turned image sits where the same value sat in the original.
    for index in [(0, 0, 0), (5, 17, 3), (turned.GetSize()[0] - 1, 2, 9)]:
        point = turned.TransformIndexToPhysicalPoint(index)
        original = image.TransformPhysicalPointToIndex(point)
        assert turned[index] == image[original]


def test_a_folder_holding_a_dicom_series_is_a_case(small_weights, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    ct = sitk.Cast(sitk.ReadImage(str(SAMPLE_CT)), sitk.sitkInt16)
    sitk.WriteImage(ct, str(inputs / "nifti_0000.nii.gz"))
    write_dicom_series(ct, inputs / "dicom_case")
    assert run(small_weights, inputs, outputs) == 0
    dicom = sitk.ReadImage(str(outputs / "dicom_case.nii.gz"))
    nifti = sitk.ReadImage(str(outputs / "nifti.nii.gz"))
    assert dicom.GetSize() == nifti.GetSize()
    assert np.allclose(dicom.GetOrigin(), nifti.GetOrigin(), atol=1e-3)
    assert np.allclose(dicom.GetDirection(), nifti.GetDirection())
    assert np.allclose(dicom.GetSpacing(), nifti.GetSpacing(), atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(dicom), sitk.GetArrayFromImage(nifti))


def test_an_unwritable_output_is_reported_and_the_batch_goes_on(small_weights, tmp_path, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("a_0000.nii.gz", "b_0000.nii.gz"):
        shutil.copy(SAMPLE_CT, inputs / name)
    (outputs / "a.nii.gz").mkdir(parents=True)  # a folder where a's labels should go
    assert run(small_weights, inputs, outputs) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "a_0000.nii.gz" in err[0]
    assert (outputs / "b.nii.gz").is_file()
    assert sorted(p.name for p in outputs.iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_a_batch_reads_ahead_and_writes_behind_in_order(
    small_weights, tmp_path, capsys, monkeypatch
):
    import inference.__main__ as cli

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("a_0000.nii.gz", "b_0000.nii.gz", "c_0000.nii.gz"):
        shutil.copy(SAMPLE_CT, inputs / name)
    read = cli.Reader.read

    def flaky_read(self, path, *args):  # b becomes unreadable after the folder was listed
        if path.name.startswith("b_"):
            raise PermissionError(13, "Permission denied")
        return read(self, path, *args)

    monkeypatch.setattr(cli.Reader, "read", flaky_read)
    timings = tmp_path / "t.jsonl"
    assert run(small_weights, inputs, outputs, "--timings", str(timings)) == 1
    err = error_lines(capsys.readouterr().err)
    reason = "PermissionError: [Errno 13] Permission denied"
    assert err == [f"ERROR {inputs / 'b_0000.nii.gz'}: cannot read it ({reason})"]
    assert sorted(p.name for p in outputs.iterdir()) == ["a.nii.gz", "c.nii.gz"]
    records = [json.loads(line) for line in timings.read_text().splitlines()]
    assert [r["case"] for r in records] == ["a", "c"]
    assert all(r["total"] == sum(r[k] for k in TIMING_KEYS) for r in records)


# AMOS's organ order: another dataset's label map under FLARE22's ids.
AMOS_LABELS = '{"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney"}'


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("stage", "fine", "stage 'fine', expected 'coarse'"),
        ("precision", "fp16", "precision 'fp16', expected 'fp32'"),
        ("labels", AMOS_LABELS, "label 1 'spleen', expected 'liver'"),
    ],
)
def test_a_graph_whose_metadata_is_not_what_was_asked_for_is_refused(
    small_weights, tmp_path, capsys, key, value, named
):
    weights = tmp_path / "weights"
    shutil.copytree(small_weights, weights)
    path = weights / "coarse_fp32.onnx"
    model = onnx.load(path)
    for prop in model.metadata_props:
        if prop.key == PREFIX + key:
            prop.value = value
    onnx.save(model, path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SAMPLE_CT, inputs / "a_0000.nii.gz")
    assert run(weights, inputs, tmp_path / "out") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {path}: not a FLARE22 coarse fp32 graph") and named in line


def test_labels_are_written_from_the_geometry_alone(small_weights, tmp_path, monkeypatch):
    # The I/O thread gets the image's geometry, not the image: its voxels are not kept alive
    # until its labels are written, while the next case is segmented.
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a_0000.nii.gz", "b_0000.nii.gz"):
        shutil.copy(SAMPLE_CT, inputs / name)
    given = []

    def write_case(labels, geometry, output):
        given.append(geometry)
        return cli.write_labels(labels, geometry, output) or 0.0

    monkeypatch.setattr(cli, "write_case", write_case)
    assert run(small_weights, inputs, tmp_path / "out") == 0
    assert given == [Geometry.of(sitk.ReadImage(str(SAMPLE_CT)))] * 2
    out = sitk.ReadImage(str(tmp_path / "out" / "a.nii.gz"))
    assert Geometry.of(out) == given[0]
