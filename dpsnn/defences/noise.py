"""Laplacian noise on the wire.

Example::

    import torch
    from dpsnn import LaplaceNoise

    wire = LaplaceNoise(scale=0.5)
    what_server_sees = wire(torch.zeros(4, 500))  # noisy in train and eval mode alike
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dpsnn.errors import ConfigError


def check_scale(scale: float, what: str = "noise scale") -> float:
    """Return ``scale`` as a float, or raise :class:`ConfigError` if it is negative or not finite."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a non-negative number, got {scale!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a non-negative number, got {scale!r}")
    return value


class LaplaceNoise(nn.Module):
    """Add Laplace(0, ``scale``) noise to every element.

    The noise is added in training *and* in evaluation: the tensor crosses the wire at
    inference too, so the server never sees it clean. ``scale == 0`` is the identity.
    The noise has mean 0 and standard deviation ``sqrt(2) * scale``; it is drawn on the
    input's device from torch's global generator, so ``torch.manual_seed`` fixes it.
    """

    def __init__(self, scale: float = 0.0) -> None:
        super().__init__()
        self.scale = check_scale(scale)

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = check_scale(value)

    def forward(self, x: Tensor) -> Tensor:
        if self._scale == 0.0:
            return x
        # The difference of two independent Exp(1) draws is Laplace(0, 1).
        noise = torch.empty_like(x).exponential_() - torch.empty_like(x).exponential_()
        return x + self._scale * noise

    def extra_repr(self) -> str:
        return f"scale={self._scale:g}"
