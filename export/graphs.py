"""The export-only wrapper that turns a stage network into a stage graph."""

import torch
from torch import nn

from inference.stage_info import INPUT_NAME, OUTPUT_NAME
from training.checkpoint import StageSettings
from training.transforms import assign_labels, preprocess, volume_mean

WEIGHT_PREFIX = "net."  # ONNX initializers are named after the wrapper's ``net`` attribute

IO_DESCRIPTION = {
    "coarse": f"{INPUT_NAME}: Z x Y x X int16 HU (any size) -> {OUTPUT_NAME}: S x S x S uint8 "
    "on the network grid (S = input_size), 0 background, 1..13 organs",
    "fine": f"{INPUT_NAME}: Z x Y x X int16 HU crop (any size) -> {OUTPUT_NAME}: Z x Y x X "
    "uint8 on the input grid, 0 background, 1..13 organs",
}


class StageGraph(nn.Module):
    """Network wrapped with its preprocessing and label assignment, as the runtime sees it.

    ``image`` Z x Y x X int16 HU -> ``labels`` uint8: on the network's S^3 grid for the coarse
    stage, resized back to Z x Y x X for the fine stage (see ``IO_DESCRIPTION``). The network
    runs in ``dtype``; intensity statistics stay in fp32.
    """

    def __init__(
        self,
        net: nn.Module,
        input_size: int,
        settings: StageSettings,
        labels_at_input_size: bool,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size
        self.window = settings.hu_window
        self.threshold = settings.threshold
        self.labels_at_input_size = labels_at_input_size
        self.dtype = dtype

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """1 x K x S^3 logits of the network for a Z x Y x X HU volume."""
        x = preprocess(image[None, None], self.input_size, self.window, self.dtype)
        return self.net(x)

    def labels(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The graph's output for ``image`` from its network's ``logits``."""
        size = image.shape if self.labels_at_input_size else None
        return assign_labels(logits, size, self.threshold)[0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.labels(self.logits(image), image)


class HierarchicalInstanceNorm(nn.Module):
    """InstanceNorm3d (no affine) written so ONNX Runtime computes it accurately.

    ONNX Runtime's CPU InstanceNormalization sums a whole channel in one float accumulator: on
    a 16 x 192^3 activation it is off by 1e-3, which 50 layers amplify into 1e-2 on the
    probabilities. ``volume_mean`` keeps each sum short (1e-6), and measured no slower there.
    For fp32 graphs only: in fp16 the squares overflow.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - volume_mean(x)
        return centred * torch.rsqrt(volume_mean(centred * centred) + self.eps)


def with_exportable_norms(module: nn.Module) -> nn.Module:
    """Replace every (non-affine) InstanceNorm3d of ``module`` in place; returns it."""
    for name, child in module.named_children():
        if isinstance(child, nn.InstanceNorm3d):
            if child.affine or child.track_running_stats:
                raise ValueError(f"{name}: only non-affine InstanceNorm3d without stats exports")
            setattr(module, name, HierarchicalInstanceNorm(child.eps))
        else:
            with_exportable_norms(child)
    return module
