"""Membership inference from the model's answers: threshold attacks and trained attack models (and ``chance``).

Was this example in the target's training set? The attacker queries the whole model
(client, wire, server) on candidate examples and scores each: higher means "more likely
a member". Three attacks are registered:

- ``membership-threshold`` (``signal`` = ``loss``, ``confidence``, ``entropy`` or
  ``modified-entropy``): the score is one number computed from the logits and the label:
  minus the cross-entropy loss; the softmax probability of the true label; minus the
  entropy of the prediction (a confident prediction means a member); minus Song & Mittal's
  modified entropy (2021), which also uses the label. With ``shadow_models`` ≥ 2 the
  global threshold (the one that maximises TPR − FPR) is chosen on shadow models trained
  on the attacker's auxiliary data, so a positive score means "member" and
  ``fitted.validation`` holds precision, recall and accuracy of that decision on the
  shadows; with ``shadow_models=0`` (the default) the signal is returned uncalibrated.
  The ROC metrics do not depend on a threshold, so both give the same AUC and TPRs.
- ``membership-classifier`` (``model`` = ``logistic``, ``knn``, ``mlp`` or ``forest``):
  MindArmour's attack models (after Shokri et al. 2017). Each shadow model's outputs on
  the auxiliary examples become features ``[loss, logits]`` labelled IN or OUT by its
  membership mask; a scikit-learn classifier is fitted on three quarters of them with its
  hyper-parameters chosen by ``GridSearchCV`` (MindArmour's small grids), and its
  precision, recall and accuracy on the remaining quarter (as MindArmour's ``eval``
  reports them) are ``fitted.validation``. The score is ``predict_proba[:, 1]``.
- ``chance``: uniformly random scores, the baseline that carries no information.

The shadow models are the target's recipe (:func:`dpsnn.shadows.model_maker`: the same
architecture and defences, fresh weights; Adam at the target's learning rate unless
``learning_rate`` is given), trained together by :func:`dpsnn.shadows.train_shadows`.
Only the signals and the feature layout are written here; ROC curves, thresholds and
attack models are scikit-learn's. Example::

    from dpsnn.attacks import make_attack, query
    from dpsnn.attacks.membership import membership_candidates

    candidates, members = membership_candidates(splits.train, splits.test, n=1000, seed=0)
    fitted = make_attack("membership-threshold", {"signal": "loss"}).fit(target, splits.aux)
    scores = fitted.run(query(target, candidates.images, candidates.labels)).scores
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpsnn.attacks.base import (
    DEFAULT_TRAINING,
    Attack,
    AttackTraining,
    MembershipScores,
    Queries,
    ThreatModel,
    register_attack,
)
from dpsnn.data import Split
from dpsnn.errors import ConfigError, DataError

SIGNALS = ("loss", "confidence", "entropy", "modified-entropy")
ATTACK_MODELS = ("logistic", "knn", "mlp", "forest")
MIN_SHADOWS = 2
#: Probabilities are clipped to [EPSILON, 1 - EPSILON] before logarithms, as MindArmour's loss does.
EPSILON = 1e-12
SHADOW_ATTACK_THREAT = ThreatModel(query_access=True, aux_data=True, shadow_data=True)


# -- signals and features ---------------------------------------------------------------------------


def membership_signal(logits: Tensor, labels: Tensor, signal: str = "loss") -> Tensor:
    """One score per example from logits ``(..., M, C)`` and labels ``(M,)``; higher means "member". Float64.

    ``loss``: minus the cross-entropy; ``confidence``: the softmax probability of the true
    label; ``entropy``: minus the prediction's entropy; ``modified-entropy``: minus
    ``-(1 - p_y) log p_y - Σ_{j≠y} p_j log(1 - p_j)`` (Song & Mittal 2021).
    """
    if signal not in SIGNALS:
        raise ConfigError(f"unknown membership signal {signal!r}; choose from {', '.join(SIGNALS)}")
    log_p = F.log_softmax(logits.double(), dim=-1)
    labels = labels.to(logits.device).long().expand(log_p.shape[:-1])
    log_p_true = log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if signal == "loss":
        return log_p_true
    p = log_p.exp()
    if signal == "confidence":
        return log_p_true.exp()
    if signal == "entropy":
        return (p * log_p).sum(dim=-1)
    p = p.clamp(EPSILON, 1 - EPSILON)
    true = F.one_hot(labels, p.shape[-1]).bool()
    terms = torch.where(true, -(1 - p) * p.log(), -p * (1 - p).log())
    return -terms.sum(dim=-1)


def loss_logit_features(logits: Tensor, labels: Tensor) -> np.ndarray:
    """MindArmour's attack features: ``[loss, logits...]`` per example, ``(M, 1 + C)`` float64."""
    p = F.softmax(logits.double(), dim=-1).clamp(EPSILON, 1 - EPSILON)
    loss = -p.gather(-1, labels.long().unsqueeze(-1)).log()
    return torch.cat([loss, logits.double()], dim=-1).numpy()


