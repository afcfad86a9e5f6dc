"""The split network, composing an architecture with defences, and the independent Validator.

Example::

    from dpsnn import SplitNN

    model = SplitNN("reference", defences=["laplace:scale=0.5", "nopeek:weight=0.1"])
    what_server_sees = model.encode(images)  # (N, 500), noise included
    logits = model(images)                   # (N, 10)
    model.set_wire(["laplace:scale=1"])      # other wire noise on a trained model

    cifar = SplitNN("resnet18:2", input_shape=(3, 32, 32), num_classes=10)
    mine = SplitNN(client=my_client, server=my_server, input_shape=(3, 32, 32))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpsnn.architectures import (
    ClientNet,
    ServerNet,
    build_split,
    canonical_architecture,
    check_input_shape,
    intermediate_shape,
)
from dpsnn.defences import Defence, Laplace, NoPeek, canonical, check, defence_from, normalise
from dpsnn.defences.dp import privacy_of
from dpsnn.errors import ConfigError
from dpsnn.stats import distance_correlation

__all__ = ["ClientNet", "LR_SCHEDULES", "ServerNet", "SplitNN", "Validator"]

#: ``constant``: Adam at ``learning_rate`` throughout; ``one-cycle``: warm up to it, then anneal.
LR_SCHEDULES = ("constant", "one-cycle")
CUSTOM = "custom"  # the architecture name of a split built from the user's own modules
DefenceLike = Defence | str | Mapping[str, Any]


class _Classifier(L.LightningModule):
    """One shared step for training, validation and test; subclasses define ``_step``.

    The training batches come from :meth:`use_train_loader`; :meth:`configure_optimizers`
    lets the subclass wrap the optimiser and that loader (DP-SGD replaces both).
    """

    _train_loader: Any = None  # the batches given to use_train_loader
    _fit_loader: Any = None  # the same, wrapped by the defences, for the current fit

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

    def use_train_loader(self, loader: Any) -> None:
        """The batches to train on (``trainer.fit`` then needs no train loader); the defences' ``wrap`` sees them."""
        self._train_loader, self._fit_loader = loader, None

    def train_dataloader(self) -> Any:
        if self._train_loader is None:
            raise ConfigError(f"{type(self).__name__} has no training data: call use_train_loader(loader) first")
        return self._fit_loader if self._fit_loader is not None else self._train_loader

    def _wrap(self, optimizer: torch.optim.Optimizer, loader: Any) -> tuple[torch.optim.Optimizer, Any]:
        return optimizer, loader

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)
        # Each fit wraps the loader it was given afresh, never an already wrapped one.
        optimizer, self._fit_loader = self._wrap(optimizer, self._train_loader)
        # The Validator has no schedule option: it always trains at a constant rate.
        if self.hparams.get("lr_schedule", "constant") == "constant":
            return optimizer
        # One cycle: warm up to the learning rate, then anneal to almost zero by the last step.
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.learning_rate, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _with_legacy(
    defences: Iterable[DefenceLike], noise_scale: float | None, nopeek_weight: float | None
) -> list[Defence]:
    """The defences, with the reference interface's ``noise_scale`` and ``nopeek_weight`` as specs."""
    specs = [defence_from(d) for d in defences]
    if noise_scale is not None:
        specs.append(Laplace(scale=noise_scale))
    if nopeek_weight is not None:
        specs.append(NoPeek(weight=nopeek_weight))
    return specs


class Wire(nn.Sequential):
    """The modules every tensor passes through between client and server, in order."""


