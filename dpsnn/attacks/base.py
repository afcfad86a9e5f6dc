"""The attack seam: threat models, a registry of attacks by name, and typed results.

An attack is a frozen dataclass (its spec: the method's parameters) registered with
:func:`register_attack`. It declares its :class:`ThreatModel`, what it is given, and
has two stages:

- ``fit(target, aux, training)`` returns a fitted attack, using only what the threat
  model grants (the attacker's auxiliary split, what the server sees of it, ...);
- the fitted attack's ``run(observation)`` returns a typed result from what the
  server recorded of the images under attack (:class:`Observation`, for inversion) or
  from the model's answers on candidate examples (:class:`Queries`, for membership).

A result type names its metrics and its baseline: :class:`Reconstructions` are scored
by the reconstruction metrics beside the ``label-only`` attack; :class:`MembershipScores`
by the ROC metrics beside chance. Scoring lives in
:mod:`dpsnn.evaluation`; reports read results, never attacks. Adding an attack is one
file that defines a spec and registers it. Example::

    from dpsnn.attacks import make_attack, observe

    attack = make_attack("decoder")
    fitted = attack.fit(target, splits.aux, AttackTraining(max_steps=500))
    result = fitted.run(observe(target, splits.test.images))   # Reconstructions
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import Tensor, nn

from dpsnn.defences.base import build_spec, parse_spec_text, spec_registrar, value_key, value_text
from dpsnn.errors import ConfigError
from dpsnn.inference import batched
from dpsnn.metrics import reconstruction_metrics


@dataclass(frozen=True)
class ThreatModel:
    """What an attacker is given. Every attack states it; reports print it beside the results."""

    what_server_sees: bool = False  # the tensors that cross the wire, noise included
    predicted_labels: bool = False  # the class the server computes for each input
    aux_data: bool = False  # labelled images of its own, disjoint from the target's training data
    client_weights: bool = False  # white-box: the client part's parameters
    query_access: bool = False  # the whole model's outputs on inputs of its choice
    shadow_data: bool = False  # data to train shadow models on

    def describe(self) -> str:
        given = [field.name.replace("_", " ") for field in dataclasses.fields(self) if getattr(self, field.name)]
        return ", ".join(given) or "nothing"


@dataclass
class Observation:
    """What a curious server records of some images: the tensors it received, and the labels it predicts."""

    seen: Tensor
    predicted: Tensor


def observe(target: nn.Module, images: Tensor, seed: int = 0) -> Observation:
    """Send ``images`` through the client and its wire (``torch.manual_seed(seed)`` fixes the noise)."""
    torch.manual_seed(seed)
    seen = batched(target.encode, images, module=target)
    return Observation(seen, batched(target.server, seen, module=target).argmax(dim=1))


@dataclass
class Reconstructions:
    """Images an attack recovered, one per image under attack, in [0, 1].

    Scored by the reconstruction metrics (:func:`dpsnn.metrics.reconstruction_metrics`)
    beside the reconstructions of the ``label-only`` attack, its baseline.
    """

    images: Tensor
    baseline: ClassVar[str] = "label-only"
    metrics: ClassVar[tuple[str, ...]] = (
        "mse",
        "psnr",
        "ssim",
        "dcor",
        "validator_acc",
        "l2_ratio",
        "validator_confidence",
    )

    def measure(self, truth: Any, validator: nn.Module | None = None) -> dict[str, Tensor]:
        """Every metric, unreduced (per image; per batch for dCor), against ``truth``'s images and labels."""
        return reconstruction_metrics(self.images, truth.images, truth.labels, validator)


@dataclass
class Queries:
    """What query access gives for some candidate examples: their images, labels and the model's logits."""

    images: Tensor
    labels: Tensor
    logits: Tensor


def query(model: nn.Module, images: Tensor, labels: Tensor, seed: int = 0) -> Queries:
    """Query ``model`` (the whole network, wire included) on ``images``; ``torch.manual_seed(seed)`` fixes any noise."""
    torch.manual_seed(seed)
    return Queries(images, labels, batched(model, images, module=model))


