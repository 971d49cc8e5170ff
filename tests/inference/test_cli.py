"""``python -m inference`` end to end with small random graphs on the bundled real CT."""

import gzip
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from export.__main__ import main as export_main
from inference.__main__ import main as infer_main
from inference.orientation import Orientation
from tests.helpers import ROOT, SAMPLE_CT


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("weights")
    args = [
        "--init",
        "random",
        "--seed",
        "1",
        "--coarse-size",
        "32",
        "--fine-size",
        "64",
        "--channel-divisor",
        "4",
        "--precision",
        "fp32",
        "--out",
        str(out),
    ]
    assert export_main(args) == 0
    return out


def reoriented(image: sitk.Image, o: Orientation) -> sitk.Image:
    """The same anatomy stored with permuted, flipped axes and a matching header."""
    array = sitk.GetArrayFromImage(image)
    out = sitk.GetImageFromArray(np.ascontiguousarray(o.undo(array)))
    d_src = np.array(image.GetDirection()).reshape(3, 3)
    d = np.zeros((3, 3))
    spacing = [0.0] * 3
    for c in range(3):  # canonical array axis c is source array axis o.axes[c]
        i_src, i_can = 2 - o.axes[c], 2 - c
        d[:, i_src] = d_src[:, i_can] * (-1 if o.flips[c] else 1)
        spacing[i_src] = image.GetSpacing()[i_can]
    out.SetDirection(d.ravel().tolist())
    out.SetSpacing(spacing)
    return out


def run(weights, inputs, outputs, *extra):
    return infer_main(
        [
            "-i",
            str(inputs),
            "-o",
            str(outputs),
            "--weights",
            str(weights),
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_outputs_keep_geometry_and_follow_the_anatomy(weights, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    image = sitk.ReadImage(str(SAMPLE_CT))
    sitk.WriteImage(image, str(inputs / "caseA_0000.nii.gz"))
    o = Orientation((2, 0, 1), (True, False, True))
    sitk.WriteImage(reoriented(image, o), str(inputs / "caseA_turned.mha"))
    assert run(weights, inputs, outputs, "--timings", str(tmp_path / "t.jsonl")) == 0
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
    assert len(records) == 2 and '"fine"' in records[0] and '"CPUExecutionProvider"' in records[0]


def test_bad_inputs_are_reported_and_skipped(weights, tmp_path, capsys):
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
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}

    assert run(weights, inputs, outputs) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    bad = sorted(set(before) - {"good_0000.nii.gz"})
    assert len(errors) == len(bad)
    for name, line in zip(bad, sorted(errors, key=lambda e: e.split(":")[0]), strict=True):
        assert line.startswith("ERROR ") and name in line
    assert [p.name for p in outputs.iterdir()] == ["good.nii.gz"]
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before


def test_no_inputs_is_exit_code_2(weights, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert run(weights, tmp_path / "in", tmp_path / "out") == 2
    assert "no input images" in capsys.readouterr().err


def test_predict_sh_runs_the_cli(weights, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT)), str(inputs / "x_0000.nii.gz"))
    env = {"PATH": "/usr/bin:/bin", "PYTHON": __import__("sys").executable}
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
