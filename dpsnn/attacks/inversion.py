"""Black-box model inversion: a decoder from what the server sees back to the image (the ``decoder`` attack).

The curious server feeds its own auxiliary images through the client, records the
pairs ``(what_server_sees, image)`` (noise included) and trains a decoder on them with
MSE. The decoder is built from the shapes alone: a vector intermediate gets a linear
map and transposed convolutions, a feature map a convolutional decoder. Example::

    from dpsnn.attacks import AttackTraining, DecoderAttack, observe

    attacker = DecoderAttack().fit(target, splits.aux, AttackTraining(max_epochs=10))
    reconstructions = attacker.run(observe(target, splits.test.images)).images
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpsnn.attacks.base import (
    DEFAULT_TRAINING,
    Attack,
    AttackTraining,
    Observation,
    Reconstructions,
    ThreatModel,
    register_attack,
)
from dpsnn.data import Split
from dpsnn.errors import ConfigError, DataError
from dpsnn.inference import batched
from dpsnn.loops import make_trainer

Shape = tuple[int, ...]


class Decoder(nn.Sequential):
    """From an intermediate of ``intermediate_shape`` to an image of ``image_shape`` in [0, 1].

    A vector ``(D,)``: a linear map to 64 channels at a quarter of the image size, two
    transposed convolutions doubling it, a 3×3 convolution to the image's channels
    (for ``(500,)`` and 1×28×28, exactly the reference decoder). A feature map
    ``(C, h, w)``: two 3×3 convolutions, one transposed convolution per doubling from
    ``h`` to the image height, a 3×3 convolution to the image's channels. Either is
    resized to the image size when the doublings do not land on it, then a sigmoid
    bounds it like the pixels it predicts.
    """

    def __init__(self, intermediate_shape: Sequence[int] = (500,), image_shape: Sequence[int] = (1, 28, 28)) -> None:
        intermediate_shape, image_shape = tuple(intermediate_shape), tuple(image_shape)
        channels, height, width = image_shape
        if len(intermediate_shape) == 1:
            start = (math.ceil(height / 4), math.ceil(width / 4))
            layers: list[nn.Module] = [
                nn.Linear(intermediate_shape[0], 64 * start[0] * start[1]),
                nn.ReLU(),
                nn.Unflatten(1, (64, *start)),
                nn.ConvTranspose2d(64, 32, kernel_size=4, stride=2, padding=1),
                nn.ReLU(),
                nn.ConvTranspose2d(32, 16, kernel_size=4, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, channels, kernel_size=3, padding=1),
            ]
            size = (4 * start[0], 4 * start[1])
        elif len(intermediate_shape) == 3:
            in_channels, h, w = intermediate_shape
            width_ = min(max(in_channels, 32), 128)
            layers = [
                nn.Conv2d(in_channels, width_, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width_, width_, kernel_size=3, padding=1),
                nn.ReLU(),
            ]
            doublings = max(0, round(math.log2(max(height / h, 1))))
            for _ in range(doublings):
                layers += [nn.ConvTranspose2d(width_, max(width_ // 2, 16), 4, stride=2, padding=1), nn.ReLU()]
                width_ = max(width_ // 2, 16)
            layers.append(nn.Conv2d(width_, channels, kernel_size=3, padding=1))
            size = (h * 2**doublings, w * 2**doublings)
        else:
            raise ConfigError(
                f"a decoder needs a vector (D,) or a feature map (C, H, W) intermediate, got {intermediate_shape}"
            )
        if size != (height, width):
            layers.append(nn.Upsample(size=(height, width), mode="bilinear", align_corners=False))
        super().__init__(*layers, nn.Sigmoid())


class InversionAttacker(L.LightningModule):
    """Decoder trained with MSE on ``(what_server_sees, image)`` batches; the fitted ``decoder`` attack."""

    def __init__(
        self,
        learning_rate: float = 1e-3,
        intermediate_shape: Sequence[int] | None = None,
        image_shape: Sequence[int] = (1, 28, 28),
        intermediate_size: int | None = None,  # checkpoints written before shapes were recorded
        **metadata: Any,
    ) -> None:
        super().__init__()
        if intermediate_shape is None:
            intermediate_shape = (intermediate_size or 500,)
        self.save_hyperparameters(
            {
                "learning_rate": learning_rate,
                "intermediate_shape": list(intermediate_shape),
                "image_shape": list(image_shape),
                **metadata,
            }
        )
        self.decoder = Decoder(intermediate_shape, image_shape)

    def forward(self, what_server_sees: Tensor) -> Tensor:
        return self.decoder(what_server_sees)

    def run(self, observation: Observation) -> Reconstructions:
        """The reconstructions of the images behind what the server saw."""
        return Reconstructions(batched(self, observation.seen))

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        seen, images = batch
        loss = F.mse_loss(self(seen), images)
        self.log(f"{stage}_mse", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


def what_server_sees(target: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Run ``images`` through the client and the wire, batch by batch; the tensors the server receives, on the CPU.

    The noise is drawn afresh, as it is every time an image crosses the wire.
    """
    return batched(target.encode, images, module=target, batch_size=batch_size)


@register_attack("decoder")
@dataclass(frozen=True)
class DecoderAttack(Attack):
    """Train a :class:`Decoder` on what the server sees of the attacker's auxiliary images."""

    threat_model = ThreatModel(what_server_sees=True, aux_data=True)

    def fit(
        self, target: nn.Module, aux: Any, training: AttackTraining = DEFAULT_TRAINING, seed: int = 0, **metadata: Any
    ) -> InversionAttacker:
        """Record ``(what_server_sees(target, aux), aux)`` once, as a curious server would, and train on it.

        ``aux`` is a split (or a tensor of images). With ``training.max_steps`` the budget
        is that many optimiser steps whatever the auxiliary set's size, so attackers with
        little and with much data get the same optimisation.
        """
        images = aux.images if hasattr(aux, "images") else aux
        if len(images) == 0:
            raise DataError("the attacker's auxiliary split is empty")
        L.seed_everything(seed, verbose=False)
        seen = what_server_sees(target, images)
        attacker = InversionAttacker(
            learning_rate=training.learning_rate,
            intermediate_shape=tuple(seen.shape[1:]),
            image_shape=tuple(images.shape[1:]),
            seed=seed,
            **metadata,
        )
        pairs = Split(seen, images)
        if training.max_steps is None:
            trainer = make_trainer(training.max_epochs, training.progress, training.log_dir, "attacker")
        else:
            trainer = make_trainer(-1, training.progress, training.log_dir, "attacker", max_steps=training.max_steps)
        trainer.fit(attacker, pairs.loader(training.batch_size, shuffle=True, seed=seed))
        attacker.eval()
        return attacker


__all__ = ["Decoder", "DecoderAttack", "InversionAttacker", "what_server_sees"]
