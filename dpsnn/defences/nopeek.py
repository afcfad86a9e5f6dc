"""The NoPeek defence: distance correlation between the input and the intermediate, added to the loss.

Example::

    from dpsnn.defences import NoPeek, NoPeekLoss

    loss_fn = NoPeekLoss(weight=0.5)
    loss = loss_fn(inputs, intermediates, logits, targets)   # cross-entropy + 0.5 dCor(x, h)
    NoPeek(weight=0.5).loss_terms(inputs, intermediates, logits, targets)   # {'nopeek': 0.5 dCor(x, h)}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from dpsnn.defences.base import Defence, check_non_negative, format_number, register_defence
from dpsnn.stats import distance_correlation, pairwise_distances

__all__ = ["NoPeek", "NoPeekLoss", "distance_correlation", "pairwise_distances"]


class NoPeekLoss(nn.Module):
    """Cross-entropy on the logits plus ``weight`` times dCor(inputs, intermediates).

    The logits are raw scores: no softmax is applied before the cross-entropy. With
    ``weight == 0`` the distance correlation is not computed at all.
    """

    def __init__(self, weight: float = 0.0) -> None:
        super().__init__()
        self.weight = check_non_negative(weight, "NoPeek weight")

    def terms(self, inputs: Tensor, intermediates: Tensor, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """The loss and its parts: ``loss``, ``cross_entropy`` and ``dcor`` (None at weight 0)."""
        cross_entropy = F.cross_entropy(logits, targets)
        if self.weight == 0.0:
            return {"loss": cross_entropy, "cross_entropy": cross_entropy, "dcor": None}
        dcor = distance_correlation(inputs, intermediates)
        return {"loss": cross_entropy + self.weight * dcor, "cross_entropy": cross_entropy, "dcor": dcor}

    def forward(self, inputs: Tensor, intermediates: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        return self.terms(inputs, intermediates, logits, targets)["loss"]

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


@register_defence("nopeek")
@dataclass(frozen=True)
class NoPeek(Defence):
    """``weight`` times dCor(x, h) added to the client's loss (h: the client's output, before the wire)."""

    weight: float = 0.0
    strength = "weight"
    couples_samples = True  # dCor is a statistic of the whole batch

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", check_non_negative(self.weight, "NoPeek weight"))

    def loss_terms(self, x: Tensor, h: Tensor, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.weight == 0.0:
            return {}
        return {"nopeek": self.weight * distance_correlation(x, h)}

    def key(self) -> str:
        return f"{format_number(self.weight)}nopeek"

    def label(self) -> str:
        return f"NoPeek {self.weight:g}"
