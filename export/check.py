"""Parity of exported stage graphs against torch.

Each graph is checked against the torch ``StageGraph`` rebuilt from the graph alone: the
architecture from its metadata, the weights from its initializers. So a check needs no
checkpoint and verifies exactly the file that ships. fp32 graphs must match torch's
probabilities on the network grid within ``PROB_TOL`` (on all but 0.01 % of the values, and
within ``PROB_TOL_MAX`` on every one) and its labels on ``LABEL_AGREEMENT`` of voxels. The
0.01 % allowance is for fp32 itself: deep networks amplify rounding, and on the paper-size
coarse network with random weights torch fp32 differs from torch fp64 by up to 1.3e-4, so no
fp32 runtime can be held to 1e-4 on every value against torch fp32. fp16 graphs must agree
on ``FP16_AGREEMENT`` of voxels with the labels of an fp32 graph of the same structure. On a CPU,
ONNX Runtime runs fp16 graphs by casting to fp32 around each kernel, so there the fp16 check
measures the rounding of weights and activations between kernels, not GPU fp16 arithmetic.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from inference.sessions import cpu_session_options
from inference.stage_info import (
    INPUT_NAME,
    OUTPUT_NAME,
    StageInfo,
    StageInfoError,
    graph_filename,
)
from training.checkpoint import StageCheckpoint, StageSettings
from training.networks import NetworkSpec, build_network

from .graphs import WEIGHT_PREFIX
from .onnx_file import stage_graph, stage_model

PROB_TOL = 1e-4
PROB_TOL_QUANTILE = 0.9999
PROB_TOL_MAX = 1e-3
LABEL_AGREEMENT = 0.9999
FP16_AGREEMENT = 0.995
HEAD_WEIGHT = WEIGHT_PREFIX + "head.weight"  # the final 1x1x1 conv: its output is the logits


@dataclass(frozen=True)
class ParityResult:
    graph: str
    case: str
    reference: str  # what the graph was compared with
    max_prob_diff: float | None  # None where probabilities were not compared
    quantile_prob_diff: float | None  # the PROB_TOL_QUANTILE quantile of |dp|
    label_agreement: float
    passed: bool


def load_stage(path: Path) -> tuple[onnx.ModelProto, StageInfo, StageCheckpoint]:
    """The graph, its metadata, and the torch checkpoint rebuilt from its initializers."""
    model = onnx.load(path)
    info = StageInfo.from_metadata({p.key: p.value for p in model.metadata_props}, str(path))
    spec = NetworkSpec.from_json(info.network)
    weights = {
        init.name[len(WEIGHT_PREFIX) :]: init
        for init in model.graph.initializer
        if init.name.startswith(WEIGHT_PREFIX)
    }
    state = {}
    for name, ref in build_network(spec).state_dict().items():
        if name not in weights:
            raise StageInfoError(f"{path}: graph carries no weight {WEIGHT_PREFIX + name!r}")
        array = onnx.numpy_helper.to_array(weights[name]).astype(np.float32)
        state[name] = torch.from_numpy(array).reshape(ref.shape)
    settings = StageSettings(
        info.hu_window, info.threshold, info.roi_margin_mm, info.min_component_mm3
    )
    return model, info, StageCheckpoint(spec, settings, state)


def session_with_logits(model: onnx.ModelProto) -> tuple[ort.InferenceSession, str]:
    """A CPU session that also returns the network's logits (the head conv's output)."""
    model = copy.deepcopy(model)
    head = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] == HEAD_WEIGHT)
    elem = model.graph.initializer[0].data_type
    model.graph.output.append(onnx.helper.make_tensor_value_info(head.output[0], elem, None))
    session = ort.InferenceSession(
        model.SerializeToString(), cpu_session_options(), providers=["CPUExecutionProvider"]
    )
    return session, head.output[0]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def check_weights(weights: Path, cases: dict[str, np.ndarray]) -> list[ParityResult]:
    """Check every stage graph in ``weights`` on each Z x Y x X int16 volume of ``cases``."""
    results = []
    for stage in ("coarse", "fine"):
        fp32_path = weights / graph_filename(stage, "fp32")
        fp16_path = weights / graph_filename(stage, "fp16")
        if not fp32_path.exists():
            continue
        model, _, ckpt = load_stage(fp32_path)
        reference = stage_graph(ckpt, "fp32")
        session, logits_name = session_with_logits(model)
        fp16 = fp16_reference = None
        if fp16_path.exists():
            fp16 = ort.InferenceSession(
                str(fp16_path), cpu_session_options(), providers=["CPUExecutionProvider"]
            )
            # The fp16 graph keeps ONNX InstanceNormalization (see ``stage_model``), whose CPU
            # kernel is less accurate than the fp32 graph's form: compare it with an fp32 graph
            # of the same structure, so the figure is the rounding to fp16 alone.
            fp16_reference = ort.InferenceSession(
                stage_model(ckpt, "fp32", native_norms=True).SerializeToString(),
                cpu_session_options(),
                providers=["CPUExecutionProvider"],
            )
        for case, image in cases.items():
            labels, logits = session.run([OUTPUT_NAME, logits_name], {INPUT_NAME: image})
            with torch.no_grad():
                tensor = torch.from_numpy(image)
                ref = reference.logits(tensor)
                ref_logits, ref_labels = ref.numpy(), reference.labels(ref, tensor).numpy()
            diff = np.abs(_sigmoid(logits) - _sigmoid(ref_logits))
            worst, quantile = float(diff.max()), float(np.quantile(diff, PROB_TOL_QUANTILE))
            agree = float((labels == ref_labels).mean())
            passed = quantile <= PROB_TOL and worst <= PROB_TOL_MAX and agree >= LABEL_AGREEMENT
            results.append(
                ParityResult(fp32_path.name, case, "torch fp32", worst, quantile, agree, passed)
            )
            if fp16 is not None and fp16_reference is not None:
                half = fp16.run(None, {INPUT_NAME: image})[0]
                full = fp16_reference.run(None, {INPUT_NAME: image})[0]
                agree16 = float((half == full).mean())
                results.append(
                    ParityResult(
                        fp16_path.name,
                        case,
                        "fp32 twin",
                        None,
                        None,
                        agree16,
                        agree16 >= FP16_AGREEMENT,
                    )
                )
    return results


def random_cases(seed: int, shapes: tuple[tuple[int, int, int], ...]) -> dict[str, np.ndarray]:
    """Smooth random HU volumes: noise blurred into blobs spanning air to bone."""
    rng = np.random.default_rng(seed)
    cases = {}
    for shape in shapes:
        coarse = rng.uniform(-1000, 1500, size=tuple(max(2, s // 8) for s in shape))
        smooth = torch.nn.functional.interpolate(
            torch.from_numpy(coarse)[None, None], size=shape, mode="trilinear"
        )[0, 0].numpy()
        noise = rng.normal(0, 30, size=shape)
        cases["random " + "x".join(map(str, shape))] = (smooth + noise).astype(np.int16)
    return cases
