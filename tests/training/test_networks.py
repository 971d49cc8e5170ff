import pytest
import torch
from torch import nn

from tests.helpers import SMALL
from training.networks import (
    PAPER_SPECS,
    build_network,
    count_parameters,
    network_spec,
)
from training.networks.__main__ import PAPER_PARAMETERS
from training.networks.blocks import AXIAL_THEN_THROUGH


@pytest.mark.parametrize("name", sorted(PAPER_SPECS))
def test_paper_sizes_match_the_public_parameter_counts(name):
    n = count_parameters(build_network(network_spec(name)).to("meta"))
    assert abs(n / PAPER_PARAMETERS[name] - 1) < 0.05


@pytest.mark.parametrize("name", ["coarse", "fine"])
def test_stage_networks_keep_the_input_grid(name):
    spec = network_spec(name, **SMALL[name])
    net = build_network(spec).eval()
    s = spec.input_size
    with torch.no_grad():
        out = net(torch.randn(2, 1, s, s, s))
    assert out.shape == (2, 13, s, s, s)
    assert torch.isfinite(out).all()


def test_input_size_must_allow_four_halvings():
    with pytest.raises(ValueError, match="multiple of 16"):
        network_spec("fine", input_size=72)


def test_fine_decoder_convolves_axially_then_through_slices():
    net = build_network(network_spec("fine", **SMALL["fine"]))
    for unit in net.decoder:
        kernels = tuple(m.kernel_size for m in unit.body.modules() if isinstance(m, nn.Conv3d))
        assert kernels == AXIAL_THEN_THROUGH == ((1, 3, 3), (3, 1, 1))
        assert isinstance(unit.shortcut, nn.Identity)


def test_discriminator_keeps_samples_apart():
    spec = network_spec("discriminator", **SMALL["discriminator"])
    torch.manual_seed(0)
    net = build_network(spec).eval()
    s = spec.input_size
    image = torch.randn(3, 1, s, s, s)
    a, b = torch.rand(3, 13, s, s, s), torch.rand(3, 13, s, s, s)
    with torch.no_grad():
        batch = net(image, a, b)
        alone = torch.cat([net(image[i : i + 1], a[i : i + 1], b[i : i + 1]) for i in range(3)])
        swapped = net(image, b, a)
    assert batch.shape == (3, 2)
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)
    # The two candidates have their own stems: swapping them changes the verdict.
    assert not torch.allclose(batch, swapped)
