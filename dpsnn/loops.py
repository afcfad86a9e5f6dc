"""The Lightning Trainer every model trains with, and the callbacks dpsnn adds to it.

Example::

    from dpsnn.loops import BestWeights, make_trainer

    best = BestWeights("val_acc", "max")
    trainer = make_trainer(max_epochs=3, progress=False, callbacks=[best])
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from dpsnn.errors import TrainingDiverged

# Messages that are noise for dpsnn's in-memory data: Lightning's hint about loader
# workers (workers would only add copies), logging intervals on small slices, and a
# deprecation inside Lightning itself.
QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*number of training batches.*",
    r".*isinstance\(treespec, LeafSpec\).*",
    # Opacus: the noise comes from torch's generator (seeded runs); its hooks on the client's first layer,
    # whose input needs no gradient; and a looser-than-possible RDP bound on small data (ε is then an upper bound).
    r".*Secure RNG turned off.*",
    r".*Full backward hook is firing when gradients are computed with respect to module outputs.*",
    r".*Optimal order is the largest alpha.*",
)
QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric")


class BestWeights(L.Callback):
    """Keep, in memory, the weights of the epoch with the best ``monitor`` value (from epoch ``from_epoch`` on).

    Weights being pruned (``torch.nn.utils.prune``) are kept with their masks applied, in
    the usual state-dict layout.
    """

    def __init__(self, monitor: str = "val_acc", mode: str = "max", from_epoch: int = 0) -> None:
        self.monitor, self.mode, self.from_epoch = monitor, mode, from_epoch
        self.best_value = -math.inf if mode == "max" else math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        if trainer.current_epoch < self.from_epoch:
            return
        value = float(trainer.callback_metrics[self.monitor])
        better = value > self.best_value if self.mode == "max" else value < self.best_value
        if better or self.best_state is None:
            self.best_value, self.best_epoch = value, trainer.current_epoch
            state = fold_pruning(pl_module.state_dict())
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in state.items()})


def fold_pruning(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with every ``X_orig``/``X_mask`` pair of ``torch.nn.utils.prune`` folded into ``X``."""
    folded = {}
    for key, value in state.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            base = key[: -len("_orig")]
            folded[base] = value * state[base + "_mask"]
        else:
            folded[key] = value
    return folded


class StopOnNonFiniteLoss(L.Callback):
    """Raise :class:`TrainingDiverged` as soon as a training loss is NaN or infinite."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            raise TrainingDiverged(
                f"{type(pl_module).__name__} training diverged: non-finite loss at epoch {trainer.current_epoch}, "
                f"batch {batch_idx}"
            )


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence :data:`QUIET_WARNINGS` and Lightning's info loggers inside the block, then restore them."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


class QuietLightning(L.Callback):
    """:func:`quiet_lightning` for the length of one ``fit`` (nothing is changed for the rest of the process)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._quiet = ExitStack()
        self._quiet.enter_context(quiet_lightning())

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._quiet.close()


def make_trainer(
    max_epochs: int,
    progress: bool = True,
    log_dir: str | Path | None = None,
    log_name: str = "dpsnn",
    callbacks: list[L.Callback] | None = None,
    max_steps: int = -1,
) -> L.Trainer:
    """A Trainer with dpsnn's defaults: any accelerator, no automatic checkpoint files.

    Training stops with :class:`TrainingDiverged` on a non-finite loss. With ``max_steps``
    set, it ends after that many optimiser steps (``max_epochs=-1`` lifts the epoch limit).
    """
    logger = L.pytorch.loggers.CSVLogger(str(log_dir), name=log_name) if log_dir else False
    with quiet_lightning():
        return L.Trainer(
            max_epochs=max_epochs,
            max_steps=max_steps,
            accelerator="auto",
            devices=1,
            logger=logger,
            callbacks=[QuietLightning(), StopOnNonFiniteLoss(), *(callbacks or [])],
            enable_checkpointing=False,  # dpsnn writes its own weights-only checkpoints
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=10,
        )
