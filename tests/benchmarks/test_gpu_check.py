"""benchmarks/gpu_check.py: the GPU machine's kit and the whole check, at tiny size on the CPU."""

import json
import zipfile

import pytest

from benchmarks.gpu_check import KIT_INDEX, KitError, install_kit, kit_graphs, main, make_kit


def fake_wheel(folder, name="kitprobe", version="1.0"):
    """A minimal pure-Python wheel that pip installs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            z.writestr(arc, text)
    return path


def test_the_kit_travels_in_parts_and_installs_only_when_whole(tmp_path):
    fake_wheel(tmp_path / "wheels")
    weights = tmp_path / "weights"
    weights.mkdir()
    for stage in ("coarse", "fine"):
        (weights / f"{stage}_fp32.onnx").write_bytes(b"fp32 " + stage.encode())
        (weights / f"{stage}_fp16.onnx").write_bytes(b"fp16 " + stage.encode())
    kit = make_kit(tmp_path / "kit", part_mib=0.001, wheels=tmp_path / "wheels", graphs=weights)
    parts = [p["name"] for p in kit["parts"]]
    assert len(parts) >= 2 and all(p["bytes"] <= 1048 for p in kit["parts"])
    assert [r.split("==")[0] for r in kit["requirements"]] == [
        "onnxruntime-gpu",
        "SimpleITK",
        "connected-components-3d",
    ]
    assert json.loads((tmp_path / "kit" / KIT_INDEX).read_text()) == kit

    (tmp_path / "kit" / parts[1]).rename(tmp_path / "aside")
    with pytest.raises(KitError, match=f"missing \\['{parts[1]}'\\]"):
        install_kit(tmp_path / "kit")
    damaged = (tmp_path / "aside").read_bytes()
    (tmp_path / "kit" / parts[1]).write_bytes(damaged[:-1] + bytes([damaged[-1] ^ 1]))
    with pytest.raises(KitError, match=f"damaged \\['{parts[1]}'\\]"):
        install_kit(tmp_path / "kit")
    (tmp_path / "kit" / parts[1]).write_bytes(damaged)
    site = install_kit(tmp_path / "kit")
    assert (site / "kitprobe" / "__init__.py").read_text() == "VALUE = 42\n"
    assert install_kit(tmp_path / "kit") == site  # a second call finds it installed
    graphs = kit_graphs(tmp_path / "kit", weights)
    assert (graphs / "fine_fp16.onnx").read_bytes() == b"fp16 fine"
    (weights / "fine_fp32.onnx").write_bytes(b"retrained")  # other weights: not theirs
    assert kit_graphs(tmp_path / "kit", weights) is None


def test_a_kit_without_its_index_says_what_to_carry(tmp_path, capsys):
    assert main(["--kit", str(tmp_path), "--tiny", "--out", str(tmp_path / "out")]) == 2
    assert "kit.json: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_the_whole_check_runs_at_tiny_size_on_the_cpu(tmp_path, capsys):
    assert main(["--tiny", "--runs", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["case"] for r in result["rows"]] == ["flare", "24 slices", "48 slices"]
    for row in result["rows"]:
        assert "error" not in row and row["wall"] > 0 and row["cpu_wall"] > 0
        # Without CUDA both sides are the CPU path: the same labels, voxel for voxel.
        assert row["agree"] == {"voxels": 1.0, "min_dsc": 1.0, "worst": "", "kept": True}
    assert result["profile"]["wall_s"] > 0 and result["profile"]["cpu_area_official"] > 0
    out = capsys.readouterr().out
    assert "FLARE22 figures" in out and "48 slices" in out
