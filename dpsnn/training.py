"""Training loops for the split network, the attacker and the Validator.

Lightning runs every loop (it picks the accelerator, draws progress bars and, with a
``log_dir``, writes CSV logs). The functions return trained modules; writing files is
left to :mod:`dpsnn.checkpoints`. Example::

    from dpsnn.data import make_splits
    from dpsnn.training import train_attacker, train_classifier

    splits = make_splits("fashion-mnist", seed=0, train_size=5000)
    target, best_epoch = train_classifier(splits, defences=["laplace:scale=0.5", "nopeek:weight=0.1"], max_epochs=2)
    attacker = train_attacker(target, splits.aux.images, max_epochs=10)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning as L
from torch import Tensor, nn

from dpsnn.attacks._decoder_module import InversionAttacker
from dpsnn.attacks.base import AttackTraining
from dpsnn.attacks.inversion import DecoderAttack
from dpsnn.checkpoints import load_validator, save_checkpoint
from dpsnn.data import Split, Splits
from dpsnn.errors import ConfigError
from dpsnn.loops import BestWeights, make_trainer
from dpsnn.metrics import DCOR_BATCH_SIZE
from dpsnn.models import DefenceLike, SplitNN, Validator, _Classifier

KEEP = ("best", "last")  # which epoch's weights a trained classifier keeps

__all__ = ["KEEP", "make_trainer", "obtain_validator", "train_attacker", "train_classifier", "train_validator"]


def _fit_keeping_best(
    module: _Classifier,
    train: Split,
    val: Split,
    batch_size: int,
    max_epochs: int,
    seed: int,
    progress: bool,
    log_dir: str | Path | None,
    callbacks: list[L.Callback] | None = None,
    keep: str = "best",
) -> int:
    """Fit ``module``, then load the weights of its best epoch by val accuracy; return that epoch.

    A callback with ``keeps_from_epoch`` (a pruning schedule) rules out the epochs before it.
    ``keep="last"`` keeps the weights of the last epoch instead (and returns its number).
    """
    if keep not in KEEP:
        raise ConfigError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    first = max((getattr(callback, "keeps_from_epoch", 0) for callback in callbacks or []), default=0)
    best = BestWeights("val_acc", "max", from_epoch=min(first, max_epochs - 1))
    trainer = make_trainer(max_epochs, progress, log_dir, type(module).__name__.lower(), [best, *(callbacks or [])])
    module.use_train_loader(train.loader(batch_size, shuffle=True, seed=seed))
    # dCor is a batch statistic: validate at the size every script measures it at.
    trainer.fit(module, val_dataloaders=val.loader(DCOR_BATCH_SIZE))
    module.eval()
    if keep == "last":
        return max_epochs - 1
    module.load_state_dict(best.best_state)
    return best.best_epoch


def train_classifier(
    splits: Splits,
    noise_scale: float | None = None,
    nopeek_weight: float | None = None,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    max_epochs: int = 10,
    seed: int = 0,
    progress: bool = True,
    log_dir: str | Path | None = None,
    lr_schedule: str = "constant",
    architecture: str = "reference",
    defences: Iterable[DefenceLike] = (),
    client: nn.Module | None = None,
    server: nn.Module | None = None,
    keep: str = "best",
) -> tuple[SplitNN, int]:
    """Train a :class:`SplitNN` on ``splits.train``; return it at its best val accuracy, and that epoch.

    ``keep="last"`` returns it as the last epoch left it instead (MICO's recipe).

    ``architecture`` (or your own ``client`` and ``server``) and ``defences`` are as in
    :class:`SplitNN`; ``noise_scale`` and ``nopeek_weight`` are shorthand for the
    ``laplace`` and ``nopeek`` defences. ``lr_schedule`` is ``"constant"`` (Adam at
    ``learning_rate`` throughout) or ``"one-cycle"`` (warm up to ``learning_rate``, then
    anneal to almost zero by the last epoch). Defences' callbacks join the trainer's.
    """
    splits.train.require("target train")
    splits.val.require("target val")
    L.seed_everything(seed, verbose=False)
    model = SplitNN(
        architecture=architecture,
        defences=defences,
        noise_scale=noise_scale,
        nopeek_weight=nopeek_weight,
        learning_rate=learning_rate,
        num_classes=splits.num_classes,
        input_shape=splits.image_shape,
        client=client,
        server=server,
        lr_schedule=lr_schedule,
        dataset=splits.name,
        seed=seed,
        train_size=len(splits.train),
    )
    callbacks = [callback for defence in model.defences for callback in defence.callbacks()]
    epoch = _fit_keeping_best(
        model, splits.train, splits.val, batch_size, max_epochs, seed, progress, log_dir, callbacks, keep
    )
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
    """The ``decoder`` attack fitted on ``(what_server_sees(target, aux), aux)`` pairs (see :class:`DecoderAttack`)."""
    training = AttackTraining(learning_rate, batch_size, max_epochs, max_steps, progress, log_dir)
    return DecoderAttack().fit(target, aux_images, training, seed=seed, **metadata)


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
    validator = Validator(
        num_classes=num_classes, learning_rate=learning_rate, image_shape=tuple(train.images.shape[1:]), **metadata
    )
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
    # The name holds the number of images it trains on, so splits of another size never share one.
    images = len(splits.train.subset(train_size))
    path = Path(folder) / f"{splits.name}_seed{seed}_{images}train_{max_epochs}epochs.ckpt"
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
