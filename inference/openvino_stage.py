"""The fine stage on OpenVINO in bf16: the CPU path's faster engine, where the CPU has bf16.

The fine graph's convolutions are most of a CPU case's time. OpenVINO runs the stored fp32
graph with bf16 arithmetic on CPUs with native bf16 (AVX-512 BF16 or AMX): on a 2-core AVX-512
BF16 machine the FLARE-sized case takes about 1.35x less time and 0.8 GB less memory than with
ONNX Runtime fp32, and the labels agree with it on 99.99 % of voxels (docs/runtime.md). The
coarse stage stays on ONNX Runtime fp32 on purpose: the fine crop is cut from its map, and any
other engine's rounding moves that box by a slice now and then, which changes more labels than
bf16 does.

OpenVINO is optional (``pip install openvino``; the CPU image has it). Without it, or on a CPU
without native bf16, where OpenVINO would emulate bf16 or run f32 no faster than ONNX Runtime,
the fine stage runs on ONNX Runtime.
"""

from pathlib import Path

import numpy as np

from .stage_info import StageInfo, StageInfoError

NOT_INSTALLED = "OpenVINO is not installed (pip install openvino)"
# --cpu-engine's choices (python -m inference, benchmarks/pipeline.py).
CPU_ENGINES = ("auto", "onnxruntime", "openvino")


def compile_options(precision: str = "bf16") -> dict[str, str]:
    """OpenVINO's CPU compile options for one image at a time, at ``precision`` ("bf16", "f32")."""
    return {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}


def openvino_bf16_reason() -> str | None:
    """None when OpenVINO is installed and the CPU computes bf16 natively; else why not."""
    try:
        import openvino as ov
    except ImportError:
        return NOT_INSTALLED
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        return "this CPU has no native bf16 (AVX-512 BF16 or AMX)"
    return None


def cpu_engine(requested: str) -> str:
    """The fine stage's engine on the CPU: ``requested``, or for "auto" OpenVINO where
    ``openvino_bf16_reason`` finds nothing against it, else ONNX Runtime."""
    if requested != "auto":
        return requested
    return "openvino" if openvino_bf16_reason() is None else "onnxruntime"


class OpenVinoStage:
    """A stage graph compiled by OpenVINO for the CPU, used as ``pipeline.Stage`` is.

    ``precision``: OpenVINO's inference precision hint, "bf16" (the runtime's) or "f32".
    """

    def __init__(self, path: Path, precision: str = "bf16") -> None:
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as e:  # how OpenVINO reports a file it cannot parse
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
            raise StageInfoError(f"{path}: OpenVINO cannot read it ({reason})") from e
        # OpenVINO's ONNX reader keeps the graph's metadata_props under "framework".
        framework = {}
        if model.has_rt_info(["framework"]):
            framework = model.get_rt_info(["framework"]).astype(dict)
        metadata = {key: value.astype(str) for key, value in framework.items()}
        self.info = StageInfo.from_metadata(metadata, str(path))
        self._core, self._model = core, model
        self._config = compile_options(precision)
        self._request = None
        self._stopped = False

    def run(self, image: np.ndarray) -> np.ndarray:
        # Compiled for each input's shape (0.8 s on 2 cores), not once for any shape: with the
        # shape fixed OpenVINO plans its buffers. On the crop of a 536-slice case the run then
        # takes 5.2 s and 2.6 GB instead of 11.7 s and 4.8 GB; on the FLARE-sized crop 1 GB
        # less in about the same time (the compile can no longer hide behind the coarse stage).
        self._model.reshape({0: list(image.shape)})
        compiled = self._core.compile_model(self._model, "CPU", self._config)
        self._request = compiled.create_infer_request()
        try:
            if self._stopped:  # stop() came while compiling, when there was nothing to cancel
                raise RuntimeError("stopped")
            return self._request.infer([np.ascontiguousarray(image)])[0]
        finally:
            # Released after each case: its buffers go, and held, it slowed ONNX Runtime's
            # coarse stage of the next case in a batch from 2.9 s to 3.5-4.2 s (FLARE-sized).
            self._request = None

    def stop(self) -> None:
        """End a run in progress (from another thread); ``run`` raises, now and after."""
        self._stopped = True
        request = self._request
        if request is not None:
            request.cancel()
