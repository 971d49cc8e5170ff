"""The paper-size networks exported and checked end to end, as ``python -m export`` does."""

import pytest

from export.__main__ import main as export_main


@pytest.mark.slow
def test_paper_size_random_graphs_pass_the_parity_check(tmp_path, capsys):
    assert export_main(["--init", "random", "--seed", "0", "--out", str(tmp_path)]) == 0
    assert export_main(["--check", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "coarse_fp16.onnx" in table and "fine_fp32.onnx" in table and " NO" not in table
