"""benchmarks/cpu_paths.py: every CPU path builds, runs in a fresh process and is compared."""

import importlib.util
import json

import pytest

from benchmarks.cpu_paths import main


@pytest.mark.slow
def test_each_path_builds_runs_and_is_compared_with_fp32(small_weights, tmp_path, capsys):
    out = tmp_path / "cpu_paths.json"
    paths = ["native-norm", "int8"]
    if importlib.util.find_spec("openvino"):  # the runtime's default and its bf16 engine
        paths += ["default", "engine"]
    argv = ["--weights", str(small_weights), "--tiny", "--runs", "1", "--out", str(out)]
    assert main([*argv, "--paths", *paths]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["path"], r["case"]) for r in rows] == [
        (p, c) for c in ("bundled", "flare") for p in ["fp32", *paths]
    ]
    for r in rows:
        assert "error" not in r and r["wall"] > r["fine"] > 0
        assert 0 <= r["agree"]["voxels"] <= 1 and isinstance(r["agree"]["kept"], bool)
    assert all(r["agree"]["voxels"] == 1.0 for r in rows if r["path"] == "fp32")
    assert "x fp32" in capsys.readouterr().out
