"""The model-inversion attacker: a decoder from what the server sees back to the image.

The curious server feeds its own auxiliary images through the client, records the
pairs ``(what_server_sees, image)`` (noise included) and trains a decoder on them with
MSE. Example::

    from dpsnn.attacks import InversionAttacker, what_server_sees

    seen = what_server_sees(target, aux_images)
    attacker = InversionAttacker()
    # train on (seen, aux_images) pairs, then
    reconstructions = attacker(what_server_sees(target, test_images))
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpsnn.models import INTERMEDIATE_SIZE, SplitNN


class Decoder(nn.Sequential):
    """500-vector to a 1x28x28 image in [0, 1]: a linear map and two transposed convolutions."""

    def __init__(self, intermediate_size: int = INTERMEDIATE_SIZE) -> None:
        super().__init__(
            nn.Linear(intermediate_size, 64 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, kernel_size=4, stride=2, padding=1),  # 14x14
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, kernel_size=4, stride=2, padding=1),  # 28x28
            nn.ReLU(),
            nn.Conv2d(16, 1, kernel_size=3, padding=1),
            nn.Sigmoid(),  # bounded like the pixels it predicts
        )


class InversionAttacker(L.LightningModule):
    """Decoder trained with MSE on ``(what_server_sees, image)`` batches."""

    def __init__(
        self, learning_rate: float = 1e-3, intermediate_size: int = INTERMEDIATE_SIZE, **metadata: Any
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.decoder = Decoder(intermediate_size)

    def forward(self, what_server_sees: Tensor) -> Tensor:
        return self.decoder(what_server_sees)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        seen, images = batch
        loss = F.mse_loss(self(seen), images)
        self.log(f"{stage}_mse", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


@torch.no_grad()
def what_server_sees(target: SplitNN, images: Tensor, batch_size: int = 512) -> Tensor:
    """Run ``images`` through the client and the wire noise, batch by batch.

    Returns the tensors the server receives, on the CPU. The noise is drawn afresh, as
    it is every time an image crosses the wire.
    """
    target.eval()
    device = next(target.parameters()).device
    parts = [target.encode(chunk.to(device)).cpu() for chunk in images.split(batch_size)]
    return torch.cat(parts) if parts else images.new_empty((0, INTERMEDIATE_SIZE))
