"""benchmarks/diagnose.py on small random graphs: every row for every stage and organ."""

import json

from benchmarks.diagnose import NORMALISATIONS, main


def test_diagnose_writes_every_row_for_every_stage(small_weights, tmp_path, capsys):
    out = tmp_path / "diagnose.json"
    argv = ["--weights", str(small_weights), "--dataset", str(tmp_path / "none")]
    assert main([*argv, "--window", "32", "--stride", "32", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"coarse", "fine"}
    for stage in results.values():
        rows = stage["patient A"]
        assert list(rows) == ["whole", *NORMALISATIONS, "sliding 32/32"]
        for scores in rows.values():
            assert "liver" in scores and "left kidney" in scores  # the reference's organs
            assert all(0 <= dsc <= 1 and ratio >= 0 for dsc, ratio in scores.values())
    assert "fine, patient A" in capsys.readouterr().out