class SplitNN(_Classifier):
    """A split network: a client part, defences on the wire and in the loss, a server part.

    ``architecture`` names a registered split (:mod:`dpsnn.architectures`) built for
    ``input_shape`` and ``num_classes``; or pass ``client`` and ``server`` modules of your
    own. ``defences`` are registered specs, their command-line strings
    (``"laplace:scale=0.5"``) or plain dicts; ``noise_scale`` and ``nopeek_weight`` are the
    reference interface's shorthand for the ``laplace`` and ``nopeek`` specs. A checkpoint
    of a registered architecture rebuilds from its hyperparameters alone; one of custom
    modules loads into modules you pass (:func:`dpsnn.load_classifier`).
    """

    def __init__(
        self,
        architecture: str = "reference",
        defences: Iterable[DefenceLike] = (),
        learning_rate: float = 1e-3,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        client: nn.Module | None = None,
        server: nn.Module | None = None,
        lr_schedule: str = "constant",
        noise_scale: float | None = None,
        nopeek_weight: float | None = None,
        **metadata: Any,
    ) -> None:
        super().__init__()
        specs = normalise(check(_with_legacy(defences, noise_scale, nopeek_weight)))
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown learning-rate schedule {lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        input_shape = check_input_shape(input_shape)
        if (client is None) != (server is None):
            raise ConfigError("pass both a client and a server module, or neither (then an architecture is built)")
        if client is None:
            architecture = canonical_architecture(architecture)
            client, server = build_split(architecture, input_shape, num_classes)
        else:
            architecture = CUSTOM
        # Plain data only: the checkpoint rebuilds the model from these (``metadata``: dataset, seed, ...).
        self.save_hyperparameters(
            {
                "architecture": architecture,
                "defences": [d.to_dict() for d in specs],
                "learning_rate": float(learning_rate),
                "num_classes": int(num_classes),
                "input_shape": list(input_shape),
                "lr_schedule": lr_schedule,
                **metadata,
            }
        )
        self.defences: tuple[Defence, ...] = specs
        self.client = client
        self.server = server
        for defence in specs:
            defence.check_parts({"client": client, "server": server})
        self.set_wire(specs)
        # What defences train beside the model (a proxy attacker): a tuple, so not submodules, never saved.
        self.companions: tuple[Any, ...] = tuple(c for c in (d.companion() for d in specs) if c is not None)
        if self.companions:
            shape = intermediate_shape(self.client, self.hparams.input_shape)
            for companion in self.companions:
                companion.build(shape, tuple(self.hparams.input_shape), int(self.hparams.num_classes))

    @property
    def wire_defences(self) -> tuple[Defence, ...]:
        """The defences on the wire now (those it was trained with, unless :meth:`set_wire` changed them)."""
        return self._wire_defences

    def set_wire(self, defences: Iterable[DefenceLike]) -> None:
        """Put the wire defences of ``defences`` on the wire, e.g. noise switched on after training.

        Defences without a wire module (NoPeek) are ignored; ``hparams`` keep what the
        model was trained with.
        """
        specs = normalise(check([defence_from(d) for d in defences]))
        self._wire_defences = tuple(d for d in specs if d.wire() is not None)
        self.wire = Wire(*(d.wire() for d in self._wire_defences))
        learned = [module for module in self.wire if hasattr(module, "build")]
        if learned:  # a wire with weights of its own (vib) is built for the client's output
            shape = intermediate_shape(self.client, self.hparams.input_shape)
            for module in learned:
                module.build(shape)

    def set_noise(self, scale: float) -> None:
        """Replace the wire with Laplace noise of ``scale`` (the reference interface's post-training noise)."""
        self.set_wire([Laplace(scale=scale)])

    def trained_with(self) -> str:
        """The canonical string of the defences the model was trained with."""
        return canonical(self.defences)

    def encode(self, x: Tensor) -> Tensor:
        """Exactly what the server receives: the client's output after the wire defences."""
        return self.wire(self.client(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (no softmax)."""
        return self.server(self.encode(x))

    def _wrap(self, optimizer: torch.optim.Optimizer, loader: Any) -> tuple[torch.optim.Optimizer, Any]:
        wrapping = [d.name for d in self.defences if type(d).wrap is not Defence.wrap]
        if wrapping and loader is None:
            raise ConfigError(
                f"{', '.join(wrapping)} wraps the training data: train with dpsnn.training.train_classifier, or call "
                "model.use_train_loader(loader) and then trainer.fit(model) without a train loader"
            )
        epochs = self.trainer.max_epochs if self._trainer is not None else None
        parts = {"client": self.client, "model": nn.ModuleList([self.client, self.server])}
        for defence in self.defences:
            part = parts[defence.wrapped_part()]
            optimizer, loader = defence.wrap(part, optimizer, loader, epochs=epochs if epochs and epochs > 0 else None)
        return optimizer, loader

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """The loss's backward pass; DP-SGD's ghost clipping replaces it by its two passes."""
        privacy = privacy_of(self.trainer) if self._trainer is not None else None
        if privacy is not None and privacy.ghost:
            privacy.backward(self._per_sample_loss)
        else:
            super().backward(loss, *args, **kwargs)

    def loss_terms(self, x: Tensor, h: Tensor, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The defences' terms of the loss on one batch, after ``logits = server(wire(h))`` was computed from it.

        Each defence's ``loss_terms``, a learned wire's own terms of that forward pass (vib's
        KL) and, in training, each companion's (a proxy attacker, refitted on this batch).
        """
        terms: dict[str, Tensor] = {}
        for defence in self.defences:
            terms |= defence.loss_terms(x, h, logits, y)
        for module in self.wire:
            if hasattr(module, "loss_terms"):
                terms |= module.loss_terms()
        if self.training:
            for companion in self.companions:
                terms |= companion.loss_terms(x, h, y)
        return terms

    def _step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, y = batch
        h = self.client(x)
        what_server_sees = self.wire(h)
        logits = self.server(what_server_sees)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        cross_entropy = per_sample.mean()
        terms = self.loss_terms(x, h, logits, y)
        if self.training:  # each example's loss, for DP-SGD's ghost clipping (batch-level terms added to each)
            self._per_sample_loss = per_sample + sum(terms.values())
        measured = {
            "loss": cross_entropy + sum(terms.values()),
            "acc": (logits.argmax(dim=1) == y).float().mean(),
        }
        if self.training:
            measured |= {"cross_entropy": cross_entropy, **terms}
        else:
            # Leakage of the wire, measured on what the server actually sees.
            measured["dcor"] = distance_correlation(x, what_server_sees)
        return measured


class Validator(_Classifier):
    """An independent classifier, used to ask whether reconstructions are recognisable.

    Its architecture differs from the split network's, and it is trained on images that
    are never scored, so its accuracy on a reconstruction says how much of the class a
    human-free judge can still read from it. It is built for any ``image_shape``.
    """

    def __init__(
        self, num_classes: int = 10, learning_rate: float = 1e-3, image_shape: Sequence[int] = (1, 28, 28), **metadata
    ) -> None:
        super().__init__()
        channels, height, width = check_input_shape(image_shape)
        self.save_hyperparameters(
            {"num_classes": num_classes, "learning_rate": learning_rate, "image_shape": [channels, height, width]}
            | metadata
        )
        self.net = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (height // 4) * (width // 4), 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, y = batch
        logits = self(x)
        return {"loss": F.cross_entropy(logits, y), "acc": (logits.argmax(dim=1) == y).float().mean()}
