"""One case, end to end: canonical orientation, coarse graph, region, fine graph, components."""

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import EPFail, Fail, RuntimeException

from .components import keep_components
from .hu import as_int16_hu
from .openvino_stage import NOT_INSTALLED, OpenVinoStage
from .orientation import Orientation
from .roi import fine_region
from .sessions import RuntimeConfig
from .stage_info import INPUT_NAME, StageInfo, graph_filename

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """The requested execution provider is not available."""


# What ONNX Runtime raises when the CUDA provider is there but cannot run (no GPU visible, a
# driver too old for the CUDA it was built with).
ORT_ERRORS = (EPFail, Fail, RuntimeException)
# onnxruntime-gpu 1.27+ is built with CUDA 13, whose Linux driver minimum is 580.
GPU_FIX = "run the container with --gpus all and an NVIDIA driver 580 or newer (CUDA 13)"


@dataclass
class Stage:
    session: ort.InferenceSession
    info: StageInfo
    run_options: ort.RunOptions

    def run(self, image: np.ndarray) -> np.ndarray:
        feeds = {INPUT_NAME: np.ascontiguousarray(image)}
        return self.session.run(None, feeds, self.run_options)[0]

    def stop(self) -> None:
        """End a run in progress (from another thread) at ONNX Runtime's next node."""
        self.run_options.terminate = True


def load_stage(weights: Path, stage: str, config: RuntimeConfig) -> Stage:
    """The stage graph of ``config.precision`` as a session on ``config.device``; refused
    (``StageInfoError``) when its metadata says it is another stage, precision or label map."""
    path = weights / graph_filename(stage, config.precision)
    if not path.is_file():
        how = "python -m export writes them"
        if config.precision == "fp16":  # git stores the fp32 graphs only
            how = f"derive them from the fp32 graphs: python -m export --derive {weights}"
        raise FileNotFoundError(f"{path}: no such stage graph ({how})")
    session = ort.InferenceSession(
        str(path), config.session_options(), providers=config.providers()
    )
    got = session.get_providers()
    if config.device == "cuda" and got[0] != "CUDAExecutionProvider":
        raise DeviceError(f"{path}: CUDA was requested but ONNX Runtime gave {got}")
    info = StageInfo.from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    info.check(stage, config.precision, str(path))
    log.info("%s: %s on %s", stage, path.name, got[0])
    return Stage(session, info, config.run_options())


def load_openvino_stage(weights: Path, stage: str, precision: str) -> OpenVinoStage:
    """The network of ``stage``'s fp32 graph, read for OpenVINO at ``precision`` (as
    ``OpenVinoStage`` takes it) and not yet compiled; ``DeviceError`` when OpenVINO is not
    installed."""
    path = weights / graph_filename(stage, "fp32")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stage graph (python -m export writes them)")
    try:
        loaded = OpenVinoStage(path, precision, compile_now=False)
    except ImportError as e:
        raise DeviceError(f"{path}: the openvino engine was asked for, but {NOT_INSTALLED}") from e
    loaded.info.check(stage, "fp32", str(path))
    log.info("%s: the network of %s on OpenVINO %s", stage, path.name, loaded.precision)
    return loaded


AnyStage = Stage | OpenVinoStage


def load_stages(weights: Path, config: RuntimeConfig) -> tuple[AnyStage, AnyStage]:
    """Both stages on ``config.engine``: whole graphs on ONNX Runtime, or the networks on
    OpenVINO: the coarse one in f32 (the fine crop is cut from its labels, and in bf16 518 of
    its 4.1 M labels change on the FLARE-sized case), the fine one at
    ``config.fine_precision``."""
    if config.engine != "openvino":
        return load_stage(weights, "coarse", config), load_stage(weights, "fine", config)
    coarse = load_openvino_stage(weights, "coarse", "f32")
    fine = load_openvino_stage(weights, "fine", config.fine_precision)
    # Compiled side by side: 0.8-1.0 s instead of 1.1-1.2 s on 2 cores. Only the compiles: the
    # reading and cutting above deadlocked now and then in two threads (OpenVinoStage.compile).
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(OpenVinoStage.compile, (coarse, fine)))
    return coarse, fine


