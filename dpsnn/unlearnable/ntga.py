"""The Neural Tangent Generalization Attack (NTGA): clean-label poisons that make a training set unlearnable.

NTGA (Yuan & Wu, ICML 2021) perturbs training images, within an L∞ budget ε and keeping their
labels, so that a network trained on them does worst on clean data. The trained network is
replaced by the mean prediction of a Gaussian process with the network's infinite-width neural
tangent kernel ``Θ`` (:mod:`dpsnn.unlearnable.ntk`), which after training time ``t`` has a
closed form on clean target images::

    f̄(X_target) = Θ_tn Θ_nn⁻¹ (I − exp(−Θ_nn t / (n k))) Y_n

for a block of ``n`` training images with one-hot labels ``Y_n`` over ``k`` classes. The time
is in neural-tangents' units (it divides by the number of targets ``n k``), so the published
``t = 64`` means the same here. The attack climbs the cross-entropy of ``f̄`` on the clean target
images by projected gradient ascent on the block's images: ``iterations`` signed steps of
``step_size`` (by default the published ``1.1 ε / iterations``), each followed by the projection
onto the ε-ball and the pixel range. Blocks of ``block_size`` images are attacked one at a time.

What is hand-written, and why: no maintained PyTorch library implements NTGA (its authors' code
is JAX with neural-tangents 0.3, which no longer runs on current JAX). The matrix function
``Θ⁻¹(I − e^{−Θs})`` is computed from one symmetric eigendecomposition (no explicit inverse);
its gradient is the Daleckii–Krein formula with divided differences, written here because
autograd through :func:`torch.linalg.eigh` divides by eigenvalue gaps and breaks down on the
nearly equal eigenvalues a kernel matrix has in numbers. The tests check it against
:func:`torch.linalg.matrix_exp` and a solve, differentiated by autograd. Example::

    import torch
    from dpsnn.unlearnable.ntga import NTGA, attack_block

    images, labels = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    target, target_labels = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    attack = NTGA(epsilon=0.3, iterations=4)
    poisoned = attack_block(attack, images, labels, target, target_labels, num_classes=10)
    assert (poisoned - images).abs().max() <= 0.3 + 1e-6
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from dpsnn.errors import ConfigError, DataError
from dpsnn.unlearnable.ntk import FullyConnectedKernel

#: The floating-point types the target-by-block kernel can be computed in.
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}

__all__ = ["PRECISIONS", "NTGA", "NotPositiveDefinite", "attack_block", "gp_mean_prediction", "trained_kernel_function"]


class NotPositiveDefinite(ConfigError):
    """The regularised kernel matrix of a block has a non-positive eigenvalue."""


@dataclass(frozen=True)
class NTGA:
    """The attack's settings; the defaults are the published ones for MNIST-like data.

    ``epsilon``: the L∞ budget in pixel units of [0, 1] (0.3 for MNIST-like data, 8/255 for
    CIFAR); ``iterations`` and ``step_size`` (default ``1.1 · epsilon / iterations``): the
    projected gradient ascent; ``time``: the GP's training time ``t`` (neural-tangents' units);
    ``block_size``: training images attacked together; ``target_size``: clean images the loss is
    taken on; ``diag_reg``: added to the kernel's diagonal, relative to its mean diagonal entry;
    ``kernel``: the surrogate's infinite-width kernel (five ReLU layers by default);
    ``precision``: of the kernel between target and block images, the bulk of the work (the
    block's own kernel and its eigendecomposition are always float64).
    """

    epsilon: float = 0.3
    iterations: int = 10
    step_size: float | None = None
    time: float = 64.0
    block_size: int = 512
    target_size: int = 10_000
    diag_reg: float = 1e-4
    kernel: FullyConnectedKernel = field(default_factory=FullyConnectedKernel)
    precision: str = "float32"

    def __post_init__(self) -> None:
        if not 0 < self.epsilon <= 1:
            raise ConfigError(f"epsilon must be in (0, 1] (pixels lie in [0, 1]), got {self.epsilon}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be at least 1, got {self.iterations}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"step size must be positive, got {self.step_size}")
        if not (self.time > 0 and math.isfinite(self.time)):
            raise ConfigError(f"the training time t must be positive and finite, got {self.time}")
        if self.block_size < 2:
            raise ConfigError(f"block size must be at least 2, got {self.block_size}")
        if self.target_size < 1:
            raise ConfigError(f"target size must be at least 1, got {self.target_size}")
        if not self.diag_reg >= 0:
            raise ConfigError(f"the diagonal regulariser must be non-negative, got {self.diag_reg}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the kernel between target and block images."""
        return PRECISIONS[self.precision]

    @property
    def step(self) -> float:
        """The step of each signed-gradient iteration."""
        return self.step_size if self.step_size is not None else 1.1 * self.epsilon / self.iterations


# --- the GP's mean prediction after training time t ---------------------------------------------


def _phi(z: Tensor) -> Tensor:
    """(1 − e^{−z}) / z, continued to 1 at z = 0."""
    small = z.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 - z / 2 + z * z / 6, -torch.expm1(-safe) / safe)


