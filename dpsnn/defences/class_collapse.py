"""Class collapse: a loss that pulls the client's output onto its class, so the wire carries little but the label.

If what crosses the wire held only the class, the best any decoder could do is the class's
mean image: exactly the label-only baseline. ``class-collapse`` adds ``weight`` times one
of two batch losses on the client's output ``h`` (flattened) to the training loss:

* ``centre`` (the default): the within-class share of the batch's spread,
  ``Σᵢ ‖hᵢ − μ_{yᵢ}‖² / Σᵢ ‖hᵢ − μ‖²``, with the batch's class means ``μ_c`` as the centres
  (centre loss, Wen et al. 2016, with the centres read off the batch rather than learned)
  and ``μ`` the batch mean. It is 0 when every output sits on its class mean and 1 when the
  classes do not separate at all; being a ratio, the client cannot lower it by shrinking ``h``.
* ``supcon``: the supervised contrastive loss (Khosla et al. 2020) on the normalised outputs
  at ``temperature``: each output is pulled towards the others of its class and pushed from
  the rest.

``smoothing`` adds label smoothing (Szegedy et al. 2016) to the classifier's loss, which
the "Golden Partition" study pairs with a tight class spread: the cross-entropy becomes
``(1 − ε)·CE(y) + ε·mean_k CE(k)``, added as the term ``ε·(mean_k CE(k) − CE(y))``. At weight
0 the defence is off, smoothing included. Both losses couple the samples of a batch, so
per-sample DP-SGD refuses to train beside them. Example::

    import torch
    from dpsnn.defences import make_defence

    collapse = make_defence("class-collapse", {"weight": 1.0, "smoothing": 0.1})
    h, y = torch.randn(8, 500), torch.arange(8) % 4
    collapse.loss_terms(torch.rand(8, 1, 28, 28), h, torch.randn(8, 10), y)  # {'class_collapse': …, 'smoothing': …}

What is hand-written, and why: both losses are a few tensor operations on one batch; the
libraries that ship them (pytorch-metric-learning) would bring a dependency for ten lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dpsnn.defences.base import Defence, check_non_negative, format_number, register_defence
from dpsnn.errors import ConfigError

__all__ = ["COLLAPSE_LOSSES", "ClassCollapse", "centre_share", "supervised_contrastive"]

COLLAPSE_LOSSES = ("centre", "supcon")
_TINY = 1e-12


def centre_share(h: Tensor, y: Tensor) -> Tensor:
    """The within-class share of the spread of ``h`` (rows: samples) around the batch mean, in [0, 1]."""
    h = h.flatten(1)
    classes, index = torch.unique(y, return_inverse=True)
    sums = torch.zeros(len(classes), h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, index, h)
    counts = torch.bincount(index, minlength=len(classes)).to(h.dtype)
    centres = sums / counts[:, None]
    within = (h - centres[index]).pow(2).sum()
    total = (h - h.mean(dim=0)).pow(2).sum()
    return within / (total + _TINY)


def supervised_contrastive(h: Tensor, y: Tensor, temperature: float) -> Tensor:
    """Khosla et al.'s supervised contrastive loss of the normalised rows of ``h``; 0 if no two share a class."""
    z = F.normalize(h.flatten(1), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, -math.inf)  # an anchor is never its own positive or negative
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    count = positives.sum(dim=1)
    anchors = count > 0
    if not bool(anchors.any()):
        return h.sum() * 0.0  # keeps the graph, adds nothing
    per_anchor = log_prob.masked_fill(~positives, 0.0).sum(dim=1)[anchors] / count[anchors]
    return -per_anchor.mean()


def smoothing_term(logits: Tensor, y: Tensor, smoothing: float) -> Tensor:
    """What label smoothing ``ε`` adds to the cross-entropy: ``ε·(mean_k CE(k) − CE(y))``."""
    log_p = F.log_softmax(logits, dim=1)
    uniform = -log_p.mean(dim=1)
    target = -log_p.gather(1, y[:, None]).squeeze(1)
    return smoothing * (uniform - target).mean()


@register_defence("class-collapse")
@dataclass(frozen=True)
class ClassCollapse(Defence):
    """``weight`` times a class-collapse loss on the client's output (``centre`` or ``supcon``); label smoothing."""

    weight: float = 0.0
    loss: str = "centre"
    temperature: float = 0.1  # supcon's
    smoothing: float = 0.0  # label smoothing of the classifier's loss
    strength = "weight"
    couples_samples = True  # both losses are statistics of the whole batch

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", check_non_negative(self.weight, "class-collapse weight"))
        if self.loss not in COLLAPSE_LOSSES:
            raise ConfigError(f"class-collapse loss must be one of {', '.join(COLLAPSE_LOSSES)}, got '{self.loss}'")
        temperature = check_non_negative(self.temperature, "class-collapse temperature")
        if temperature == 0:
            raise ConfigError("class-collapse temperature must be positive, got 0")
        object.__setattr__(self, "temperature", temperature)
        smoothing = check_non_negative(self.smoothing, "class-collapse smoothing")
        if smoothing >= 1:
            raise ConfigError(f"class-collapse smoothing must be in [0, 1), got {self.smoothing!r}")
        object.__setattr__(self, "smoothing", smoothing)

    def needs_logits(self) -> bool:
        return self.weight > 0 and self.smoothing > 0  # label smoothing acts on the server's logits

    def loss_terms(self, x: Tensor, h: Tensor, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.weight == 0.0:
            return {}
        if self.loss == "centre":
            collapse = centre_share(h, y)
        else:
            collapse = supervised_contrastive(h, y, self.temperature)
        terms = {"class_collapse": self.weight * collapse}
        if self.smoothing:
            terms["smoothing"] = smoothing_term(logits, y, self.smoothing)
        return terms

    def key(self) -> str:
        key = f"{format_number(self.weight)}collapse"
        if self.loss != "centre":
            key += f"-{self.loss}-t{format_number(self.temperature)}"
        if self.smoothing:
            key += f"-ls{format_number(self.smoothing)}"
        return key

    def label(self) -> str:
        text = f"class-collapse {self.weight:g}"
        if self.loss != "centre":
            text += f" ({self.loss}, τ {self.temperature:g})"
        if self.smoothing:
            text += f" + smoothing {self.smoothing:g}"
        return text
