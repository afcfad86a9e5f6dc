"""The split network and the independent Validator classifier.

Example::

    from dpsnn import SplitNN

    model = SplitNN(noise_scale=0.5, nopeek_weight=0.1)
    what_server_sees = model.encode(images)  # (N, 500), noise included
    logits = model(images)                   # (N, 10)
    model.set_noise(1.0)                     # change the wire noise of a trained model
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpsnn.defences.noise import LaplaceNoise, check_scale
from dpsnn.defences.nopeek import NoPeekLoss, distance_correlation
from dpsnn.errors import ConfigError

INTERMEDIATE_SIZE = 500


#: ``constant``: Adam at ``learning_rate`` throughout; ``one-cycle``: warm up to it, then anneal.
LR_SCHEDULES = ("constant", "one-cycle")


class ClientNet(nn.Sequential):
    """The data holder's layers: two convolutions, max-pool, a linear map to 500, tanh."""

    def __init__(self, intermediate_size: int = INTERMEDIATE_SIZE) -> None:
        super().__init__(
            nn.Conv2d(1, 32, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, intermediate_size),
            nn.Tanh(),
        )


class ServerNet(nn.Sequential):
    """The computation server's layers: 500 to 128, ReLU, 128 to the class logits."""

    def __init__(self, num_classes: int = 10, intermediate_size: int = INTERMEDIATE_SIZE) -> None:
        super().__init__(
            nn.Linear(intermediate_size, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )


class _Classifier(L.LightningModule):
    """One shared step for training, validation and test; subclasses define ``_step``."""

    def _step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        measured = self._step(batch)
        for key, value in measured.items():
            if value is not None:
                self.log(f"{stage}_{key}", value, on_step=False, on_epoch=True, prog_bar=key in ("loss", "acc"))
        return measured["loss"]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)
        # The Validator has no schedule option: it always trains at a constant rate.
        if self.hparams.get("lr_schedule", "constant") == "constant":
            return optimizer
        # One cycle: warm up to the learning rate, then anneal to almost zero by the last step.
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.learning_rate, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class SplitNN(_Classifier):
    """A split network with defences on the wire.

    ``client`` runs on the data holder, ``server`` on the computation server; between
    them the intermediate tensor ``h`` passes through :class:`LaplaceNoise`, and the
    training loss is :class:`NoPeekLoss` (cross-entropy plus ``nopeek_weight`` times
    dCor(x, h)). Custom ``client``/``server`` modules may be passed; checkpoints of the
    default architecture are rebuilt from their hyperparameters alone.
    """

    def __init__(
        self,
        noise_scale: float = 0.0,
        nopeek_weight: float = 0.0,
        learning_rate: float = 1e-3,
        num_classes: int = 10,
        client: nn.Module | None = None,
        server: nn.Module | None = None,
        lr_schedule: str = "constant",
        **metadata: Any,
    ) -> None:
        super().__init__()
        noise_scale = check_scale(noise_scale)
        nopeek_weight = check_scale(nopeek_weight, "NoPeek weight")
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown learning-rate schedule {lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        # ``metadata`` (dataset, seed, ...) travels with the checkpoint.
        self.save_hyperparameters(ignore=["client", "server"])
        self.client = client if client is not None else ClientNet()
        self.wire = LaplaceNoise(noise_scale)
        self.server = server if server is not None else ServerNet(num_classes)
        self.loss_fn = NoPeekLoss(nopeek_weight)

    def encode(self, x: Tensor) -> Tensor:
        """Exactly what the server receives: the client's output with the wire noise."""
        return self.wire(self.client(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (no softmax)."""
        return self.server(self.encode(x))

    def set_noise(self, scale: float) -> None:
        """Change the noise on the wire, e.g. to add noise only at inference.

        ``hparams.noise_scale`` keeps the scale the model was trained with.
        """
        self.wire.scale = scale

    def _step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, y = batch
        h = self.client(x)
        what_server_sees = self.wire(h)
        logits = self.server(what_server_sees)
        terms = self.loss_fn.terms(x, h, logits, y)
        measured = {
            "loss": terms["loss"],
            "acc": (logits.argmax(dim=1) == y).float().mean(),
        }
        if self.training:
            measured["nopeek_dcor"] = terms["dcor"]
        else:
            # Leakage of the wire, measured on what the server actually sees.
            measured["dcor"] = distance_correlation(x, what_server_sees)
        return measured


class Validator(_Classifier):
    """An independent classifier, used to ask whether reconstructions are recognisable.

    Its architecture differs from the split network's, and it is trained on images that
    are never scored, so its accuracy on a reconstruction says how much of the class a
    human-free judge can still read from it.
    """

    def __init__(self, num_classes: int = 10, learning_rate: float = 1e-3, **metadata: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, y = batch
        logits = self(x)
        return {"loss": F.cross_entropy(logits, y), "acc": (logits.argmax(dim=1) == y).float().mean()}


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Class predictions of ``model`` for ``images``, batch by batch, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(chunk.to(device)).argmax(dim=1).cpu() for chunk in images.split(batch_size)])
