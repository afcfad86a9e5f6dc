"""A variational information bottleneck on the wire: the ``vib`` defence.

The client's output ``h`` becomes the mean of a Gaussian, and what crosses the wire is a
sample of it, ``z = h + σ ⊙ ε`` with ``ε ~ N(0, I)`` drawn afresh for every tensor, in
training and at inference alike (the server never sees ``h``). The standard deviation
``σ`` is learned, one per feature of the intermediate, with the rest of the network. The
training loss gains ``β`` times the KL divergence of that Gaussian from the standard
normal prior, ``½ Σ_d (h_d² + σ_d² − 1 − log σ_d²)`` summed over the features and averaged
over the batch (Alemi et al. 2017, "Deep Variational Information Bottleneck"): an upper
bound on the information the wire carries about the input, in nats. A larger ``β`` buys a
tighter bound (more noise, smaller ``h``) with accuracy. ``σ`` does not depend on the
input (the architectures' clients output one tensor, not a mean and a variance), so the
bound is that of a Gaussian channel whose noise the network places feature by feature.

At ``β = 0`` the defence is off: nothing is added to the wire or the loss. It trains
beside NoPeek and noise; DP-SGD is refused, since its accountant covers the client's
weights and not the wire's ``σ``, which is fitted to the same data. Example::

    import torch
    from dpsnn.defences import make_defence

    wire = make_defence("vib", {"beta": 1e-3}).wire()
    wire.build((500,))                       # SplitNN does this with its intermediate's shape
    z = wire(torch.zeros(4, 500))            # a sample around 0, σ = 1 to start
    wire.loss_terms()                        # {'vib_kl': 1e-3 × the KL of that forward pass}

What is hand-written, and why: the layer is a reparameterised sample and a closed-form KL
(a few lines); Pyro or torch.distributions would add machinery without removing any.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dpsnn.defences.base import Defence, check_non_negative, register_defence
from dpsnn.errors import ConfigError

__all__ = ["GaussianBottleneck", "VIB"]


class GaussianBottleneck(nn.Module):
    """``z = h + σ ⊙ ε`` with a learned per-feature ``σ`` (from ``init_sigma``); β·KL of the last forward pass.

    :meth:`build` creates ``σ`` for an intermediate of a given shape (the split network calls
    it); the noise is drawn from torch's global generator, so ``torch.manual_seed`` fixes it.
    """

    def __init__(self, beta: float, init_sigma: float = 1.0) -> None:
        super().__init__()
        self.beta, self.init_sigma = float(beta), float(init_sigma)
        self.log_sigma: nn.Parameter | None = None
        self._kl: Tensor | None = None

    def build(self, intermediate_shape: Sequence[int]) -> None:
        """Create ``log σ`` for intermediates of ``intermediate_shape`` (without the batch dimension)."""
        if self.log_sigma is None or tuple(self.log_sigma.shape) != tuple(intermediate_shape):
            self.log_sigma = nn.Parameter(torch.full(tuple(intermediate_shape), math.log(self.init_sigma)))

    def forward(self, h: Tensor) -> Tensor:
        if self.log_sigma is None:
            raise ConfigError("the vib wire has no σ yet: build it with the intermediate's shape first")
        if tuple(h.shape[1:]) != tuple(self.log_sigma.shape):
            raise ConfigError(f"the vib wire was built for intermediates of shape {tuple(self.log_sigma.shape)}, "
                              f"got {tuple(h.shape[1:])}")  # fmt: skip
        log_sigma = self.log_sigma.to(h.dtype)
        sigma = log_sigma.exp()
        self._kl = None
        if self.training:
            per_feature = 0.5 * (h.pow(2) + sigma.pow(2) - 1.0 - 2.0 * log_sigma)
            self._kl = per_feature.flatten(1).sum(dim=1).mean()
        return h + sigma * torch.randn_like(h)

    def loss_terms(self) -> dict[str, Tensor]:
        """``{'vib_kl': β · KL}`` of the last forward pass in training mode (then forgotten), else nothing."""
        kl, self._kl = self._kl, None
        return {} if kl is None else {"vib_kl": self.beta * kl}

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, init_sigma={self.init_sigma:g}"


@register_defence("vib")
@dataclass(frozen=True)
class VIB(Defence):
    """A learned Gaussian on the wire and ``beta`` times its KL from N(0, I) in the loss (Alemi et al. 2017)."""

    beta: float = 0.0
    init_sigma: float = 1.0  # σ of every feature before training
    strength = "beta"
    excludes = ("dp",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", check_non_negative(self.beta, "vib beta"))
        init_sigma = check_non_negative(self.init_sigma, "vib init_sigma")
        if init_sigma == 0:
            raise ConfigError("vib init_sigma must be positive, got 0")
        object.__setattr__(self, "init_sigma", init_sigma)

    def wire(self) -> nn.Module | None:
        return None if self.beta == 0.0 else GaussianBottleneck(self.beta, self.init_sigma)

    def key(self) -> str:
        key = f"vib{self.beta:g}".replace(".", "").replace("-", "m")  # vib0001, vib1em05
        return key if self.init_sigma == 1.0 else f"{key}-s{self.init_sigma:g}".replace(".", "")

    def label(self) -> str:
        text = f"VIB β {self.beta:g}"
        return text if self.init_sigma == 1.0 else f"{text} (σ₀ {self.init_sigma:g})"
