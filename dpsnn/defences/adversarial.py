"""Attacker-aware training: the client trained against a proxy decoder, the ``adversarial`` defence.

ResSFL (Li et al., CVPR 2022) and DeepObfuscator train the client beside a simulated
attacker. Here the attacker is a :class:`~dpsnn.attacks.inversion.Decoder` (the ``decoder``
attack's network) that the client's training updates at every batch: ``proxy_steps`` Adam
steps on mean squared error, reconstructing the batch's images from the client's outputs
(before the wire, so the proxy sees at least what any server does). The client's loss then
gains ``weight`` times the proxy's SSIM above a floor, ``mean(relu(SSIM(proxy(h), x) − τ))``,
with the proxy's weights held fixed, so the client learns to make the proxy fail and the
proxy learns to keep up.

The floor ``τ`` is the point of the defence: with ``tau="auto"`` (the default) it is, image
by image, the SSIM of the label-only baseline, the running mean of the client's own
training images of that class; so only what a decoder recovers *beyond* the class is
penalised, and the defence aims at the SSIM gap itself. A number fixes one floor for every
image instead.

The proxy is never a scored attacker, by construction: it lives beside the split network
(:meth:`Defence.companion`), not in it, so it is not in ``state_dict()``, not in a
checkpoint, and not reachable from a trained model; every attack fits its own decoder from
scratch. At weight 0 the defence is off: no proxy is built or trained. Per-sample DP-SGD is
refused beside it (the proxy is fitted to the same data outside the accountant), and so is
the stacked training of several models at once (the proxy takes its own optimiser steps).
Example::

    from dpsnn.data import make_splits
    from dpsnn.training import train_classifier

    splits = make_splits("fashion-mnist", train_size=5000)
    model, epoch = train_classifier(splits, defences=["adversarial:weight=1"], max_epochs=3)
    model.companions[0].decoder     # the proxy it trained against: not in model.state_dict(), never saved

What is hand-written, and why: the two alternating updates are a few lines inside the
training step; no library ships adversarial reconstruction training for split learning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dpsnn.defences.base import Defence, check_non_negative, format_number, register_defence
from dpsnn.errors import ConfigError

__all__ = ["Adversarial", "ProxyAttacker"]

MIN_SIDE = 11  # SSIM's Gaussian window: images need at least this many pixels a side


class ProxyAttacker:
    """The decoder a client trains against, its optimiser and the running class means that set the floor.

    Deliberately not an ``nn.Module`` attribute of the split network: nothing of it is saved,
    loaded or optimised with the model. :meth:`build` makes the decoder for the model's shapes.
    """

    def __init__(self, spec: Adversarial) -> None:
        self.spec = spec
        self.decoder: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.class_sums: Tensor | None = None
        self.class_counts: Tensor | None = None

    def build(self, intermediate_shape: Sequence[int], input_shape: Sequence[int], num_classes: int) -> None:
        """A fresh proxy decoder from ``intermediate_shape`` to images of ``input_shape``, and empty class means."""
        from dpsnn.attacks.inversion import Decoder  # the attacks import the models; import here, not at the top

        if min(input_shape[1:]) < MIN_SIDE:
            raise ConfigError(
                f"the adversarial defence scores its proxy by SSIM, which needs images at least {MIN_SIDE} pixels "
                f"a side; got {tuple(input_shape)}"
            )
        with torch.random.fork_rng(devices=[]):  # the proxy's initial weights do not move the model's random stream
            self.decoder = Decoder(intermediate_shape, input_shape, self.spec.proxy_size)
        self.optimizer = torch.optim.Adam(self.decoder.parameters(), lr=self.spec.proxy_lr)
        self.class_sums = torch.zeros(num_classes, *input_shape, dtype=torch.float64)
        self.class_counts = torch.zeros(num_classes, dtype=torch.float64)

    def loss_terms(self, x: Tensor, h: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Fit the proxy on this batch, then ``{'adversarial': weight · mean(relu(SSIM(proxy(h), x) − τ))}``."""
        from dpsnn.metrics import per_image_ssim

        if self.decoder is None or self.optimizer is None:
            raise ConfigError("the adversarial proxy has not been built: a SplitNN builds it for its shapes")
        decoder = self.decoder.to(h.device)
        images, seen = x.detach(), h.detach()
        with torch.enable_grad():
            for _ in range(self.spec.proxy_steps):
                loss = F.mse_loss(decoder(seen), images)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        floor = self.floor(images, y)
        for parameter in decoder.parameters():  # the penalty moves the client only
            parameter.requires_grad_(False)
        try:
            ssim = per_image_ssim(decoder(h), images)
        finally:
            for parameter in decoder.parameters():
                parameter.requires_grad_(True)
        return {"adversarial": self.spec.weight * F.relu(ssim - floor).mean()}

    @torch.no_grad()
    def floor(self, images: Tensor, y: Tensor) -> Tensor:
        """τ per image: the number given, or the SSIM of its class's running mean image (the label-only baseline)."""
        if self.spec.tau is not None:
            return torch.full((len(images),), float(self.spec.tau), dtype=images.dtype, device=images.device)
        from dpsnn.metrics import per_image_ssim

        sums, counts = self.class_sums, self.class_counts
        labels = y.long().cpu()
        sums.index_add_(0, labels, images.detach().cpu().double())
        counts.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))
        means = (sums[labels] / counts[labels].view(-1, *([1] * (sums.dim() - 1)))).to(images.dtype)
        return per_image_ssim(means.to(images.device), images)


