"""inference.transforms: numpy's preprocessing and label assignment against torch's
(training.transforms, which the graphs export) and against the shipped graph's own."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from benchmarks.pipeline import FLARE_SPACING, make_case
from inference import transforms as T
from inference.hu import as_int16_hu
from inference.orientation import Orientation
from inference.roi import fine_region
from inference.stage_info import INPUT_NAME, StageInfo
from tests.helpers import ROOT, SAMPLE_CT
from training import transforms as R

WINDOW = (-325.0, 325.0)


@pytest.mark.parametrize(
    ("shape", "size"),
    [((37, 50, 61), 32), ((2, 3, 70), 16), ((64, 120, 90), 48), ((5, 9, 7), 24)],
)
def test_network_input_is_the_graphs_preprocessing(shape, size):
    volume = np.random.default_rng(1).normal(0, 400, shape).astype(np.int16)
    ours = T.network_input(volume, size, WINDOW)
    theirs = R.preprocess(torch.from_numpy(volume)[None, None], size, WINDOW).numpy()
    assert ours.shape == theirs.shape == (1, 1, size, size, size)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_network_input_of_a_constant_volume_is_finite():
    ours = T.network_input(np.full((4, 5, 6), 40, np.int16), 8, WINDOW)
    assert np.isfinite(ours).all() and not ours.any()


def smooth_logits(k: int, side: int, seed: int) -> np.ndarray:
    """Organ-like logits: smooth random fields, each above 0 in a few blobs."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(0, 1, (1, k, 4, 4, 4)).astype(np.float32))
    return (F.interpolate(coarse, size=(side,) * 3, mode="trilinear") * 6 - 5)[0].numpy()


@pytest.mark.parametrize(
    ("side", "size"), [(24, (30, 50, 17)), (32, (9, 100, 64)), (20, (20, 20, 20)), (48, (7, 5, 3))]
)
def test_labels_at_size_are_the_graphs_label_assignment(side, size):
    logits = smooth_logits(13, side, seed=side)
    theirs = R.assign_labels(torch.from_numpy(logits)[None], size, 0.5)[0].numpy()
    ours = T.labels_at_size(logits, size, 0.5)
    np.testing.assert_array_equal(ours, theirs)
    assert len(np.unique(theirs)) > 3  # several organs win somewhere
    grid = R.assign_labels(torch.from_numpy(logits)[None], None, 0.5)[0].numpy()
    np.testing.assert_array_equal(T.labels_on_grid(logits, 0.5), grid)


def test_outside_its_box_an_organ_never_reaches_the_threshold():
    logit = smooth_logits(1, 24, seed=3)[0]
    size = (40, 13, 31)
    taps = [T.linear_taps(24, n) for n in size]
    box = T.organ_box(logit, 0.0, taps)
    full = R.resize(torch.from_numpy(logit)[None, None], size)[0, 0].numpy()
    outside = np.ones(size, bool)
    outside[box] = False
    assert outside.any() and full[box].max() > 0  # the box is a real part of the volume
    assert full[outside].max() <= 0
    assert T.organ_box(np.full((4, 4, 4), -3, np.float32), 0.0, taps) is None


def split_fine_graph(path):
    """The shipped fine graph cut in two: its network (normalised cube -> logits) and its
    label assignment (image, logits -> labels), as ONNX Runtime sessions."""
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    cube, logits = nodes[convs[0]].input[0], nodes[convs[-1]].output[0]

    def session(kept, inputs, outputs):
        graph = onnx.helper.make_graph(kept, "part", inputs, outputs, model.graph.initializer)
        part = onnx.helper.make_model(
            graph, opset_imports=model.opset_import, ir_version=model.ir_version
        )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # each part leaves the other's initializers unused
        return ort.InferenceSession(part.SerializeToString(), opts)

    def value(name, dtype, shape):
        return onnx.helper.make_tensor_value_info(name, dtype, shape)

    network = session(
        nodes[convs[0] : convs[-1] + 1],
        [value(cube, onnx.TensorProto.FLOAT, [1, 1, None, None, None])],
        [value(logits, onnx.TensorProto.FLOAT, None)],
    )
    tail = [n for n in nodes[convs[-1] + 1 :]] + [
        n for n in nodes[: convs[0]] if n.op_type == "Shape" and n.input[0] == INPUT_NAME
    ]
    assign = session(
        tail,
        [
            value(INPUT_NAME, onnx.TensorProto.INT16, [None, None, None]),
            value(logits, onnx.TensorProto.FLOAT, None),
        ],
        list(model.graph.output),
    )
    return network, assign, logits


@pytest.mark.slow  # the shipped fine network on two real crops (ONNX Runtime, fp32)
def test_box_limited_labels_are_byte_identical_to_the_fine_graphs(tmp_path):
    """Issue 14, item 2: on the bundled CT and the FLARE-sized case, the shipped fine graph's
    own label assignment (ONNX Runtime, all 13 organs upsampled to the whole crop) and
    ``labels_at_size`` (each organ inside its box, numpy) give the same bytes."""
    fine = ROOT / "weights" / "fine_fp32.onnx"
    network, assign, logits_name = split_fine_graph(fine)
    coarse = ort.InferenceSession(str(ROOT / "weights" / "coarse_fp32.onnx"))
    model = onnx.load(str(fine), load_external_data=False)
    info = StageInfo.from_metadata({p.key: p.value for p in model.metadata_props})
    flare = tmp_path / "flare.nii.gz"
    ct = sitk.ReadImage(str(SAMPLE_CT))
    extent_z = ct.GetSize()[2] * ct.GetSpacing()[2]
    make_case(ct, FLARE_SPACING, (512, 512, round(extent_z / FLARE_SPACING[2])), flare)
    for path in (SAMPLE_CT, flare):
        image = sitk.ReadImage(str(path))
        orientation = Orientation.from_direction(image.GetDirection())
        hu = np.ascontiguousarray(orientation.apply(as_int16_hu(sitk.GetArrayFromImage(image))))
        grid = coarse.run(None, {INPUT_NAME: hu})[0]
        spacing = orientation.spacing(image.GetSpacing())
        box, _ = fine_region(grid, hu, spacing, info.roi_margin_mm)
        crop = np.ascontiguousarray(hu[box])
        cube = T.network_input(crop, info.input_size, info.hu_window)
        logits = network.run(None, {network.get_inputs()[0].name: cube})[0]
        theirs = assign.run(None, {INPUT_NAME: crop, logits_name: logits})[0]
        ours = T.labels_at_size(logits[0], crop.shape, info.threshold)
        assert ours.shape == theirs.shape and len(np.unique(theirs)) > 8
        np.testing.assert_array_equal(ours, theirs, err_msg=str(path.name))
