"""``benchmarks/training.py`` runs its steps in child processes and writes its table."""

import json

from benchmarks.training import main


def test_small_steps_are_timed_in_fp32_and_bf16(tmp_path, capsys):
    for extra in ([], ["--bf16"]):
        out = tmp_path / "training.json"
        argv = ["--steps", "coarse", "disc", "--size", "32", "--runs", "1", "--device", "cpu"]
        assert main([*argv, *extra, "--out", str(out)]) == 0
        summary = json.loads(out.read_text())
        assert [r["step"] for r in summary["rows"]] == ["coarse", "disc"]
        assert all(r["median_s"] > 0 and r["peak_rss_mib"] > 0 for r in summary["rows"])
        assert summary["bf16"] == bool(extra) and summary["size"] == 32
    assert "32³, bf16" in capsys.readouterr().out
