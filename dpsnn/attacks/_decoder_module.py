"""The fitted form of every decoder attack: :class:`InversionAttacker`, a LightningModule.

It lives apart from the attack specs (:mod:`dpsnn.attacks.inversion`) so that reading
results, which builds the specs, does not load Lightning; the registry skips this module (its
name starts with an underscore). ``from dpsnn.attacks.inversion import InversionAttacker``
still finds it. Example::

    from dpsnn.attacks._decoder_module import InversionAttacker

    attacker = InversionAttacker(intermediate_shape=(500,), image_shape=(1, 28, 28))
    reconstructions = attacker(torch.randn(4, 500))              # (4, 1, 28, 28)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from dpsnn.attacks.base import Observation, Reconstructions
from dpsnn.attacks.inversion import LOSSES, Decoder, conditioned_shape, reconstruction_loss, with_labels
from dpsnn.errors import ConfigError
from dpsnn.inference import batched

__all__ = ["InversionAttacker"]


class InversionAttacker(L.LightningModule):
    """A decoder trained on ``(what_server_sees, image)`` batches; the fitted form of every decoder attack.

    ``decoder_size``, ``loss`` and ``num_classes`` (the one-hot labels appended to what
    the server sees; 0 for none) are recorded in the checkpoint, so it loads as it was
    trained; checkpoints written before they existed load as the ``decoder`` attack.
    """

    def __init__(
        self,
        learning_rate: float = 1e-3,
        intermediate_shape: Sequence[int] | None = None,
        image_shape: Sequence[int] = (1, 28, 28),
        intermediate_size: int | None = None,  # checkpoints written before shapes were recorded
        decoder_size: str = "standard",
        loss: str = "mse",
        num_classes: int = 0,
        **metadata: Any,
    ) -> None:
        super().__init__()
        if intermediate_shape is None:
            intermediate_shape = (intermediate_size or 500,)
        if loss not in LOSSES:
            raise ConfigError(f"unknown decoder loss '{loss}'; choose from {', '.join(LOSSES)}")
        self.save_hyperparameters(
            {
                "learning_rate": learning_rate,
                "intermediate_shape": list(intermediate_shape),
                "image_shape": list(image_shape),
                "decoder_size": decoder_size,
                "loss": loss,
                "num_classes": num_classes,
                **metadata,
            }
        )
        self.decoder = Decoder(conditioned_shape(intermediate_shape, num_classes), image_shape, decoder_size)

    def forward(self, what_server_sees: Tensor, labels: Tensor | None = None) -> Tensor:
        num_classes = self.hparams.num_classes
        if num_classes:
            if labels is None:
                raise ConfigError("this decoder is conditioned on the predicted label: pass the labels too")
            what_server_sees = with_labels(what_server_sees, labels, num_classes)
        return self.decoder(what_server_sees)

    def run(self, observation: Observation) -> Reconstructions:
        """The reconstructions of the images behind what the server saw (and, if conditioned, its labels)."""
        if not self.hparams.num_classes:
            return Reconstructions(batched(self, observation.seen))
        inputs = with_labels(observation.seen, observation.predicted, self.hparams.num_classes)
        return Reconstructions(batched(self.decoder, inputs, module=self))

    def _shared_step(self, batch: tuple[Tensor, ...], stage: str) -> Tensor:
        seen, images, *labels = batch
        reconstructions = self(seen, *labels)
        loss = reconstruction_loss(reconstructions, images, self.hparams.loss)
        self.log(f"{stage}_{self.hparams.loss}", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)