# -- the candidates ---------------------------------------------------------------------------------


def membership_candidates(members: Split, non_members: Split, n: int, seed: int = 0) -> tuple[Split, Tensor]:
    """``n`` candidates, half drawn from ``members`` and half from ``non_members``, shuffled; and which are members.

    With an odd ``n`` the extra one is a non-member. Returns the candidates and a bool
    tensor, True for the members.
    """
    n_in, n_out = n // 2, n - n // 2
    if n_in < 1:
        raise DataError(f"membership inference needs at least 2 candidates, got n={n}")
    for split, count, what in ((members, n_in, "members"), (non_members, n_out, "non-members")):
        if len(split) < count:
            raise DataError(f"{count} {what} are needed for {n} candidates, but only {len(split)} are available")
    generator = torch.Generator().manual_seed(seed)
    chosen_in = torch.randperm(len(members), generator=generator)[:n_in]
    chosen_out = torch.randperm(len(non_members), generator=generator)[:n_out]
    images = torch.cat([members.images[chosen_in], non_members.images[chosen_out].to(members.images.dtype)])
    labels = torch.cat([members.labels[chosen_in], non_members.labels[chosen_out].to(members.labels.dtype)])
    is_member = torch.cat([torch.ones(n_in, dtype=torch.bool), torch.zeros(n_out, dtype=torch.bool)])
    order = torch.randperm(n, generator=generator)
    return Split(images[order], labels[order]), is_member[order]


# -- shadow models on the attacker's data -----------------------------------------------------------


def _as_split(aux: Any, what: str) -> Split:
    if not isinstance(aux, Split):
        raise DataError(f"{what} needs labelled auxiliary data (a Split of images and labels) for its shadow models")
    if len(aux) < 2:
        raise DataError(f"the attacker's auxiliary split has {len(aux)} examples: {what}'s shadow models need more")
    return aux


def _check_positive_int(attack: str, name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"attack '{attack}': {name} must be an integer of at least {minimum}, got {value!r}")


