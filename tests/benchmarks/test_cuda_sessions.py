"""benchmarks/cuda_sessions.py: variants, stage attribution and summaries (no GPU needed)."""

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.cuda_sessions import (
    VARIANTS,
    main,
    mean_dice,
    run_once,
    stage_peaks,
    summarize,
    variant_config,
)
from inference.sessions import RuntimeConfig
from tests.helpers import SAMPLE_CT


def changed_fields(a: RuntimeConfig, b: RuntimeConfig) -> set[str]:
    out = {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    if "provider_options" in out:
        out.remove("provider_options")
        pa, pb = a.provider_options, b.provider_options
        out |= {k for k in pa.keys() | pb.keys() if pa.get(k) != pb.get(k)}
    return out


def test_each_ablation_changes_exactly_one_choice():
    chosen = variant_config("chosen")
    assert chosen == RuntimeConfig.for_device("cuda")
    expected = {
        "heuristic": {"cudnn_conv_algo_search"},
        "exhaustive": {"cudnn_conv_algo_search"},
        "max-workspace": {"cudnn_conv_use_max_workspace"},
        "pow2-arena": {"arena_extend_strategy"},
        "default-order": {"execution_order"},
        "no-shrink": {"shrink_arenas"},
        "nhwc": {"prefer_nhwc"},
        "fp32": {"precision"},
    }
    for name, fields in expected.items():
        assert changed_fields(variant_config(name), chosen) == fields, name
    default = variant_config("ort-default")
    assert default.provider_options == {} and not default.shrink_arenas
    opts = default.session_options()
    plain = ort.SessionOptions()
    assert (opts.execution_order, opts.enable_mem_pattern) == (
        plain.execution_order,
        plain.enable_mem_pattern,
    )
    assert variant_config("cpu") == RuntimeConfig.for_device("cpu")
    assert set(VARIANTS) == {"chosen", "ort-default", "cpu", *expected}


def test_stage_peaks_place_the_stages_on_the_sampled_timeline():
    record = {"t0": 10.0, "read": 1.0, "coarse": 2.0, "region": 0.5, "fine": 1.0}
    # (wall clock, MiB): sessions made by 10.0; coarse runs 11-13; region 13-13.5; fine 13.5-14.5
    samples = [(9.0, 500.0), (10.5, 600.0), (11.5, 900.0), (13.2, 950.0), (13.8, 1500.0)]
    samples.append((15.0, 100.0))
    assert stage_peaks(samples, record) == {
        "sessions_mib": 500.0,
        "coarse_mib": 900.0,
        "fine_mib": 1500.0,
    }
    assert stage_peaks([], record) == dict.fromkeys(("sessions_mib", "coarse_mib", "fine_mib"))


def test_summary_takes_median_times_and_the_worst_memory():
    def run(wall: float, mib: float | None) -> dict:
        stages = dict.fromkeys(("read", "coarse", "region", "fine", "post", "write", "total"), 1.0)
        return {
            "wall": wall,
            "sessions": 0.5,
            **stages,
            "process_peak_mib": mib,
            "device_peak_mib": mib,
            "providers": ["CUDAExecutionProvider"],
            "shape": [1, 2, 3],
            "roi_source": "organs",
        }

    row = summarize([run(3.0, 1800.0), run(1.0, 1900.0), run(2.0, None)])
    assert row["wall"] == 2.0
    assert row["process_peak_mib"] == 1900.0
    assert row["sessions_mib"] is None  # not sampled: no GPU
    assert summarize([{"error": "boom"}]) == {"error": "boom"}


def test_mean_dice_over_the_organs_either_map_has():
    a = np.array([0, 1, 1, 2, 2, 0])
    b = np.array([0, 1, 0, 2, 2, 3])
    # organ 1: 2*1/3, organ 2: 1, organ 3: 0
    assert mean_dice(a, b) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert mean_dice(np.zeros(4), np.zeros(4)) == 1.0


def test_a_cpu_run_goes_through_a_fresh_process(tmp_path, small_weights):
    result = run_once(None, "cpu", small_weights, SAMPLE_CT, tmp_path / "out")
    assert "error" not in result, result
    assert result["providers"] == ["CPUExecutionProvider"]
    assert result["process_peak_mib"] is None  # no GPU sampled
    assert result["wall"] > result["total"] > 0
    assert (tmp_path / "out" / "example_ct.nii.gz").is_file()


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="needs the CPU build"
)
def test_cuda_variants_without_cuda_are_refused(tmp_path, capsys):
    assert main(["--variants", "chosen", "--out", str(tmp_path / "r.json")]) == 2
    assert "no CUDA provider" in capsys.readouterr().err
