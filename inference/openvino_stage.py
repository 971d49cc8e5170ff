"""The CPU engine: the stage networks on OpenVINO, their preprocessing and label assignment in
numpy (``inference.transforms``).

OpenVINO runs each network cut out of its stored fp32 graph (``network_of``) in f32; the fine
one in bf16 when asked for (``--cpu-engine openvino``) and the CPU computes bf16 natively
(AVX-512 BF16 or AMX).
The networks then have one shape, compiled once; and the resize and label assignment, whose
sizes follow the input, run where memory stays flat in the number of slices and where each
organ is upsampled only inside the box it can win. Figures: docs/runtime.md ("The CPU engine").

OpenVINO is optional (``pip install openvino``; the CPU image has it); without it the CPU runs
the whole stage graphs on ONNX Runtime, as the GPU does.
"""

from pathlib import Path

import numpy as np

from .stage_info import StageInfo, StageInfoError
from .transforms import labels_at_size, labels_on_grid, network_input

NOT_INSTALLED = "OpenVINO is not installed (pip install openvino)"
# --cpu-engine's choices (python -m inference, benchmarks/pipeline.py).
CPU_ENGINES = ("auto", "onnxruntime", "openvino", "openvino-f32")


def compile_options(precision: str = "bf16") -> dict[str, str]:
    """OpenVINO's CPU compile options for one image at a time, at ``precision`` ("bf16", "f32")."""
    return {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_engine(requested: str) -> str:
    """The networks' engine on the CPU: ``requested``, or for "auto" OpenVINO where it is
    installed, else ONNX Runtime."""
    if requested != "auto":
        return requested
    return "openvino" if openvino_installed() else "onnxruntime"


def fastest_precision(core) -> str:
    """ "bf16" where the CPU computes it natively (elsewhere OpenVINO would emulate it, slower
    than f32), else "f32"."""
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in capabilities else "f32"


def resolve_precision(core, precision: str) -> str:
    """``precision`` ("bf16", "f32"), or for "auto" ``fastest_precision``."""
    return fastest_precision(core) if precision == "auto" else precision


class OpenVinoStage:
    """A stage graph's network compiled by OpenVINO for the CPU, with the graph's preprocessing
    and label assignment done by ``inference.transforms``; used as ``pipeline.Stage`` is.

    The network is cut out of the stored graph (from its first convolution's input to its last
    convolution's output) and compiled once for its cube: its shape never changes, so OpenVINO
    plans its buffers once, and the resize and label assignment, whose sizes follow the input,
    run where their memory stays flat in the number of slices.

    ``precision``: OpenVINO's inference precision hint, "bf16" or "f32"; "auto" takes
    ``fastest_precision``. ``compile_now=False`` reads and cuts the network only; ``compile``
    then makes it runnable, from any thread.
    """

    def __init__(self, path: Path, precision: str = "bf16", *, compile_now: bool = True) -> None:
        import openvino as ov

        self._core = core = ov.Core()
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
        self.precision = resolve_precision(core, precision)
        self._network = network_of(model, self.info.input_size, str(path))
        keep_means_short(self._network)
        self._compiled = None
        self._request = None
        self._stopped = False
        if compile_now:
            self.compile()

    def compile(self) -> None:
        """Compile the network for the CPU (most of the load time; it can run beside another
        stage's in a second thread). Reading and cutting stay on the constructing thread: they
        hand numpy arrays across OpenVINO's Python bindings, and pybind11's numpy set-up, done
        for the first time in two threads at once, deadlocked them (1 start in 12 here)."""
        if self._compiled is None:
            options = compile_options(self.precision)
            self._compiled = self._core.compile_model(self._network, "CPU", options)
            self._network = None

    def run(self, image: np.ndarray) -> np.ndarray:
        info = self.info
        x = network_input(image, info.input_size, info.hu_window)
        self.compile()  # when it was not compiled yet
        self._request = self._compiled.create_infer_request()
        try:
            if self._stopped:  # stop() came while nothing ran
                raise RuntimeError("stopped")
            # share_outputs: the logits stay in the request's buffer (368 MB for the fine
            # network) instead of being copied next to it.
            logits = self._request.infer([x], share_outputs=True)[0][0]
            if self._stopped:
                raise RuntimeError("stopped")
            if info.stage == "fine":  # as export.graphs.StageGraph: fine labels at crop size
                return labels_at_size(logits, image.shape, info.threshold)
            return labels_on_grid(logits, info.threshold)
        finally:
            # The compiled network keeps its working memory (about 0.8 GB) past its requests;
            # handed back after each run, the two stages' never add up.
            self._request = None
            self._compiled.release_memory()

    def stop(self) -> None:
        """End a run in progress (from another thread); ``run`` raises, now and after."""
        self._stopped = True
        request = self._request
        if request is not None:
            request.cancel()


def network_of(model, size: int, source: str):
    """The network inside an OpenVINO stage ``model``: a 1 x 1 x ``size``^3 float input in
    place of the graph's preprocessing, the last convolution's logits as its output.

    Relies on the layout ``export.graphs.StageGraph`` gives every stage graph: preprocessing
    without convolutions, then the network, then label assignment without convolutions.
    """
    import openvino as ov
    import openvino.opset13 as ops

    convs = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    if not convs:
        raise StageInfoError(f"{source}: no convolution, so no network to cut out of the graph")
    network_input_ = convs[0].input(0).get_source_output()
    x = ops.parameter([1, 1, size, size, size], ov.Type.f32, name="x")
    network_input_.replace(x.output(0))  # every reader of the normalised cube reads x instead
    return ov.Model([ops.result(convs[-1].output(0))], [x], "network")


def keep_means_short(model) -> None:
    """Make each ReduceMean of ``model`` a ReduceSum and a scale, in place.

    The graphs take every mean one axis at a time (``training.transforms.volume_mean``), so no
    float sum runs long. OpenVINO merges consecutive ReduceMeans into one over the whole
    volume, and its one long sum is off by 0.4 % on a 160^3 variance: the coarse network's
    logits then differ from ONNX Runtime's by 0.02 on average and up to 1.3, and 747 voxels
    of its 160^3 labels change. It does not merge ReduceSums that a Multiply separates: 1.5e-4
    at most and no label changed, and the fine network in bf16 ran 1.2x faster.
    """
    import openvino.opset13 as ops

    for op in model.get_ordered_ops():
        if op.get_type_name() != "ReduceMean":
            continue
        source = op.input(0).get_source_output()
        axes = op.input(1).get_source_output().get_node().get_data().reshape(-1).astype(np.int64)
        shape = source.get_partial_shape().to_shape()
        count = int(np.prod([shape[int(a)] for a in axes]))
        total = ops.reduce_sum(source, ops.constant(axes), op.get_attributes()["keep_dims"])
        op.output(0).replace(ops.multiply(total, ops.constant(np.float32(1.0 / count))).output(0))
    model.validate_nodes_and_infer_types()
