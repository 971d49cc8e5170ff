"""inference.sessions: the options each device's sessions get."""

import onnxruntime as ort

from inference.sessions import CUDA_PROVIDER_OPTIONS, RuntimeConfig, cpu_session_options

SHRINK = "memory.enable_memory_arena_shrinkage"


def test_cuda_sessions_get_the_fp16_graphs_and_the_chosen_provider_options():
    config = RuntimeConfig.for_device("cuda")
    assert config.precision == "fp16"
    [(name, options), fallback] = config.providers()
    assert (name, fallback) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert options == CUDA_PROVIDER_OPTIONS
    assert options["cudnn_conv_algo_search"] == "DEFAULT"
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert config.run_options().get_run_config_entry(SHRINK) == "cpu:0;gpu:0"


def test_cpu_sessions_get_the_fp32_graphs_and_lean_memory_options():
    config = RuntimeConfig.for_device("cpu")
    assert config.precision == "fp32" and config.providers() == ["CPUExecutionProvider"]
    assert config.run_options().get_run_config_entry(SHRINK) == "cpu:0"
    for opts in (config.session_options(), cpu_session_options(threads=2)):
        assert opts.execution_order == ort.ExecutionOrder.PRIORITY_BASED
        assert not opts.enable_mem_pattern
    assert cpu_session_options(threads=2).intra_op_num_threads == 2
