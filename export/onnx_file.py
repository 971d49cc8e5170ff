"""Writing stage graphs: torch.onnx export, metadata, manifest."""

import copy
import json
import logging
import subprocess
import warnings
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import onnx
import torch

from inference.organs import LABEL_NAMES
from inference.stage_info import (
    INPUT_NAME,
    NORMALIZATION,
    OUTPUT_NAME,
    StageInfo,
    graph_filename,
)
from training.checkpoint import StageCheckpoint, sha256_file

from .graphs import IO_DESCRIPTION, StageGraph, with_exportable_norms

OPSET = 21
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


def project_version() -> str:
    """``git describe`` of the checkout this code runs from, else the installed version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--tags", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        try:
            return package_version("flare22")
        except PackageNotFoundError:
            return "unknown"


def stage_graph(ckpt: StageCheckpoint, precision: str) -> StageGraph:
    """The torch module that ``export_stage`` turns into ONNX (also the parity reference)."""
    dtype = DTYPES[precision]
    net = ckpt.network().eval().to(dtype)
    return StageGraph(net, ckpt.spec.input_size, ckpt.settings, ckpt.stage == "fine", dtype).eval()


def stage_model(
    ckpt: StageCheckpoint, precision: str, native_norms: bool | None = None
) -> onnx.ModelProto:
    """The ONNX stage graph, without metadata.

    InstanceNorms are exported as ``HierarchicalInstanceNorm`` in fp32 (accurate on ORT's CPU
    kernels) and as ONNX InstanceNormalization in fp16: there the decomposed form would square
    activations in fp16, which overflows past 256, while ORT's CUDA kernel keeps its statistics
    in fp32 and needs no extra full-size buffers. ``native_norms`` overrides the choice.
    """
    graph = stage_graph(ckpt, precision)
    if not (precision == "fp16" if native_norms is None else native_norms):
        graph = with_exportable_norms(graph)
    # An example of unremarkable, distinct sizes so that no axis is specialised to a constant.
    s = ckpt.spec.input_size
    example = torch.zeros((s + 3, s + 5, s + 7), dtype=torch.int16)
    return to_onnx(graph, example, dynamic=True)


def export_stage(
    ckpt: StageCheckpoint, precision: str, out_dir: Path, version: str, source: str
) -> Path:
    """Export one stage at one precision to ``out_dir``; returns the written file."""
    model = stage_model(ckpt, precision)
    info = StageInfo(
        stage=ckpt.stage,
        precision=precision,
        input_size=ckpt.spec.input_size,
        hu_window=ckpt.settings.hu_window,
        normalization=NORMALIZATION,
        labels=LABEL_NAMES,
        threshold=ckpt.settings.threshold,
        roi_margin_mm=ckpt.settings.roi_margin_mm,
        min_component_mm3=ckpt.settings.min_component_mm3,
        opset=OPSET,
        version=version,
        checkpoint_sha256=source,
        network=ckpt.spec.to_json(),
        io=IO_DESCRIPTION[ckpt.stage],
    )
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, info.to_metadata())
    model.doc_string = f"FLARE22 {ckpt.stage} stage graph ({precision}): {info.io}"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / graph_filename(ckpt.stage, precision)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, tmp)
    tmp.replace(path)
    log.info("wrote %s", path)
    return path


def to_onnx(module: torch.nn.Module, example: torch.Tensor, dynamic: bool) -> onnx.ModelProto:
    """Trace ``module`` on one input into an ONNX model (axes dynamic if asked), provenance-free.

    Export-time only: replace InstanceNorms with ``with_exportable_norms`` first.
    """
    dims = {i: torch.export.Dim(axis, min=2) for i, axis in enumerate(("z", "y", "x"))}
    shapes = {INPUT_NAME: dims} if dynamic else None
    # The exporter warns about optional torchvision ops it skips; they are not used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        # torch's exporter trips over its own pytree deprecation; nothing for us to act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    _strip_trace_metadata(model.graph)
    return model


def save_network_graph(net: torch.nn.Module, input_size: int, path: Path) -> Path:
    """The network alone (1 x 1 x S^3 float in, logits out) as an fp32 ONNX file, exported the
    way the stage graphs are; the benchmarks time it against torch and the stage graphs."""
    net = with_exportable_norms(copy.deepcopy(net).eval())
    example = torch.zeros((1, 1, input_size, input_size, input_size))
    onnx.save_model(to_onnx(net, example, dynamic=False), path)
    return path


def _strip_trace_metadata(graph: onnx.GraphProto) -> None:
    """Drop the exporter's per-node provenance (stack traces with this machine's paths).

    It bloats the file and ties its bytes to where the code was checked out.
    """
    for items in (graph.node, graph.input, graph.output, graph.value_info, graph.initializer):
        for item in items:
            del item.metadata_props[:]
    for node in graph.node:
        node.doc_string = ""


def write_manifest(
    out_dir: Path,
    graphs: list[Path],
    version: str,
    sources: dict[str, str],
    training: dict[str, dict] | None = None,
) -> Path:
    """``manifest.json``: every graph with its sha256 and size, the sources, the version, and
    per stage how it was trained (config, epochs, data hashes) when training recorded it."""
    manifest = {
        "version": version,
        "sources": sources,
        "training": training or {},
        "graphs": {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(graphs)
        },
    }
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path
