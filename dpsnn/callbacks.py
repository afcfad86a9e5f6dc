"""Lightning callbacks of the training defences: DP-SGD's privacy monitor and suppress-privacy's schedule.

They live outside :mod:`dpsnn.defences` so that the defence registry imports no
Lightning; each defence's ``callbacks()`` imports them when training starts. Example::

    callbacks = DPSGD(epsilon=4).callbacks()     # [PrivacyMonitor()]
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn
from torch.nn.utils import prune

from dpsnn.defences.dp import privacy_of
from dpsnn.defences.suppress import Suppress, _weight, cubic_sparsity, pruned_layers, sparsity
from dpsnn.errors import ConfigError

__all__ = ["PrivacyMonitor", "SuppressSchedule"]


class PrivacyMonitor(L.Callback):
    """ε after every epoch, every step counted: logged, and kept in ``model.hparams["privacy"]``.

    The record goes into the checkpoint's plain metadata; ``epsilons`` lists ε after each
    epoch, ``epsilon`` is the total after the last step taken, whichever epoch's weights
    are kept.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        privacy = privacy_of(trainer)
        if privacy is None:
            return
        epsilon = privacy.epsilon()
        privacy.epsilons.append(epsilon)
        pl_module.log("epsilon", epsilon, prog_bar=True, on_step=False, on_epoch=True)
        pl_module.hparams["privacy"] = privacy.record()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        privacy = privacy_of(trainer)
        if privacy is not None:
            pl_module.hparams["privacy"] = privacy.record()
            privacy.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        privacy = privacy_of(trainer)
        if privacy is not None:
            privacy.close()


class SuppressSchedule(L.Callback):
    """Applies :class:`Suppress`'s masking events during a fit; records the sparsity after each."""

    def __init__(self, spec: Suppress) -> None:
        self.spec = spec
        self.events: list[dict[str, Any]] = []  # {"step", "epoch", "target", "sparsity": {layer: value}}
        self._layers: dict[str, nn.Module] = {}
        self._event_steps: list[tuple[int, float]] = []
        self.keeps_from_epoch = max(spec.end_epoch - 1, 0)  # the epoch after whose end the last event has fired

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        spec = self.spec
        if trainer.max_epochs is not None and 0 < trainer.max_epochs < spec.end_epoch:
            raise ConfigError(
                f"suppress ends its schedule at epoch {spec.end_epoch}, after training ends ({trainer.max_epochs} "
                "epochs): lower end_epoch or train longer"
            )
        self._layers = pruned_layers(pl_module, spec.layers)
        steps_per_epoch = max(int(trainer.num_training_batches), 1)
        span = (spec.end_epoch - spec.start_epoch) / spec.mask_times
        self._event_steps = []
        for k in range(1, spec.mask_times + 1):
            at = spec.start_epoch + k * span
            self._event_steps.append((round(at * steps_per_epoch), at))
        self.events = []
        self._fire(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._fire(trainer.global_step)

    def _fire(self, done_steps: int) -> None:
        due = [event for event in self._event_steps if event[0] <= done_steps]
        if not due:
            return
        self._event_steps = self._event_steps[len(due) :]
        for step, at in due:  # several events on one step: the last target holds
            self._mask(step, at)

    def _mask(self, step: int, at: float) -> None:
        spec = self.spec
        span = spec.end_epoch - spec.start_epoch
        target = cubic_sparsity(at, spec.start_epoch, span, spec.sparse_start, spec.sparse_end)
        reached = {}
        for name, module in self._layers.items():
            total = module.weight.numel()
            zeroed = round(target * total)
            zeroed = min(zeroed, total - min(spec.min_kept, total))
            already = (
                int(module.weight_mask.numel() - module.weight_mask.sum()) if hasattr(module, "weight_mask") else 0
            )
            more = zeroed - already
            if more > 0 or not hasattr(module, "weight_mask"):
                # amount counts among the weights not yet pruned: the masks only grow. The magnitudes
                # are the weights' now: torch would rank by ``module.weight``, which the pruning hook
                # last computed in the forward pass, before this step's update.
                current = _weight(module).detach()
                prune.l1_unstructured(module, "weight", amount=max(more, 0), importance_scores=current)
            reached[name] = sparsity(module)
        self.events.append({"step": step, "epoch": at, "target": target, "sparsity": reached})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.make_permanent()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.make_permanent()

    def make_permanent(self) -> None:
        """Fold the masks into the weights and remove the reparametrisation (the usual state-dict layout)."""
        for module in self._layers.values():
            if prune.is_pruned(module) and hasattr(module, "weight_mask"):
                prune.remove(module, "weight")
