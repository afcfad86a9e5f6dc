import math

import pytest
import torch

from dpsnn import LaplaceNoise
from dpsnn.defences import Laplace, make_defence, parse_defence
from dpsnn.errors import ConfigError


@pytest.mark.parametrize("scale", [0.1, 0.5, 2.0])
def test_noise_statistics(scale):
    torch.manual_seed(0)
    x = torch.zeros(400_000)
    noise = LaplaceNoise(scale)(x)
    assert abs(noise.mean().item()) < 0.01 * scale * 3
    assert noise.std().item() == pytest.approx(math.sqrt(2) * scale, rel=0.01)
    # Laplace, not Gaussian: P(|n| > b) = exp(-1)
    assert (noise.abs() > scale).float().mean().item() == pytest.approx(math.exp(-1), abs=0.005)


def test_noise_is_added_in_evaluation_too():
    wire = LaplaceNoise(1.0).eval()
    x = torch.zeros(1000)
    assert not torch.equal(wire(x), x)
    assert not torch.equal(wire(x), wire(x))


def test_zero_scale_is_the_identity():
    x = torch.randn(10, 500)
    assert LaplaceNoise(0.0)(x) is x


def test_noise_keeps_dtype_and_device_and_follows_the_seed():
    x = torch.zeros(5, 7, dtype=torch.float64)
    torch.manual_seed(1)
    first = LaplaceNoise(0.3)(x)
    torch.manual_seed(1)
    second = LaplaceNoise(0.3)(x)
    assert first.dtype == torch.float64 and first.device == x.device
    assert torch.equal(first, second)


def test_gradient_passes_through():
    x = torch.randn(4, 3, requires_grad=True)
    LaplaceNoise(0.5)(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("scale", [-0.5, float("nan"), float("inf"), "loud", None])
def test_bad_scales_are_refused(scale):
    with pytest.raises(ConfigError, match="noise scale"):
        LaplaceNoise(scale)


def test_scale_can_be_changed_but_not_to_a_bad_value():
    wire = LaplaceNoise(0.0)
    wire.scale = 0.2
    assert wire.scale == 0.2
    with pytest.raises(ConfigError):
        wire.scale = -1
    assert wire.scale == 0.2


@pytest.mark.parametrize("scale,key", [(0.0, "0noise"), (0.5, "05noise"), (0.25, "025noise"), (1, "1noise")])
def test_the_laplace_spec_names_itself_as_the_reference_did(scale, key):
    spec = Laplace(scale=scale)
    assert spec.key() == key
    assert spec.label() == f"noise {float(scale):g}"
    assert spec.spec() == f"laplace(scale={float(scale):g})"
    assert isinstance(spec.scale, float)


def test_the_laplace_spec_puts_its_noise_on_the_wire_and_nothing_in_the_loss():
    spec = Laplace(scale=0.5)
    wire = spec.wire()
    assert isinstance(wire, LaplaceNoise) and wire.scale == 0.5
    x, h = torch.rand(4, 1, 28, 28), torch.rand(4, 500)
    assert spec.loss_terms(x, h, torch.randn(4, 10), torch.arange(4)) == {}
    assert not spec.couples_samples and not spec.per_sample
    assert spec.strength == "scale" and Laplace(scale=0.0).is_identity()


def test_the_laplace_spec_from_text():
    assert parse_defence("laplace:scale=0.5") == Laplace(scale=0.5)
    assert parse_defence("laplace(scale=0.5)") == Laplace(scale=0.5)
    assert make_defence("laplace", {"scale": "0.5"}) == Laplace(scale=0.5)
    assert parse_defence("laplace") == Laplace(scale=0.0)


@pytest.mark.parametrize("scale", [-0.5, float("nan"), float("inf"), "loud", None])
def test_the_laplace_spec_refuses_bad_scales(scale):
    with pytest.raises(ConfigError, match="noise scale"):
        Laplace(scale=scale)
