"""How the stage sessions are made and run: ONNX Runtime options per device, with the reasons.

``RuntimeConfig.for_device`` gives the project's choices; ``benchmarks/cuda_sessions.py``
changes one of them at a time and measures the whole process's GPU peak and time. GPU figures
below: NVIDIA H200, onnxruntime-gpu 1.31.1, the shipped fp16 graphs, a fresh process per case
on the bundled CT resampled to 0.8 x 0.8 x 2.5 mm (134 x 512 x 512) and to 600 slices.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import onnxruntime as ort

from .openvino_stage import cpu_engine as resolve_cpu_engine

# The CUDA provider for one-shot runs (the challenge times a fresh container per case) and a
# whole-process GPU peak under 2048 MiB. With all three and the options of RuntimeConfig:
# 1780 / 1876 MiB (134 / 600 slices) against ONNX Runtime's defaults' 4990 / 5016 MiB.
CUDA_PROVIDER_OPTIONS: dict[str, str] = {
    # cuDNN's implicit-GEMM algorithm, without asking cuDNN to choose. EXHAUSTIVE (the default)
    # times every algorithm of every new convolution shape in each process, paid on every case:
    # 1.4-1.7 s more per case than HEURISTIC, 0.7-0.9 s per stage (whole process 4.05 / 4.26 /
    # 5.58 s against 2.35 / 2.89 / 3.99 s at 134 / 300 / 600 slices: docs/runtime.md).
    # HEURISTIC asks cuDNN to pick: 274 MiB more GPU memory in every case and a slower coarse
    # stage (0.51 / 0.53 / 0.62 s against 0.45 / 0.36 / 0.41 s at 134 / 300 / 600 slices, in
    # ONNX Runtime's default node order).
    # ONNX Runtime logs a "Fallback mode" warning per convolution; the CLI silences it.
    "cudnn_conv_algo_search": "DEFAULT",
    # No effect with the implicit-GEMM algorithm; the default lets cuDNN take any workspace.
    "cudnn_conv_use_max_workspace": "0",
    # The default arena grows in powers of two: 2932 instead of 1826 MiB peak.
    "arena_extend_strategy": "kSameAsRequested",
}


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything that decides how a stage graph becomes a session and runs on one device."""

    device: str  # "cuda" or "cpu"
    precision: str  # which graph file: "fp16" on the GPU, "fp32" on the CPU
    provider_options: Mapping[str, str] = field(default_factory=dict)
    # PRIORITY_BASED releases each full-size per-organ map of the fine graph's label assignment
    # before the next is made; ORT's default order keeps more alive. CPU, fine graph on a
    # 300 x 512 x 512 input (2 threads): 3.2 GB peak RSS and 16 s against 6.0 GB and 23 s.
    # GPU: 1780 / 1876 MiB against 1826 / 2066 MiB (134 / 600 slices), same time.
    execution_order: str = "PRIORITY_BASED"
    # The memory pattern is planned per input shape and pre-allocates the first run's peak from
    # the second run on; every CT has its own shape, so it only costs (5.5 GB on that input).
    memory_pattern: bool = False
    threads: int = 0  # CPU threads per session; 0 lets ORT choose
    # Both stage sessions live in one process; without the shrink each keeps its arena at its
    # own peak, so the fine stage runs on top of the coarse stage's. CPU, 134 x 512 x 512 case:
    # 2.9 GB peak RSS instead of 4.3 GB at the same speed (no arena at all: 2.3 GB, 1.4 s
    # slower). GPU: 1826 instead of 2626 MiB (134 slices), 2066 instead of 3080 (600 slices).
    shrink_arenas: bool = True
    # The networks' engine: "openvino" runs them alone, cut out of the fp32 graphs, with the
    # graphs' pre- and post-processing in numpy (CPU only; inference.openvino_stage);
    # "onnxruntime" runs the whole graphs.
    engine: str = "onnxruntime"
    # The fine network's precision on OpenVINO: "auto" (bf16 where the CPU has it natively) or
    # "f32" (--cpu-engine openvino-f32: ONNX Runtime fp32's labels, 1.25x faster than it).
    fine_precision: str = "auto"

    @classmethod
    def for_device(cls, device: str, cpu_engine: str = "onnxruntime") -> "RuntimeConfig":
        """The project's choices for ``device`` ("cuda" or "cpu"); on the CPU, ``cpu_engine``
        runs the networks ("auto": ``inference.openvino_stage.cpu_engine`` decides)."""
        if device == "cuda":
            return cls("cuda", "fp16", dict(CUDA_PROVIDER_OPTIONS))
        # "openvino" runs the fine network in bf16 where the CPU has it; "auto" (when OpenVINO
        # is installed) and "openvino-f32" in f32: bf16 took a 12 mL organ of the bundled CT
        # under the labels criterion (DSC 0.988 against ONNX Runtime fp32).
        engine = resolve_cpu_engine(cpu_engine.removesuffix("-f32"))
        fine_precision = "auto" if cpu_engine == "openvino" else "f32"
        return cls("cpu", "fp32", engine=engine, fine_precision=fine_precision)

    def providers(self) -> list:
        if self.device == "cuda":
            return [("CUDAExecutionProvider", dict(self.provider_options)), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def session_options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.execution_order = getattr(ort.ExecutionOrder, self.execution_order)
        opts.enable_mem_pattern = self.memory_pattern
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        return opts

    def run_options(self) -> ort.RunOptions:
        opts = ort.RunOptions()
        if self.shrink_arenas:
            arenas = "cpu:0;gpu:0" if self.device == "cuda" else "cpu:0"
            opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
        return opts


def cpu_session_options(threads: int = 0) -> ort.SessionOptions:
    """The project's CPU session options (see ``RuntimeConfig``), for tools that make sessions."""
    return RuntimeConfig("cpu", "fp32", threads=threads).session_options()
