"""The label-only baseline (the ``label-only`` attack).

The server learns each input's label anyway (it computes it). An attacker that knows
only the label can do no better than the mean auxiliary image of that class; an
inversion attack is worth something only by its gap to this baseline. Example::

    baseline = LabelOnlyBaseline.fit(aux_images, aux_labels, num_classes=10)
    guesses = baseline(predicted_labels)
    LabelOnly().fit(target, splits.aux).run(observe(target, test_images)).images   # the same, as an attack
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
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
from dpsnn.errors import DataError


class LabelOnlyBaseline:
    """Class-mean images of the attacker's auxiliary data; the fitted ``label-only`` attack."""

    def __init__(self, class_means: Tensor) -> None:
        self.class_means = class_means

    @classmethod
    def fit(cls, images: Tensor, labels: Tensor, num_classes: int) -> LabelOnlyBaseline:
        if len(labels) == 0:
            raise DataError("the auxiliary split is empty: the label-only baseline needs images")
        sums = torch.zeros((num_classes, *images.shape[1:]), dtype=images.dtype)
        sums.index_add_(0, labels, images)
        counts = torch.bincount(labels, minlength=num_classes).to(images.dtype)
        # A class absent from the auxiliary data falls back to the overall mean image.
        overall = images.mean(dim=0, keepdim=True).expand_as(sums)
        shape = (num_classes,) + (1,) * (images.dim() - 1)
        means = torch.where(counts.view(shape) > 0, sums / counts.clamp_min(1).view(shape), overall)
        return cls(means)

    def __call__(self, predicted_labels: Tensor) -> Tensor:
        return self.class_means[predicted_labels.cpu()]

    def run(self, observation: Observation) -> Reconstructions:
        """The class-mean image of each label the server predicted."""
        return Reconstructions(self(observation.predicted))


@register_attack("label-only")
@dataclass(frozen=True)
class LabelOnly(Attack):
    """Guess the mean auxiliary image of the predicted class: what the label alone gives away."""

    threat_model = ThreatModel(predicted_labels=True, aux_data=True)

    def fit(
        self, target: nn.Module, aux: Any, training: AttackTraining = DEFAULT_TRAINING, seed: int = 0, **metadata: Any
    ) -> LabelOnlyBaseline:
        num_classes = int(target.hparams.get("num_classes", 10))
        return LabelOnlyBaseline.fit(aux.images, aux.labels, num_classes)
