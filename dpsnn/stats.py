"""Pure statistics on tensors: distance correlation (no Lightning, no training code).

``distance_correlation`` is the sample distance correlation of Székely et al. with
Euclidean distances (exponent 1) and V-statistics, the same quantity as
``dcor.distance_correlation``. It is differentiable and vectorised: one matrix product
per argument, no Python loops. It is written here because ``dcor`` works on NumPy
arrays (no autograd, no GPU), and NoPeek needs its gradient. Example::

    import torch
    from dpsnn.stats import distance_correlation

    x = torch.randn(64, 784)
    print(distance_correlation(x, x ** 2))  # non-linear dependence is detected
"""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_distances(flat: Tensor) -> Tensor:
    """Euclidean distances between the rows of ``flat`` ``(N, D)``, with a finite gradient everywhere.

    Uses the Gram form ``|a|^2 + |b|^2 - 2 a.b`` (one matrix product, several times
    faster than an elementwise ``cdist``). Its rounding leaves tiny non-zero values where
    two points coincide; values below the inputs' precision are set to exact zeros, so
    the square root and its gradient stay finite.
    """
    flat = flat - flat.mean(dim=0, keepdim=True)  # distances ignore shifts; centring keeps the Gram form precise
    squared_norms = (flat * flat).sum(dim=1)
    norm_sums = squared_norms[:, None] + squared_norms[None, :]
    squared = norm_sums - 2.0 * (flat @ flat.T)
    tolerance = 64 * torch.finfo(flat.dtype).eps * norm_sums
    return _safe_sqrt(torch.where(squared > tolerance, squared, 0.0))


def _double_centred_distances(z: Tensor) -> Tensor:
    distances = pairwise_distances(z.reshape(z.shape[0], -1))
    return distances - distances.mean(dim=0, keepdim=True) - distances.mean(dim=1, keepdim=True) + distances.mean()


def _safe_sqrt(value: Tensor) -> Tensor:
    """sqrt that is 0 with a zero (not NaN) gradient where ``value <= 0``."""
    positive = value > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, value, torch.ones_like(value))), 0.0)


def distance_correlation(x: Tensor, y: Tensor) -> Tensor:
    """Sample distance correlation between the rows of ``x`` and ``y``.

    Each sample is flattened, so ``x`` may be images ``(N, C, H, W)`` and ``y`` vectors
    ``(N, D)``. Returns a scalar in ``[0, 1]``; 0 when either argument has no spread
    (e.g. all samples identical), with a finite gradient there.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    a = _double_centred_distances(x)
    b = _double_centred_distances(y.to(a.dtype))
    dcov2_xy = (a * b).mean().clamp_min(0.0)
    dvar2_x = (a * a).mean()
    dvar2_y = (b * b).mean()
    denominator = _safe_sqrt(dvar2_x * dvar2_y)
    has_spread = denominator > 0
    dcor2 = torch.where(has_spread, dcov2_xy / torch.where(has_spread, denominator, 1.0), 0.0)
    return _safe_sqrt(dcor2)
