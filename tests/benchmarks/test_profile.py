"""benchmarks/profile.py end to end on small commands: a fresh process per case, real probes."""

import csv
import json
import math
import shlex
import sys

import numpy as np
import pytest

from benchmarks.profile import json_safe, main, write_results
from benchmarks.sampler import open_gpu
from tests.helpers import SAMPLE_CT

PY = shlex.quote(sys.executable)
# Busy for 0.6 s with 200 MiB resident, then "segments" by copying the input.
WORK = (
    f"{PY} -c \"import time; x = bytearray(b'1') * (200 << 20); t = time.time()\n"
    'while time.time() - t < 0.6: pass" && cp {input}/* {output}/'
)


def strict(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def profile(tmp_path, cmd: str, *extra: str) -> tuple[int, dict]:
    results = tmp_path / "results"
    argv = ["--cmd", cmd, "--cases", str(SAMPLE_CT), "--results", str(results), "--idle", "0.2"]
    code = main([*argv, *extra])
    summary = results / "summary.json"
    return code, json.loads(summary.read_text(), parse_constant=strict) if summary.exists() else {}


def test_profiles_a_command_per_case(tmp_path):
    code, summary = profile(tmp_path, WORK + "example_ct.nii.gz")
    assert code == 0
    results = tmp_path / "results"
    assert (results / "outputs" / "example_ct.nii.gz").exists()  # kept for evaluate.py
    assert (results / "example_ct.png").stat().st_size > 10_000
    assert not (results / "work").exists()
    [row] = summary["cases"]
    assert row["status"] == "ok" and row["exit_code"] == 0
    assert row["wall_s"] >= 0.6
    assert row["samples"] >= 3
    assert row["tree_cpu_s"] > 0.3  # rusage of the command's tree: CPU seconds, not wall
    assert row["tree_rss_peak_mib"] > 150  # the 200 MiB the child held, seen by the sampler
    assert row["cpu_area_official"] > 0 and row["ram_peak_mib"] > 0
    assert summary["median"]["wall_s"] == row["wall_s"]
    with open(results / "example_ct.csv") as f:
        samples = list(csv.DictReader(f))
    assert len(samples) > row["samples"]  # the idle samples before the run are kept too
    if open_gpu(0)[0] is None:
        assert "no GPU columns" in summary["notes"][0]
        assert row["gpu_area_official"] is None and samples[-1]["gpu_used_mib"] == ""
    else:
        assert row["gpu_area_official"] > 0


@pytest.mark.parametrize(
    ("cmd", "status"),
    [("exit 3", "failed (3)"), ("true", "no output"), ("sleep 30", "timeout")],
)
def test_a_failed_case_is_reported_and_the_exit_code_is_1(tmp_path, cmd, status):
    code, summary = profile(tmp_path, cmd, "--timeout", "1")
    assert code == 1
    [row] = summary["cases"]
    assert row["status"] == status
    assert row["wall_s"] < 10  # a timed-out command is killed, its process group too


def test_no_cases_is_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--cases", str(tmp_path / "empty"), "--results", str(tmp_path / "r")]) == 2
    assert main(["--cases", str(tmp_path / "nothing"), "--results", str(tmp_path / "r")]) == 2
    assert "nothing: no such case file or folder" in capsys.readouterr().err


def test_summary_json_is_strict_json_with_null_for_nan(tmp_path):
    no_gpu = {"case": "a", "status": "ok", "wall_s": 2.0, "gpu_max": math.nan}
    odd = {"case": "b", "status": "timeout", "wall_s": 4.0, "gpu_max": math.inf}
    rows = [{**no_gpu, "start": 0.0, "end": 2.0}, {**odd, "start": 2.0, "end": 6.0}]
    write_results(tmp_path, rows, ["no GPU"], "sh predict.sh")
    text = (tmp_path / "summary.json").read_text()
    summary = json.loads(text, parse_constant=strict)  # no bare NaN or Infinity
    assert [r["gpu_max"] for r in summary["cases"]] == [None, None]
    assert summary["mean"] == summary["median"] == {"wall_s": 3.0, "gpu_max": None}


def test_json_safe_reaches_every_depth():
    value = {"a": [1.0, math.nan, {"b": (-math.inf, np.float64("nan"))}], "c": "x", "d": 3}
    assert json_safe(value) == {"a": [1.0, None, {"b": [None, None]}], "c": "x", "d": 3}
