"""The strongest black-box inversion per image, chosen without looking at the test set (the ``best-of`` attack).

An adaptive attacker tries every decoder it has and keeps, for each image, the one it
expects to do best. ``best-of`` fits each decoder attack on the auxiliary split minus a
held-out part, measures each one's SSIM on what the server sees of the held-out images,
and chooses, for each class the server can predict, the attack with the highest mean
SSIM there (with ``by="all"``, one attack for every image). A test image is then
reconstructed by the attack chosen for the class the server predicts for it: the choice
uses only what a curious server has, never the test images or their true labels.
A class with fewer than ``min_per_class`` held-out images falls back to the overall choice.
Example::

    from dpsnn.attacks import AttackTraining, make_attack, observe

    best = make_attack("best-of").fit(target, splits.aux, AttackTraining(max_steps=500))
    best.choice                                  # {predicted class: attack name}
    reconstructions = best.run(observe(target, splits.test.images)).images
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dpsnn.attacks.base import (
    DEFAULT_TRAINING,
    Attack,
    AttackTraining,
    Observation,
    Reconstructions,
    ThreatModel,
    make_attack,
    observe,
    register_attack,
)
from dpsnn.data import Split
from dpsnn.errors import ConfigError, DataError
from dpsnn.metrics import per_image_ssim

DECODER_ATTACKS = ("decoder", "decoder-large", "decoder-ssim", "decoder-label")
CHOICES = ("class", "all")
ALL = -1  # the key of the overall choice


class BestOfAttacker:
    """Fitted decoder attacks and, per predicted class, the one chosen on held-out auxiliary images."""

    def __init__(self, members: Mapping[str, Any], held_out_ssim: Mapping[str, Tensor], choice: dict[int, str]) -> None:
        self.members = dict(members)
        self.held_out_ssim = dict(held_out_ssim)  # per member: the SSIM of each held-out image
        self.choice = choice  # predicted class (or ALL) -> member name

    def chosen(self, predicted: Tensor) -> list[str]:
        """The member that reconstructs each image, from the class the server predicted for it."""
        return [self.choice.get(int(label), self.choice[ALL]) for label in predicted]

    def run(self, observation: Observation) -> Reconstructions:
        """Every member's reconstructions, then each image's from the member chosen for its predicted class."""
        names = self.chosen(observation.predicted)
        needed = sorted(set(names))
        outputs = {name: self.members[name].run(observation).images for name in needed}
        if not names:
            return Reconstructions(next(iter(outputs.values()), observation.seen.new_empty(0)))
        index = torch.tensor([needed.index(name) for name in names])
        stacked = torch.stack([outputs[name] for name in needed])  # (members, N, C, H, W)
        return Reconstructions(stacked[index, torch.arange(len(names))])


def choose(held_out_ssim: Mapping[str, Tensor], predicted: Tensor, by: str, min_per_class: int) -> dict[int, str]:
    """Per predicted class (and :data:`ALL`), the member with the highest mean held-out SSIM; ties go to the first."""
    names = list(held_out_ssim)
    table = torch.stack([held_out_ssim[name].double() for name in names])  # (members, held-out images)
    choice = {ALL: names[int(table.mean(dim=1).argmax())]}
    if by == "class":
        for label in predicted.unique().tolist():
            rows = predicted == label
            if int(rows.sum()) >= min_per_class:
                choice[int(label)] = names[int(table[:, rows].mean(dim=1).argmax())]
    return choice


@register_attack("best-of")
@dataclass(frozen=True)
class BestOf(Attack):
    """Each image reconstructed by the decoder attack that did best on held-out auxiliary images of its class."""

    threat_model: ClassVar[ThreatModel] = ThreatModel(what_server_sees=True, predicted_labels=True, aux_data=True)
    holdout: float = 0.2  # the share of the auxiliary split kept back to choose with
    by: str = "class"
    min_per_class: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 1:
            raise ConfigError(f"best-of's holdout must be a share in (0, 1), got {self.holdout}")
        if self.by not in CHOICES:
            raise ConfigError(f"best-of chooses by {' or '.join(CHOICES)}, got '{self.by}'")
        if self.min_per_class < 1:
            raise ConfigError(f"best-of's min_per_class must be at least 1, got {self.min_per_class}")

    def split_aux(self, aux: Split) -> tuple[Split, Split]:
        """``(fit, held_out)``: the last ``holdout`` share of the (already shuffled) auxiliary split is held out."""
        held = max(1, round(len(aux) * self.holdout))
        if len(aux) - held < 1:
            raise DataError(f"best-of needs at least 2 auxiliary images, got {len(aux)}")
        return Split(aux.images[:-held], aux.labels[:-held]), Split(aux.images[-held:], aux.labels[-held:])

    def fit(
        self,
        target: nn.Module,
        aux: Any,
        training: AttackTraining = DEFAULT_TRAINING,
        seed: int = 0,
        members: Mapping[str, Any] | None = None,
        **metadata: Any,
    ) -> BestOfAttacker:
        """Fit every decoder attack on the auxiliary split minus the held-out share, then choose on that share.

        ``members`` are already-fitted attacks to choose between instead; they must have
        been fitted on ``split_aux(aux)[0]`` only, or the choice sees its own training data.
        """
        fit_part, held_out = self.split_aux(aux)
        if members is None:
            members = {name: make_attack(name).fit(target, fit_part, training, seed=seed) for name in DECODER_ATTACKS}
        observation = observe(target, held_out.images, seed)
        held_out_ssim = {
            name: per_image_ssim(member.run(observation).images, held_out.images) for name, member in members.items()
        }
        choice = choose(held_out_ssim, observation.predicted, self.by, self.min_per_class)
        return BestOfAttacker(members, held_out_ssim, choice)


__all__ = ["ALL", "DECODER_ATTACKS", "BestOf", "BestOfAttacker", "choose"]
