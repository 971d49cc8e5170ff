"""ONNX Runtime session options for the stage graphs."""

import onnxruntime as ort


def cpu_session_options(threads: int = 0) -> ort.SessionOptions:
    """Options for running a stage graph once or a few times per process on the CPU.

    Measured on the fine graph with a 300 x 512 x 512 input (2 threads): ORT's default node
    order keeps many full-size per-organ maps alive at once (6.0 GB peak RSS, 23 s);
    ``PRIORITY_BASED`` order releases each before the next (3.2 GB, 16 s). The memory pattern
    is planned per input shape and, from the second run on, pre-allocates the first run's peak
    (5.5 GB); every CT has its own shape, so it only costs. ``threads=0`` lets ORT choose.
    """
    opts = ort.SessionOptions()
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    opts.enable_mem_pattern = False
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts
