"""``python -m training.networks``: parameter counts and compute of the paper-size networks."""

import sys

import torch
from torch import nn

from . import PAPER_SPECS, build_network, count_parameters, network_spec

# Parameter counts of the public code, which the paper's networks must land near.
PAPER_PARAMETERS = {"coarse": 2.68e6, "fine": 9.4e6, "discriminator": 14.5e6}


def conv_macs(net: nn.Module, inputs: list[torch.Tensor]) -> int:
    """Multiply-accumulates of every Conv3d in one forward (shapes only, on the meta device)."""
    total = 0

    def count(m: nn.Conv3d, _: object, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * m.kernel_size[2]
        total += out.numel() * (m.in_channels // m.groups) * k

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv3d)]
    with torch.no_grad():
        net.eval()(*inputs)
    for h in hooks:
        h.remove()
    return total


def main(argv: list[str] | None = None) -> int:
    del argv
    print(f"{'network':<14} {'input':>9} {'parameters':>12} {'paper':>8} {'diff':>7} {'GMACs':>7}")
    for name in PAPER_SPECS:
        spec = network_spec(name)
        net = build_network(spec).to("meta")
        s = spec.input_size
        inputs = [torch.empty(1, 1, s, s, s, device="meta")]
        if name == "discriminator":
            inputs += [torch.empty(1, spec.num_classes, s, s, s, device="meta")] * 2
        n = count_parameters(net)
        paper = PAPER_PARAMETERS[name]
        diff = 100 * (n / paper - 1)
        gmacs = conv_macs(net, inputs) / 1e9
        size = f"1x{s}^3"
        print(f"{name:<14} {size:>9} {n:>12,} {paper / 1e6:>7.2f}M {diff:>+6.1f}% {gmacs:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
