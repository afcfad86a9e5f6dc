"""The closed-form infinite-width kernels (dpsnn.unlearnable.ntk) against wide finite networks."""

from __future__ import annotations

import math

import pytest
import torch

from dpsnn.errors import ConfigError
from dpsnn.unlearnable.ntk import EXPECTATIONS, FullyConnectedKernel, empirical_ntk, wide_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def inputs(count: int = 20, features: int = 16) -> torch.Tensor:
    return torch.randn(count, features, generator=torch.Generator().manual_seed(0))


def relative_error(found: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(found.double() - expected) / torch.linalg.norm(expected))


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_the_expectations_match_monte_carlo(activation):
    """E[φ(u)φ(v)], E[φ′(u)φ′(v)] and E[φ(u)²] of the recursion, against samples of (u, v)."""
    covariance = torch.tensor([[1.3, 0.7], [0.7, 0.9]], dtype=torch.float64)
    samples = torch.randn(400_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u, v = (samples @ torch.linalg.cholesky(covariance).T).unbind(1)
    phi, slope = {
        "relu": (torch.relu, lambda t: (t > 0).double()),
        "erf": (torch.erf, lambda t: 2 / math.sqrt(math.pi) * torch.exp(-t * t)),
    }[activation]
    values, derivatives, square_u, square_v = EXPECTATIONS[activation](
        covariance[:1, 1:], covariance[0, :1], covariance[1, 1:]
    )
    found = [(phi(u) * phi(v)).mean(), (slope(u) * slope(v)).mean(), (phi(u) ** 2).mean(), (phi(v) ** 2).mean()]
    expected = [values.item(), derivatives.item(), square_u.item(), square_v.item()]
    assert torch.allclose(torch.stack(found), torch.tensor(expected, dtype=torch.float64), rtol=0.01)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_the_ntk_is_the_limit_of_wide_networks(activation):
    """Eight networks of width 1024 (each within about 10% of the limit), averaged: within 5%."""
    kernel = FullyConnectedKernel(depth=2, activation=activation)
    x = inputs()
    found = []
    for seed in range(8):
        torch.manual_seed(seed)
        found.append(empirical_ntk(wide_network(kernel, x.shape[1], width=1024), x))
    average = torch.stack(found).mean(0)
    error = relative_error(average, kernel(x).ntk)
    assert error < 0.05, f"the empirical NTK differs from the closed form by {error:.1%}"
    other = FullyConnectedKernel(depth=2, activation=activation, bias_std=1.0)(x).ntk
    assert relative_error(average, other) > 0.1, "the check tells one kernel from another"


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_the_nngp_kernel_is_the_covariance_of_a_wide_last_layer(activation):
    """The readout's covariance over the last hidden layer's units, six networks of width 4096 averaged."""
    kernel = FullyConnectedKernel(depth=2, activation=activation)
    x = inputs()
    found = []
    for seed in range(6):
        torch.manual_seed(seed)
        with torch.no_grad():
            hidden = wide_network(kernel, x.shape[1], width=4096)[:-1](x).double()
        found.append(kernel.weight_std**2 * hidden @ hidden.T / hidden.shape[1] + kernel.bias_std**2)
    assert relative_error(torch.stack(found).mean(0), kernel(x).nngp) < 0.05


def test_the_kernels_are_symmetric_positive_definite_and_blockwise_consistent():
    kernel = FullyConnectedKernel(depth=3)
    x = inputs()
    nngp, ntk = kernel(x)
    for matrix in (nngp, ntk):
        assert matrix.dtype == torch.float64
        torch.testing.assert_close(matrix, matrix.T)
        assert torch.linalg.eigvalsh(matrix).min() > 0
    block = kernel(x[:3], x)
    torch.testing.assert_close(block.ntk, ntk[:3])
    torch.testing.assert_close(block.nngp, nngp[:3])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"activation": "tanh"}, "unknown activation 'tanh'"),
        ({"depth": 0}, "at least one hidden layer"),
        ({"weight_std": 0.0}, "weight_std must be positive"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        FullyConnectedKernel(**settings)


def test_inputs_of_other_sizes_have_no_kernel():
    with pytest.raises(ConfigError, match="no kernel between them"):
        FullyConnectedKernel()(torch.zeros(2, 3), torch.zeros(2, 4))