@dataclass(frozen=True)
class ShadowAttack(Attack):
    """The shadow-model parameters membership attacks share (``learning_rate`` None: the target's own)."""

    shadow_models: int = 8
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float | None = None
    weight_decay: float = 0.0

    def _check_shadow_parameters(self, minimum_shadows: int) -> None:
        name = self.name or type(self).__name__
        if self.shadow_models != 0 or minimum_shadows > 0:
            _check_positive_int(name, "shadow_models", self.shadow_models, max(minimum_shadows, MIN_SHADOWS))
        _check_positive_int(name, "epochs", self.epochs)
        _check_positive_int(name, "batch_size", self.batch_size)
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(
                f"attack '{name}': learning_rate must be a positive number or auto, got {self.learning_rate!r}"
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"attack '{name}': weight_decay must be a non-negative number, got {self.weight_decay!r}")

    def recipe(self, target: nn.Module, members: int | None = None, max_steps: int | None = None) -> Any:
        """The shadows' training: this spec's epochs and batch size; Adam at the target's rate unless given.

        With ``max_steps`` (an experiment's attack budget), the epochs are cut so that a
        shadow trained on ``members`` examples takes about that many steps at most.
        """
        from dpsnn.shadows import ShadowRecipe

        hparams = getattr(target, "hparams", {}) or {}
        learning_rate = self.learning_rate or float(hparams.get("learning_rate", ShadowRecipe().learning_rate))
        epochs = self.epochs
        if max_steps is not None and members:
            epochs = max(1, min(epochs, math.ceil(max_steps / math.ceil(members / self.batch_size))))
        return ShadowRecipe(epochs, self.batch_size, learning_rate, self.weight_decay)

    def shadow_outputs(
        self, target: nn.Module, aux: Split, seed: int, training: AttackTraining = DEFAULT_TRAINING
    ) -> tuple[Tensor, Tensor]:
        """Shadows of ``target`` trained on halves of ``aux``: their logits on it ``(S, N, C)`` and masks ``(S, N)``.

        With ``training.shared``, shadows trained for another attack on the same target and
        ``aux`` with the same count, recipe and seed are reused rather than trained again.
        """
        from dpsnn.shadows import member_masks, model_maker, train_shadows

        recipe = self.recipe(target, len(aux) // 2, training.max_steps)
        key = ("shadow_outputs", self.shadow_models, recipe, seed, len(aux))
        if training.shared is not None and key in training.shared:
            return training.shared[key]  # the same shadows, already trained for another attack on this target
        masks = member_masks(len(aux), self.shadow_models, seed=seed)
        shadows = train_shadows(model_maker(target), aux.images, aux.labels, masks, recipe, seed, training.progress)
        torch.manual_seed(seed)
        outputs = shadows.logits(aux.images), masks
        if training.shared is not None:
            training.shared[key] = outputs
        return outputs


def decision_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall and accuracy of member/non-member decisions, as MindArmour reports them (scikit-learn's)."""
    from sklearn.metrics import accuracy_score, precision_score, recall_score

    return {
        "precision": float(precision_score(truth, predicted, zero_division=0.0)),
        "recall": float(recall_score(truth, predicted, zero_division=0.0)),
        "accuracy": float(accuracy_score(truth, predicted)),
    }


# -- the threshold attack ---------------------------------------------------------------------------


class FittedThreshold:
    """A signal and (when shadows chose one) its global threshold; ``run`` gives ``signal - threshold``."""

    def __init__(self, signal: str, threshold: float | None, validation: dict[str, float]) -> None:
        self.signal, self.threshold, self.validation = signal, threshold, validation

    def run(self, queries: Queries) -> MembershipScores:
        """One score per candidate; with a threshold, a score of at least 0 is the decision "member"."""
        if len(queries.labels) == 0:
            raise DataError("no candidate examples to score")
        scores = membership_signal(queries.logits, queries.labels, self.signal)
        return MembershipScores((scores - (self.threshold or 0.0)).float())


def best_threshold(scores: Tensor, members: Tensor) -> float:
    """The threshold maximising TPR − FPR of the decision ``score >= threshold`` (on scikit-learn's ROC points)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(members.flatten().numpy(), scores.flatten().numpy())
    finite = np.isfinite(thresholds)
    best = np.argmax(np.where(finite, tpr - fpr, -np.inf))
    return float(thresholds[best])


@register_attack("membership-threshold")
@dataclass(frozen=True)
class ThresholdAttack(ShadowAttack):
    """Score each candidate by one signal of its logits and label, thresholded globally on shadow models."""

    threat_model = SHADOW_ATTACK_THREAT
    result = MembershipScores

    signal: str = "loss"
    shadow_models: int = 0  # 0: no shadows, the signal uncalibrated

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ConfigError(
                f"attack 'membership-threshold': signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}"
            )
        self._check_shadow_parameters(minimum_shadows=0)

    def fit(
        self, target: nn.Module, aux: Any, training: AttackTraining = DEFAULT_TRAINING, seed: int = 0
    ) -> FittedThreshold:
        """With shadows, the threshold that best separates their members from their non-members on ``aux``."""
        if self.shadow_models == 0:
            return FittedThreshold(self.signal, None, {})
        aux = _as_split(aux, "membership-threshold")
        logits, masks = self.shadow_outputs(target, aux, seed, training)
        signals = membership_signal(logits, aux.labels, self.signal)
        threshold = best_threshold(signals, masks)
        validation = decision_metrics((signals >= threshold).flatten().numpy(), masks.flatten().numpy())
        return FittedThreshold(self.signal, threshold, validation)


# -- trained attack models (MindArmour's) -----------------------------------------------------------


def attack_model_search(model: str, seed: int) -> Any:
    """The scikit-learn estimator and MindArmour's small hyper-parameter grid for ``model``, as a ``GridSearchCV``.

    Logistic regression, k-NN and the MLP see standardised features (a ``Pipeline``); the
    forest does not need them. Three-fold cross-validation, scored by ROC AUC.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if model == "forest":
        estimator: Any = RandomForestClassifier(n_estimators=100, random_state=seed)
        grid: dict[str, list[Any]] = {"max_depth": [5, 10, None], "min_samples_leaf": [1, 4]}
        return GridSearchCV(estimator, grid, cv=3, scoring="roc_auc", n_jobs=1)
    if model == "logistic":
        estimator, grid = LogisticRegression(max_iter=1000), {"C": list(np.logspace(-4, 2, 10))}
    elif model == "knn":
        estimator, grid = KNeighborsClassifier(), {"n_neighbors": [3, 5, 7]}
    else:
        estimator = MLPClassifier(max_iter=300, random_state=seed)
        grid = {"hidden_layer_sizes": [(64,), (32, 32)], "alpha": [1e-4, 1e-3, 1e-2]}
    pipeline = make_pipeline(StandardScaler(), estimator)
    step = pipeline.steps[-1][0]
    return GridSearchCV(pipeline, {f"{step}__{k}": v for k, v in grid.items()}, cv=3, scoring="roc_auc", n_jobs=1)


def balanced_rows(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` rows, half IN and half OUT where there are enough of each, shuffled."""
    rng = np.random.default_rng(seed)
    inside, outside = np.flatnonzero(labels), np.flatnonzero(~labels)
    half = min(limit // 2, len(inside), len(outside))
    chosen = np.concatenate([rng.choice(inside, half, replace=False), rng.choice(outside, half, replace=False)])
    return rng.permutation(chosen)


class FittedClassifier:
    """A fitted scikit-learn attack model on ``[loss, logits]``; ``validation``: its precision, recall, accuracy."""

    def __init__(self, search: Any, validation: dict[str, float]) -> None:
        self.search, self.validation = search, validation

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.search.best_params_)

    def run(self, queries: Queries) -> MembershipScores:
        """The attack model's probability that each candidate is a member."""
        if len(queries.labels) == 0:
            raise DataError("no candidate examples to score")
        features = loss_logit_features(queries.logits, queries.labels)
        return MembershipScores(torch.from_numpy(self.search.predict_proba(features)[:, 1]).float())


@register_attack("membership-classifier")
@dataclass(frozen=True)
class ClassifierAttack(ShadowAttack):
    """MindArmour's trained attack model on ``[loss, logits]`` from shadow models (see the module docstring)."""

    threat_model = SHADOW_ATTACK_THREAT
    result = MembershipScores

    model: str = "logistic"
    attack_examples: int = 4000  # at most this many (shadow, example) rows, balanced IN/OUT, train the attack model

    def __post_init__(self) -> None:
        if self.model not in ATTACK_MODELS:
            raise ConfigError(
                f"attack 'membership-classifier': model must be one of {', '.join(ATTACK_MODELS)}, got {self.model!r}"
            )
        self._check_shadow_parameters(minimum_shadows=MIN_SHADOWS)
        _check_positive_int("membership-classifier", "attack_examples", self.attack_examples, 24)

    def fit(
        self, target: nn.Module, aux: Any, training: AttackTraining = DEFAULT_TRAINING, seed: int = 0
    ) -> FittedClassifier:
        """Shadows on ``aux``, then the attack model on their ``[loss, logits]``, IN or OUT; validated on a quarter."""
        aux = _as_split(aux, "membership-classifier")
        logits, masks = self.shadow_outputs(target, aux, seed, training)
        labels = aux.labels.expand(masks.shape)
        features = loss_logit_features(logits.flatten(0, 1), labels.flatten())
        truth = masks.flatten().numpy()
        rows = balanced_rows(truth, self.attack_examples, seed)
        cut = len(rows) * 3 // 4
        train, held_out = rows[:cut], rows[cut:]
        search = attack_model_search(self.model, seed)
        search.fit(features[train], truth[train])
        validation = decision_metrics(search.predict(features[held_out]), truth[held_out])
        return FittedClassifier(search, validation)


# -- chance -----------------------------------------------------------------------------------------


class FittedChance:
    """Uniformly random scores from a seeded generator: a membership guess that uses nothing."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def run(self, queries: Queries) -> MembershipScores:
        generator = torch.Generator().manual_seed(self.seed)
        return MembershipScores(torch.rand(len(queries.labels), generator=generator))


@register_attack("chance")
@dataclass(frozen=True)
class Chance(Attack):
    """The membership baseline: random scores (expected AUC 0.5, TPR = FPR, advantage 0)."""

    threat_model = ThreatModel()
    result = MembershipScores

    def fit(
        self, target: nn.Module, aux: Any, training: AttackTraining = DEFAULT_TRAINING, seed: int = 0
    ) -> FittedChance:
        return FittedChance(seed)


__all__ = [
    "ATTACK_MODELS",
    "SIGNALS",
    "Chance",
    "ClassifierAttack",
    "FittedChance",
    "FittedClassifier",
    "FittedThreshold",
    "ShadowAttack",
    "ThresholdAttack",
    "attack_model_search",
    "best_threshold",
    "decision_metrics",
    "loss_logit_features",
    "membership_candidates",
    "membership_signal",
]