def _phi_derivative(z: Tensor) -> Tensor:
    """d/dz (1 − e^{−z}) / z = ((1 + z) e^{−z} − 1) / z², continued to −1/2 at z = 0."""
    small = z.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, -0.5 + z / 3 - z * z / 8, (torch.expm1(-safe) * (1 + safe) + safe) / (safe * safe))


def _divided_differences(values: Tensor, scale: float) -> Tensor:
    """``(g(λi) − g(λj)) / (λi − λj)`` for ``g(λ) = s φ(λ s)``, ``g′`` where the two nearly coincide."""
    g = scale * _phi(values * scale)
    gap = values[:, None] - values[None, :]
    close = gap.abs() <= 1e-6 * (values[:, None].abs() + values[None, :].abs()) + 1e-300
    midpoint = (values[:, None] + values[None, :]) / 2
    derivative = scale * scale * _phi_derivative(midpoint * scale)
    safe_gap = torch.where(close, torch.ones_like(gap), gap)
    return torch.where(close, derivative, (g[:, None] - g[None, :]) / safe_gap)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the block in one thread: LAPACK's threaded eigh of a 512×512 matrix is ~50× slower than one
    thread's when other processes load the cores (0.05 s against 7 s, measured), and no faster when idle."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _TrainedKernelFunction(torch.autograd.Function):
    """``M = Θ⁻¹ (I − e^{−Θ s})`` of a symmetric positive definite ``Θ``, from one eigendecomposition."""

    @staticmethod
    def forward(ctx, kernel: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        with _one_thread():
            values, vectors = torch.linalg.eigh(kernel)
        if not values[0] > 0:
            raise NotPositiveDefinite(
                f"the kernel matrix is not positive definite (smallest eigenvalue {values[0].item():.3g}); "
                "use a larger diagonal regulariser (--diag-reg)"
            )
        ctx.save_for_backward(values, vectors)
        ctx.scale = scale
        return (vectors * (scale * _phi(values * scale))) @ vectors.T

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        values, vectors = ctx.saved_tensors
        inner = vectors.T @ ((grad + grad.T) / 2) @ vectors
        return vectors @ (inner * _divided_differences(values, ctx.scale)) @ vectors.T, None


def trained_kernel_function(kernel: Tensor, scale: float) -> Tensor:
    """``Θ⁻¹ (I − e^{−Θ · scale})`` of a symmetric positive definite ``kernel``, differentiable in it.

    Raises :class:`NotPositiveDefinite` when an eigenvalue is not positive.
    """
    return _TrainedKernelFunction.apply(kernel, scale)


CrossKernel = Callable[[Tensor, Tensor], Tensor]


def gp_mean_prediction(
    attack: NTGA, block: Tensor, block_targets: Tensor, target: Tensor, cross_kernel: CrossKernel | None = None
) -> Tensor:
    """The GP's mean output on ``target`` after training time ``attack.time`` on ``block`` with ``block_targets``.

    ``block_targets`` are ``(n, k)`` regression targets (one-hot labels); the result is ``(m, k)``
    in float64. ``cross_kernel(target, block)`` computes the NTK between them (default: the
    attack's kernel, eager, in its precision; :func:`cross_kernel_function` may compile it).
    """
    kernel_nn = attack.kernel(block).ntk
    if cross_kernel is None:
        kernel_tn = attack.kernel(target, block, dtype=attack.dtype).ntk
    else:
        kernel_tn = cross_kernel(target, block)
    regulariser = attack.diag_reg * kernel_nn.diagonal().mean()
    kernel_nn = kernel_nn + regulariser * torch.eye(len(block), dtype=kernel_nn.dtype, device=kernel_nn.device)
    scale = attack.time / block_targets.numel()
    weights = trained_kernel_function(kernel_nn, scale) @ block_targets.to(kernel_nn.dtype)
    return kernel_tn.double() @ weights


def cross_kernel_function(attack: NTGA, compile: bool = True) -> CrossKernel:
    """``(target, block) -> NTK`` in the attack's precision, compiled by :func:`torch.compile` where it can be.

    Compiling fuses the kernel's chain of elementwise operations and its gradient (about 4× faster
    on a CPU); it costs a few tens of seconds once per shape, and needs a C++ compiler on a CPU.
    Where compiling fails, the eager function is used, with a warning.
    """

    def eager(target: Tensor, block: Tensor) -> Tensor:
        return attack.kernel(target, block, dtype=attack.dtype).ntk

    if not compile:
        return eager
    compiled = torch.compile(eager, dynamic=False)
    state = {"function": compiled}

    def run(target: Tensor, block: Tensor) -> Tensor:
        try:
            return state["function"](target, block)
        except Exception as error:  # no compiler, an unsupported platform: the eager kernel is the same function
            if state["function"] is eager:
                raise
            warnings.warn(f"torch.compile failed ({type(error).__name__}); NTGA runs eagerly", stacklevel=2)
            state["function"] = eager
            return eager(target, block)

    return run


# --- the attack on one block ---------------------------------------------------------------------


def _check_block(images: Tensor, labels: Tensor, num_classes: int, what: str) -> None:
    if images.dim() < 2 or len(images) != len(labels):
        raise DataError(f"the {what} images and labels must be aligned along the first axis")
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        raise DataError(f"the {what} labels must lie in 0..{num_classes - 1}")


def attack_block(
    attack: NTGA,
    images: Tensor,
    labels: Tensor,
    target: Tensor,
    target_labels: Tensor,
    num_classes: int,
    cross_kernel: CrossKernel | None = None,
) -> Tensor:
    """Poison one block of training ``images`` (labels kept) against the clean ``target`` images.

    Returns the poisoned block, within ``attack.epsilon`` of ``images`` in every pixel and in
    [0, 1]. The loss climbed is the cross-entropy of the GP's mean prediction on ``target``.
    ``cross_kernel`` is as in :func:`gp_mean_prediction`.
    """
    _check_block(images, labels, num_classes, "block")
    _check_block(target, target_labels, num_classes, "target")
    if len(images) < 2:
        raise DataError("a block needs at least two images")
    clean = images.detach().double()
    low, high = (clean - attack.epsilon).clamp(0, 1), (clean + attack.epsilon).clamp(0, 1)
    one_hot = F.one_hot(labels, num_classes).double()
    target = target.detach().to(attack.dtype)
    poisoned = clean.clone()
    for _ in range(attack.iterations):
        poisoned.requires_grad_(True)
        logits = gp_mean_prediction(attack, poisoned, one_hot, target, cross_kernel)
        loss = F.cross_entropy(logits, target_labels)
        (gradient,) = torch.autograd.grad(loss, poisoned)
        with torch.no_grad():
            poisoned = torch.minimum(torch.maximum(poisoned + attack.step * gradient.sign(), low), high)
    return poisoned.detach().to(images.dtype)