def pick_device(device: str) -> str:
    """ "auto" -> "cuda" when ONNX Runtime has the CUDA provider, else "cpu"."""
    if device != "auto":
        return device
    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


@dataclass
class Result:
    labels: np.ndarray  # uint8, the source array's (z, y, x) shape and order
    timings: dict[str, float] = field(default_factory=dict)
    roi_source: str = ""  # where the fine crop came from: "organs", "body" or "volume"


class Segmenter:
    """Loads both stage graphs once; ``segment`` runs one volume through them."""

    def __init__(
        self,
        weights: Path,
        device: str = "auto",
        config: RuntimeConfig | None = None,
        cpu_engine: str = "auto",
    ) -> None:
        """``config`` (the benchmarks' hook) overrides the project's choices for the device.
        ``cpu_engine``: the networks' engine on the CPU (``inference.openvino_stage.CPU_ENGINES``).

        ``device="auto"`` takes the GPU when ONNX Runtime has the CUDA provider and it really
        runs; when it doesn't (the GPU image run without a GPU, a driver too old), it logs one
        warning with the reason and the fix and takes the CPU graphs. ``"cuda"`` raises then.
        """
        self.device = config.device if config else pick_device(device)
        config = config or RuntimeConfig.for_device(self.device, cpu_engine)
        try:
            self.coarse, self.fine = load_stages(weights, config)
        except (DeviceError, FileNotFoundError, *ORT_ERRORS) as e:
            if device != "auto" or self.device != "cuda":
                raise
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            if isinstance(e, FileNotFoundError):  # the GPU works; its fp16 graphs are missing
                log.warning("no fp16 graphs for the GPU: %s; running the CPU graphs", reason)
            else:
                log.warning(
                    "no usable GPU (%s); running the CPU graphs. For the GPU: %s", reason, GPU_FIX
                )
            self.device, config = "cpu", RuntimeConfig.for_device("cpu", cpu_engine)
            self.coarse, self.fine = load_stages(weights, config)
        self.engine = config.engine
        if self.engine == "openvino":
            self.providers = [f"OpenVINO {self.coarse.precision} / {self.fine.precision}"]
        else:
            self.providers = self.coarse.session.get_providers()

    @classmethod
    def from_stages(cls, coarse: Stage, fine: Stage, device: str) -> "Segmenter":
        """A segmenter over stages made elsewhere (another runtime, in the benchmarks)."""
        segmenter = cls.__new__(cls)
        segmenter.device, segmenter.coarse, segmenter.fine = device, coarse, fine
        segmenter.providers = [type(coarse).__name__]
        segmenter.engine = "openvino" if isinstance(fine, OpenVinoStage) else "onnxruntime"
        return segmenter

    @property
    def network_sides(self) -> tuple[int, int]:
        """The cube side each stage's network sees (for the memory estimate)."""
        return self.coarse.info.input_size, self.fine.info.input_size

    def stop(self) -> None:
        """End the networks' work in progress (from another thread); the run raises."""
        self.coarse.stop()
        self.fine.stop()

    def segment(
        self, volume: np.ndarray, spacing_xyz: tuple[float, ...], direction: tuple[float, ...]
    ) -> Result:
        """Labels for a source ``(z, y, x)`` HU volume with SimpleITK spacing and direction."""
        timings = {}
        t = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            timings[name] = now - t
            t = now

        orientation = Orientation.from_direction(direction)
        hu = orientation.apply(as_int16_hu(np.asarray(volume)))
        spacing = orientation.spacing(tuple(spacing_xyz))  # type: ignore[arg-type]
        coarse = self.coarse.run(hu)
        lap("coarse")
        box, roi_source = fine_region(coarse, hu, spacing, self.fine.info.roi_margin_mm)
        lap("region")
        crop = self.fine.run(hu[box])
        lap("fine")
        crop = keep_components(crop, spacing, self.fine.info.min_component_mm3)
        labels = np.zeros(hu.shape, np.uint8)
        labels[box] = crop
        labels = np.ascontiguousarray(orientation.undo(labels))
        lap("post")
        return Result(labels, timings, roi_source)
