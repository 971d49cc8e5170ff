"""``python -m export --derive``: the fp16 graphs made from the stored fp32 graphs alone."""

import numpy as np
import pytest
import SimpleITK as sitk

from export.__main__ import main as export_main
from inference.hu import as_int16_hu
from inference.pipeline import Segmenter
from inference.sessions import RuntimeConfig
from tests.helpers import ROOT, SAMPLE_CT, SMALL_RANDOM_GRAPHS

# SMALL_RANDOM_GRAPHS ends with "--precision fp32".
SMALL = SMALL_RANDOM_GRAPHS[:-2]


@pytest.mark.slow  # four exports and two derivations: 34 s on a busy 2-core CPU
def test_derived_graphs_are_the_graphs_an_export_writes(tmp_path, capsys):
    both, stored = tmp_path / "both", tmp_path / "stored"
    assert export_main([*SMALL, "--seed", "3", "--out", str(both)]) == 0
    for name in ("coarse_fp32.onnx", "fine_fp32.onnx", "manifest.json"):
        stored.mkdir(exist_ok=True)
        (stored / name).write_bytes((both / name).read_bytes())
    capsys.readouterr()
    assert export_main(["--derive", str(stored)]) == 0
    out = capsys.readouterr().out
    assert out.count("byte-identical to manifest.json's") == 2
    for name in ("coarse_fp16.onnx", "fine_fp16.onnx"):
        assert (stored / name).read_bytes() == (both / name).read_bytes()


@pytest.mark.slow  # eight exports: 64 s on a busy 2-core CPU
def test_a_derived_graph_that_differs_from_the_manifest_is_reported(tmp_path, capsys):
    weights = tmp_path / "w"
    assert export_main([*SMALL, "--seed", "3", "--out", str(weights)]) == 0
    (weights / "fine_fp16.onnx").unlink()
    other = tmp_path / "other"  # another seed: same names, other bytes
    assert export_main([*SMALL, "--seed", "4", "--out", str(other)]) == 0
    (weights / "manifest.json").write_bytes((other / "manifest.json").read_bytes())
    assert export_main(["--derive", str(weights), "--out", str(tmp_path / "d")]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_without_stored_graphs_derive_fails_naming_the_file(tmp_path, capsys):
    assert export_main(["--derive", str(tmp_path)]) == 2
    assert "coarse_fp32.onnx" in capsys.readouterr().err


@pytest.mark.slow
def test_the_shipped_fp16_graphs_derive_with_the_fp32_labels(tmp_path):
    # Git stores weights/*_fp32.onnx; the GPU's fp16 graphs are derived (make gpu-weights).
    assert export_main(["--derive", str(ROOT / "weights"), "--out", str(tmp_path)]) == 0
    for name in ("coarse_fp32.onnx", "fine_fp32.onnx"):
        (tmp_path / name).symlink_to(ROOT / "weights" / name)
    image = sitk.ReadImage(str(SAMPLE_CT))
    volume = as_int16_hu(sitk.GetArrayFromImage(image))
    geometry = (image.GetSpacing(), image.GetDirection())
    fp32 = Segmenter(tmp_path, config=RuntimeConfig.for_device("cpu")).segment(volume, *geometry)
    # ONNX Runtime's CPU provider runs fp16 graphs by casting around each kernel.
    fp16 = Segmenter(tmp_path, config=RuntimeConfig("cpu", "fp16")).segment(volume, *geometry)
    assert fp32.labels.any()
    assert np.mean(fp16.labels == fp32.labels) >= 0.999
