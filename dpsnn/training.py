"""Training loops for the split network, the attacker and the Validator.

Lightning runs every loop (it picks the accelerator, draws progress bars and, with a
``log_dir``, writes CSV logs). The functions return trained modules; writing files is
left to :mod:`dpsnn.checkpoints`. Example::

    from dpsnn.data import make_splits
    from dpsnn.training import train_attacker, train_classifier

    splits = make_splits("fashion-mnist", seed=0, train_size=5000)
    target, best_epoch = train_classifier(splits, noise_scale=0.5, nopeek_weight=0.1, max_epochs=2)
    attacker = train_attacker(target, splits.aux.images, max_epochs=10)
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from dpsnn.attacks.inversion import InversionAttacker, what_server_sees
from dpsnn.checkpoints import load_validator, save_checkpoint
from dpsnn.data import Split, Splits
from dpsnn.errors import DataError, TrainingDiverged
from dpsnn.metrics import DCOR_BATCH_SIZE
from dpsnn.models import SplitNN, Validator

for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# On a small slice the loader has few batches; Lightning's hint about workers and
# logging intervals is noise there (data is in memory, workers would only add copies).
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*number of training batches.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class BestWeights(L.Callback):
    """Keep, in memory, the weights of the epoch with the best ``monitor`` value."""

    def __init__(self, monitor: str = "val_acc", mode: str = "max") -> None:
        self.monitor, self.mode = monitor, mode
        self.best_value = -math.inf if mode == "max" else math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        better = value > self.best_value if self.mode == "max" else value < self.best_value
        if better or self.best_state is None:
            self.best_value, self.best_epoch = value, trainer.current_epoch
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in pl_module.state_dict().items()})


class StopOnNonFiniteLoss(L.Callback):
    """Raise :class:`TrainingDiverged` as soon as a training loss is NaN or infinite."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            raise TrainingDiverged(
                f"{type(pl_module).__name__} training diverged: non-finite loss at epoch {trainer.current_epoch}, "
                f"batch {batch_idx}"
            )


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
    return L.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        accelerator="auto",
        devices=1,
        logger=logger,
        callbacks=[StopOnNonFiniteLoss(), *(callbacks or [])],
        enable_checkpointing=False,  # dpsnn writes its own weights-only checkpoints
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )


def _fit_keeping_best(
    module: L.LightningModule,
    train: Split,
    val: Split,
    batch_size: int,
    max_epochs: int,
    seed: int,
    progress: bool,
    log_dir: str | Path | None,
) -> int:
    """Fit ``module``, then load the weights of its best epoch by val accuracy; return that epoch."""
    best = BestWeights("val_acc", "max")
    trainer = make_trainer(max_epochs, progress, log_dir, type(module).__name__.lower(), [best])
    # dCor is a batch statistic: validate at the size every script measures it at.
    trainer.fit(module, train.loader(batch_size, shuffle=True, seed=seed), val.loader(DCOR_BATCH_SIZE))
    module.load_state_dict(best.best_state)
    module.eval()
    return best.best_epoch


def train_classifier(
    splits: Splits,
    noise_scale: float = 0.0,
    nopeek_weight: float = 0.0,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    max_epochs: int = 10,
    seed: int = 0,
    progress: bool = True,
    log_dir: str | Path | None = None,
    lr_schedule: str = "constant",
) -> tuple[SplitNN, int]:
    """Train a :class:`SplitNN` on ``splits.train``; return it at its best val accuracy, and that epoch.

    ``lr_schedule`` is ``"constant"`` (Adam at ``learning_rate`` throughout) or ``"one-cycle"``
    (warm up to ``learning_rate``, then anneal to almost zero by the last epoch).
    """
    splits.train.require("target train")
    splits.val.require("target val")
    L.seed_everything(seed, verbose=False)
    model = SplitNN(
        noise_scale=noise_scale,
        nopeek_weight=nopeek_weight,
        learning_rate=learning_rate,
        num_classes=splits.num_classes,
        dataset=splits.name,
        seed=seed,
        train_size=len(splits.train),
        lr_schedule=lr_schedule,
    )
    epoch = _fit_keeping_best(model, splits.train, splits.val, batch_size, max_epochs, seed, progress, log_dir)
    return model, epoch


def train_attacker(
    target: SplitNN,
    aux_images: Tensor,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    max_epochs: int = 20,
    seed: int = 0,
    progress: bool = True,
    log_dir: str | Path | None = None,
    max_steps: int | None = None,
    **metadata: object,
) -> InversionAttacker:
    """Train a decoder on ``(what_server_sees(target, aux), aux)`` pairs.

    The pairs are recorded once, as a curious server would record them: each auxiliary
    image crosses the wire with its noise. With ``max_steps`` the budget is that many
    optimiser steps whatever the auxiliary set's size (``max_epochs`` is then ignored),
    so that attackers with little and with much data get the same optimisation.
    """
    if len(aux_images) == 0:
        raise DataError("the attacker's auxiliary split is empty")
    L.seed_everything(seed, verbose=False)
    seen = what_server_sees(target, aux_images)
    attacker = InversionAttacker(learning_rate=learning_rate, intermediate_size=seen.shape[1], seed=seed, **metadata)
    pairs = Split(seen, aux_images)
    if max_steps is None:
        trainer = make_trainer(max_epochs, progress, log_dir, "attacker")
    else:
        trainer = make_trainer(-1, progress, log_dir, "attacker", max_steps=max_steps)
    trainer.fit(attacker, pairs.loader(batch_size, shuffle=True, seed=seed))
    attacker.eval()
    return attacker


def train_validator(
    train: Split,
    val: Split,
    num_classes: int,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    max_epochs: int = 3,
    seed: int = 0,
    progress: bool = True,
    **metadata: object,
) -> tuple[Validator, int]:
    """Train the independent :class:`Validator`; return it at its best val accuracy, and that epoch."""
    train.require("validator train")
    val.require("validator val")
    L.seed_everything(seed, verbose=False)
    validator = Validator(num_classes=num_classes, learning_rate=learning_rate, **metadata)
    return validator, _fit_keeping_best(validator, train, val, batch_size, max_epochs, seed, progress, None)


def obtain_validator(
    splits: Splits,
    folder: str | Path,
    max_epochs: int = 3,
    train_size: int | None = None,
    progress: bool = True,
) -> Validator:
    """The Validator of ``splits``'s dataset and seed: loaded from ``folder`` or trained and saved there.

    It is trained on the target train split, whose images are never scored.
    """
    seed = splits.seed
    path = Path(folder) / f"{splits.name}_seed{seed}_{train_size or 'all'}train_{max_epochs}epochs.ckpt"
    if path.is_file():
        return load_validator(path)
    validator, epoch = train_validator(
        splits.train.subset(train_size),
        splits.val,
        splits.num_classes,
        max_epochs=max_epochs,
        seed=seed,
        progress=progress,
        dataset=splits.name,
        data_seed=seed,
    )
    save_checkpoint(validator, path, "validator", epoch)
    return validator
