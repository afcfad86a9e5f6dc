"""Laplacian noise on the wire: the ``laplace`` defence.

Example::

    import torch
    from dpsnn.defences import Laplace, LaplaceNoise

    wire = LaplaceNoise(scale=0.5)
    what_server_sees = wire(torch.zeros(4, 500))  # noisy in train and eval mode alike
    Laplace(scale=0.5).wire()                     # the same module, from the registered spec
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dpsnn.defences.base import Defence, check_non_negative, format_number, register_defence


def check_scale(scale: float, what: str = "noise scale") -> float:
    """Return ``scale`` as a float, or raise :class:`ConfigError` if it is negative or not finite."""
    return check_non_negative(scale, what)


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


@register_defence("laplace")
@dataclass(frozen=True)
class Laplace(Defence):
    """Laplace(0, ``scale``) noise on every element of what crosses the wire."""

    scale: float = 0.0
    strength = "scale"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_scale(self.scale))

    def wire(self) -> nn.Module:
        return LaplaceNoise(self.scale)

    def key(self) -> str:
        return f"{format_number(self.scale)}noise"

    def label(self) -> str:
        return f"noise {self.scale:g}"
