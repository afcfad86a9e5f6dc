"""The neural tangent kernel (NTK) and the NNGP kernel of infinitely wide fully connected networks.

As the width of every hidden layer of a network grows, its output at initialisation becomes a
Gaussian process with the NNGP kernel ``K``, and its training by gradient descent on the MSE a
linear model with the neural tangent kernel ``Θ`` (Jacot et al. 2018; Lee et al. 2019). Both
have closed forms for networks of dense layers with ReLU or erf activations, computed layer by
layer from the inputs' inner products. The network is in the NTK parametrisation: a layer
computes ``σ_w / √n_in · W h + σ_b · b`` with ``W`` and ``b`` standard normal, so

    K¹(x, x′) = σ_w² x·x′ / d + σ_b²                     Θ¹ = K¹
    Kˡ⁺¹ = σ_w² E[φ(u) φ(v)] + σ_b²                       Θˡ⁺¹ = Kˡ⁺¹ + σ_w² E[φ′(u) φ′(v)] Θˡ

with ``(u, v)`` centred Gaussian of covariance ``Kˡ`` on the pair. The expectations are the
arc-cosine kernels for ReLU (Cho & Saul 2009) and Williams' (1997) for erf. The NTK of a
network of ``depth`` hidden layers is ``Θ`` after its readout layer.

What is hand-written, and why: PyTorch has no infinite-width kernels (neural-tangents, which
has them, is JAX). The recursion is a few lines; :func:`empirical_ntk` (``torch.func``) computes
the kernel of a finite network, against which the tests check the closed form.

The NTGA surrogate of the published attack (two 5×5 stride-2 convolutions, then dense layers)
has an infinite-width kernel too, but it needs the covariance of every pair of images at every
pixel position: this module implements the fully connected kernels only. Example::

    import torch
    from dpsnn.unlearnable.ntk import FullyConnectedKernel

    kernel = FullyConnectedKernel(activation="relu")  # five hidden layers, as NTGA's surrogate
    x = torch.randn(8, 784)
    nngp, ntk = kernel(x)              # two (8, 8) float64 matrices
    cross = kernel(x[:3], x)           # (3, 8) each: between two sets of inputs
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from dpsnn.errors import ConfigError

__all__ = ["ACTIVATIONS", "EXPECTATIONS", "FullyConnectedKernel", "Kernels", "empirical_ntk", "wide_network"]

ACTIVATIONS = ("relu", "erf")


class Kernels(NamedTuple):
    """The NNGP kernel ``nngp`` and the neural tangent kernel ``ntk`` between two sets of inputs."""

    nngp: Tensor
    ntk: Tensor


@dataclass(frozen=True)
class FullyConnectedKernel:
    """The infinite-width kernels of ``depth`` dense hidden layers with ``activation``, then a dense readout.

    ``weight_std`` and ``bias_std`` are σ_w and σ_b of every layer (NTK parametrisation). The
    defaults are the fully connected surrogate of the published NTGA: five hidden layers,
    σ_w² = 1.76, σ_b² = 0.18.
    """

    depth: int = 5
    activation: str = "relu"
    weight_std: float = math.sqrt(1.76)
    bias_std: float = math.sqrt(0.18)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.depth < 1:
            raise ConfigError(f"a network has at least one hidden layer, not {self.depth}")
        if not (self.weight_std > 0 and self.bias_std >= 0):
            raise ConfigError("weight_std must be positive and bias_std non-negative")

    def __call__(self, x1: Tensor, x2: Tensor | None = None, dtype: torch.dtype = torch.float64) -> Kernels:
        """The kernels between the rows of ``x1`` and of ``x2`` (default: ``x1``), flattened, in ``dtype``."""
        a = x1.reshape(len(x1), -1).to(dtype)
        b = a if x2 is None else x2.reshape(len(x2), -1).to(dtype)
        if a.shape[1] != b.shape[1]:
            raise ConfigError(f"inputs of {a.shape[1]} and {b.shape[1]} features have no kernel between them")
        sw2, sb2 = self.weight_std**2, self.bias_std**2
        d = a.shape[1]
        cross = sw2 * (a @ b.T) / d + sb2
        diag_a = sw2 * (a * a).sum(1) / d + sb2
        diag_b = sw2 * (b * b).sum(1) / d + sb2
        ntk = cross
        expectations = EXPECTATIONS[self.activation]
        for _ in range(self.depth):
            values, derivatives, diag_a, diag_b = expectations(cross, diag_a, diag_b)
            cross = sw2 * values + sb2
            ntk = cross + sw2 * derivatives * ntk
            diag_a, diag_b = sw2 * diag_a + sb2, sw2 * diag_b + sb2
        return Kernels(cross, ntk)


_COSINE_EDGE = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}
Expectations = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


def _relu(cross: Tensor, diag_a: Tensor, diag_b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """E[φ(u)φ(v)] and E[φ′(u)φ′(v)] for ReLU, and E[φ(u)²] on each side."""
    norms = torch.sqrt(diag_a[:, None] * diag_b[None, :])
    # A pair of equal inputs has cosine 1, where arccos has an infinite slope: clamping just inside keeps
    # gradients finite (0 there, as the angle of an input with itself is constant) at a relative cost of
    # ~1e-6 in float64 (~1e-3 in float32, whose nearest number below 1 is 6e-8 away).
    edge = _COSINE_EDGE[cross.dtype]
    cosine = (cross / norms).clamp(-1.0 + edge, 1.0 - edge)
    angle = torch.arccos(cosine)
    values = norms * (torch.sin(angle) + (math.pi - angle) * cosine) / (2 * math.pi)
    derivatives = (math.pi - angle) / (2 * math.pi)
    return values, derivatives, diag_a / 2, diag_b / 2


def _erf(cross: Tensor, diag_a: Tensor, diag_b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """E[φ(u)φ(v)] and E[φ′(u)φ′(v)] for erf, and E[φ(u)²] on each side."""
    scale_a, scale_b = 1 + 2 * diag_a, 1 + 2 * diag_b
    product = scale_a[:, None] * scale_b[None, :]
    values = (2 / math.pi) * torch.arcsin((2 * cross / torch.sqrt(product)).clamp(-1.0, 1.0))
    derivatives = (4 / math.pi) / torch.sqrt(product - 4 * cross**2)

    def squared(diag: Tensor, scale: Tensor) -> Tensor:
        return (2 / math.pi) * torch.arcsin(2 * diag / scale)

    return values, derivatives, squared(diag_a, scale_a), squared(diag_b, scale_b)


#: Per activation: E[φ(u)φ(v)], E[φ′(u)φ′(v)], E[φ(u)²] and E[φ(v)²] for (u, v) of the given covariance.
EXPECTATIONS: dict[str, Expectations] = {"relu": _relu, "erf": _erf}


class _NTKDense(nn.Module):
    """A dense layer in the NTK parametrisation: ``σ_w / √n_in · W h + σ_b · b``, ``W`` and ``b`` standard normal."""

    def __init__(self, n_in: int, n_out: int, weight_std: float, bias_std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in))
        self.bias = nn.Parameter(torch.randn(n_out))
        self.scale, self.bias_std = weight_std / math.sqrt(n_in), bias_std

    def forward(self, h: Tensor) -> Tensor:
        return self.scale * h @ self.weight.T + self.bias_std * self.bias


def wide_network(kernel: FullyConnectedKernel, n_in: int, width: int, n_out: int = 1) -> nn.Sequential:
    """A finite network of ``width`` units per hidden layer whose kernels tend to ``kernel``'s as ``width`` grows."""
    activation = {"relu": nn.ReLU, "erf": _Erf}[kernel.activation]
    layers: list[nn.Module] = []
    for index in range(kernel.depth):
        layers += [_NTKDense(n_in if index == 0 else width, width, kernel.weight_std, kernel.bias_std), activation()]
    layers.append(_NTKDense(width, n_out, kernel.weight_std, kernel.bias_std))
    return nn.Sequential(*layers)


class _Erf(nn.Module):
    def forward(self, h: Tensor) -> Tensor:
        return torch.erf(h)


def empirical_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None) -> Tensor:
    """``J(x1) J(x2)ᵀ`` of a scalar-output ``model`` over all its parameters (``torch.func``): its finite-width NTK."""
    from torch.func import functional_call, jacrev, vmap

    params = {name: value.detach() for name, value in model.named_parameters()}

    def output(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x[None],)).reshape(())

    def jacobian(x: Tensor) -> Tensor:
        per_parameter = vmap(jacrev(output), in_dims=(None, 0))(params, x)
        return torch.cat([j.reshape(len(x), -1) for j in per_parameter.values()], dim=1)

    j1 = jacobian(x1)
    j2 = j1 if x2 is None else jacobian(x2)
    return j1 @ j2.T