@register_defence("adversarial")
@dataclass(frozen=True)
class Adversarial(Defence):
    """The client trained against a proxy decoder refitted every batch; ``weight`` × its SSIM above the floor τ."""

    weight: float = 0.0
    tau: float | None = None  # the SSIM floor; None (auto): each image's label-only baseline
    proxy_lr: float = 1e-3
    proxy_steps: int = 1  # the proxy's Adam steps per batch
    proxy_size: str = "standard"  # the proxy decoder's size: standard or large
    strength = "weight"
    excludes = ("dp",)

    def __post_init__(self) -> None:
        from dpsnn.attacks.inversion import DECODER_SIZES

        object.__setattr__(self, "weight", check_non_negative(self.weight, "adversarial weight"))
        if self.tau is not None:
            tau = check_non_negative(self.tau, "adversarial tau")
            if tau > 1:
                raise ConfigError(f"adversarial tau is an SSIM floor in [0, 1] (or auto), got {self.tau!r}")
            object.__setattr__(self, "tau", tau)
        proxy_lr = check_non_negative(self.proxy_lr, "adversarial proxy_lr")
        if proxy_lr == 0:
            raise ConfigError("adversarial proxy_lr must be positive, got 0")
        object.__setattr__(self, "proxy_lr", proxy_lr)
        if not (isinstance(self.proxy_steps, int) and not isinstance(self.proxy_steps, bool) and self.proxy_steps >= 1):
            raise ConfigError(f"adversarial proxy_steps must be a whole number of at least 1, got {self.proxy_steps!r}")
        if self.proxy_size not in DECODER_SIZES:
            raise ConfigError(
                f"adversarial proxy_size must be one of {', '.join(DECODER_SIZES)}, got '{self.proxy_size}'"
            )

    def companion(self) -> Any:
        return None if self.weight == 0.0 else ProxyAttacker(self)

    def key(self) -> str:
        key = f"{format_number(self.weight)}adv"
        if self.tau is not None:
            key += f"-tau{format_number(self.tau)}"
        if (self.proxy_lr, self.proxy_steps, self.proxy_size) != (1e-3, 1, "standard"):
            key += f"-lr{format_number(self.proxy_lr)}-s{self.proxy_steps}-{self.proxy_size}"
        return key

    def label(self) -> str:
        floor = "auto" if self.tau is None else f"{self.tau:g}"
        return f"adversarial {self.weight:g} (τ {floor})"