@dataclass
class MembershipScores:
    """One score per candidate example: higher means "more likely a member of the training set".

    Scored by the ROC metrics (:func:`dpsnn.metrics.membership_metrics`) against the true
    membership, beside ``chance`` (a score that carries no information: AUC 0.5, TPR = FPR).
    """

    scores: Tensor
    baseline: ClassVar[str] = "chance"
    metrics: ClassVar[tuple[str, ...]] = ("auc", "tpr_at_fpr_0_001", "tpr_at_fpr_0_01", "tpr_at_fpr_0_1", "advantage")


@dataclass(frozen=True)
class AttackTraining:
    """How long and how fast a trainable attack is fitted (attacks without training ignore it)."""

    learning_rate: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 20
    max_steps: int | None = None  # when set, the budget is this many optimiser steps, whatever the data size
    progress: bool = True
    log_dir: str | None = None
    #: Where the shadow attacks on one target may share what they trained (their shadows' outputs):
    #: a dict the caller keeps for that target and its auxiliary data only, or None to share nothing.
    shared: dict[Any, Any] | None = field(default=None, compare=False, repr=False)


DEFAULT_TRAINING = AttackTraining()


class FittedAttack(Protocol):
    """What ``Attack.fit`` returns."""

    def run(self, observation: Observation) -> Any: ...


@dataclass(frozen=True)
class Attack:
    """Base of every attack spec. Subclasses are frozen dataclasses registered by name."""

    name: ClassVar[str] = ""
    threat_model: ClassVar[ThreatModel] = ThreatModel()
    result: ClassVar[type] = Reconstructions
    #: At most this many test images when an experiment scores the attack (None: all of them);
    #: for attacks whose cost is per image, such as an optimisation per reconstruction.
    test_images: ClassVar[int | None] = None

    def fit(self, target: nn.Module, aux: Any, training: AttackTraining = DEFAULT_TRAINING, seed: int = 0) -> Any:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def key(self) -> str:
        """File-name-safe: ``decoder``, ``decoder-losssim``."""
        return self.name + "".join(f"-{k.replace('_', '')}{value_key(v)}" for k, v in self.params().items())

    def label(self) -> str:
        params = ", ".join(f"{k} {value_text(v)}" for k, v in self.params().items())
        return f"{self.name} ({params})" if params else self.name

    def spec(self) -> str:
        """Canonical text: ``decoder`` or ``decoder(loss=ssim)``."""
        params = ",".join(f"{k}={value_text(v)}" for k, v in self.params().items())
        return f"{self.name}({params})" if params else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params()}


ATTACKS: dict[str, type[Attack]] = {}
A = TypeVar("A", bound=type[Attack])


def registered_attacks() -> dict[str, type[Attack]]:
    """Every attack, by name: each module of :mod:`dpsnn.attacks` is imported (and so registers its own)."""
    import dpsnn.attacks

    for module in pkgutil.iter_modules(dpsnn.attacks.__path__):
        if not module.name.startswith("_"):  # a private module registers nothing
            importlib.import_module(f"dpsnn.attacks.{module.name}")
    return dict(ATTACKS)


def register_attack(name: str) -> Callable[[A], A]:
    """Class decorator: register an attack spec (a frozen dataclass) under ``name``."""
    return spec_registrar(ATTACKS, "attack")(name)


def make_attack(name: str, params: Mapping[str, Any] | None = None) -> Attack:
    """The attack registered as ``name`` with ``params``; :class:`ConfigError` when unknown."""
    attacks = ATTACKS if name in ATTACKS else registered_attacks()
    if name not in attacks:
        raise ConfigError(f"unknown attack '{name}'; choose from {', '.join(sorted(attacks))}")
    return build_spec(attacks[name], "attack", params)


def attack_from(value: Attack | str | Mapping[str, Any]) -> Attack:
    """An attack spec from a spec, its text (``decoder``, ``decoder:loss=ssim``, ``decoder(loss=ssim)``) or dict."""
    if isinstance(value, Attack):
        return value
    if isinstance(value, Mapping):
        return make_attack(value["name"], value.get("params"))
    return make_attack(*parse_spec_text(str(value), "attack"))
