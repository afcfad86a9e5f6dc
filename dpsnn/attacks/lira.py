"""LiRA, the likelihood-ratio membership attack of Carlini et al. (2022), online and offline (the ``lira`` attack).

"Membership Inference Attacks From First Principles" (S&P 2022). The attacker trains
shadow models with the target's recipe on halves of data it owns, and for each candidate
example compares the target's confidence in the true label with the confidences of the
shadow models that did (IN) and did not (OUT) train on it. The statistic is the
logit-scaled confidence φ = log(p_y / (1 − p_y)), computed from the logits as
``z_y − logsumexp(z_others)`` (no softmax, no subtraction of probabilities near 1), which
is close to Gaussian across shadow models:

- **online**: fit N(μ_in, σ_in²) and N(μ_out, σ_out²) per example; the score is the
  log-likelihood ratio ``log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out)``;
- **offline**: only OUT shadows (never trained on a candidate); the score is the one-sided
  test ``log Pr[Z < φ]``, Z ~ N(μ_out, σ_out²) (the paper's 1 − Pr[Z > φ], in log space);
- **variance** ``per-example``: σ from each example's own shadow statistics; ``global``: one
  σ for every example, pooled from the residuals about each example's own mean (the
  paper's remedy for few shadow models).

Where the shadows are trained (the attacker knows the candidates, not their membership):
``offline`` trains them at :meth:`Lira.fit` on random halves of the auxiliary data alone, so
every candidate is OUT of every shadow; ``online`` trains them at the first
:meth:`FittedLira.run` on random halves of aux ∪ the queried candidates, each candidate IN
exactly half of them (:func:`dpsnn.shadows.member_masks`). The shadow models are the
target's recipe (:func:`dpsnn.shadows.model_maker`: a :class:`~dpsnn.models.SplitNN` of a
registered architecture rebuilt from its hyperparameters, the same architecture and
defences with fresh weights; any other model a deep copy with fresh weights), trained
together by :func:`dpsnn.shadows.train_shadows` with the spec's epochs and batch size and
Adam at the target's learning rate unless ``learning_rate`` is given (the parameters of
:class:`~dpsnn.attacks.membership.ShadowAttack`); defences that replace the optimiser
(DP-SGD, suppress) are not imitated (see :mod:`dpsnn.shadows`).

The Gaussian fits and likelihood ratios are written here, a few lines of torch, because no
well-kept library implements LiRA's statistic on tensors (the authors' code is a research
script on NumPy files). Means are the Gaussian's maximum-likelihood means (the authors' code
uses medians); Normal densities and ``log_ndtr`` come from torch. Example::

    from dpsnn.attacks import make_attack, query

    attack = make_attack("lira", {"mode": "online", "shadow_models": 16, "epochs": 10})
    fitted = attack.fit(target, splits.aux, seed=0)
    scores = fitted.run(query(target, candidates.images, candidates.labels)).scores   # higher: member
    fitted.statistics.shadow          # (S, M): φ of each shadow model on each candidate
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dpsnn.attacks.base import DEFAULT_TRAINING, AttackTraining, MembershipScores, Queries, register_attack
from dpsnn.attacks.membership import SHADOW_ATTACK_THREAT, ShadowAttack
from dpsnn.data import Split
from dpsnn.errors import ConfigError, DataError

MODES = ("online", "offline")
VARIANCES = ("per-example", "global")
MIN_SHADOWS = 2  # a Gaussian needs a mean and a spread: at least one IN and one OUT statistic per example
#: The smallest standard deviation a Gaussian fit may have, so that identical shadow statistics give finite scores.
MIN_STD = 1e-4


# -- the statistic ----------------------------------------------------------------------------------


def logit_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """φ = log(p_y / (1 − p_y)) of the true label, from logits ``(..., M, C)`` and labels ``(M,)``; shape ``(..., M)``.

    Computed stably as ``z_y − logsumexp(z_j, j ≠ y)``, in float64: exact where p_y
    rounds to 1 in float32.
    """
    logits = logits.double()
    labels = labels.to(logits.device).long()
    true_class = torch.nn.functional.one_hot(labels, logits.shape[-1]).bool().expand_as(logits)
    true_logit = logits.gather(-1, labels.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    others = logits.masked_fill(true_class, -math.inf).logsumexp(dim=-1)
    return true_logit - others


# -- Gaussian fits per example ----------------------------------------------------------------------


@dataclass
class GaussianFit:
    """One Gaussian per example: means and standard deviations ``(M,)``, and how many shadows each came from."""

    mean: Tensor
    std: Tensor
    count: Tensor


def fit_gaussians(statistics: Tensor, mask: Tensor, global_variance: bool = False) -> GaussianFit:
    """Per example (column), the mean and standard deviation of ``statistics[mask]``; ``(S, M)`` in, ``(M,)`` out.

    Per-example variances are unbiased (n − 1); an example with fewer than two
    statistics, and every example under ``global_variance``, takes the pooled variance:
    the squared residuals about each example's own mean, summed over all examples and
    divided by their degrees of freedom (with no degree of freedom at all, the variance of
    every statistic about their overall mean). Standard deviations are at least
    :data:`MIN_STD`.
    """
    if statistics.shape != mask.shape:
        raise DataError(f"statistics {tuple(statistics.shape)} and mask {tuple(mask.shape)} differ in shape")
    mask = mask.bool()
    count = mask.sum(dim=0)
    if bool((count == 0).any()):
        raise DataError("an example has no shadow statistic to fit a Gaussian to")
    values = torch.where(mask, statistics, torch.zeros_like(statistics))
    mean = values.sum(dim=0) / count
    squares = torch.where(mask, (statistics - mean) ** 2, torch.zeros_like(statistics)).sum(dim=0)
    degrees = count - 1
    if int(degrees.sum()) > 0:
        pooled = squares.sum() / degrees.sum()
    else:  # one statistic per example (two shadow models): the spread of all of them about their overall mean
        pooled = statistics[mask].var(unbiased=False)
    own = squares / degrees.clamp_min(1)
    variance = pooled.expand_as(own) if global_variance else torch.where(degrees > 0, own, pooled)
    return GaussianFit(mean, variance.sqrt().clamp_min(MIN_STD), count)


def log_density(value: Tensor, fit: GaussianFit) -> Tensor:
    """``log N(value; mean, std)`` per example."""
    return torch.distributions.Normal(fit.mean, fit.std).log_prob(value)


def online_scores(target: Tensor, fit_in: GaussianFit, fit_out: GaussianFit) -> Tensor:
    """The log-likelihood ratio ``log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out)`` of each example."""
    return log_density(target, fit_in) - log_density(target, fit_out)


def offline_scores(target: Tensor, fit_out: GaussianFit) -> Tensor:
    """The one-sided test ``log Pr[Z < φ]``, Z ~ N(μ_out, σ_out²): high when φ is above what OUT models give."""
    return torch.special.log_ndtr((target - fit_out.mean) / fit_out.std)


@dataclass
class LiraStatistics:
    """What LiRA computed for each candidate, for inspection. ``(M,)`` per candidate, ``(S, M)`` per shadow.

    ``fit_in`` is None offline (no shadow trained on a candidate).
    """

    target: Tensor  # φ of the target model
    shadow: Tensor  # φ of each shadow model
    in_mask: Tensor  # whether the candidate was in each shadow's training data
    fit_in: GaussianFit | None
    fit_out: GaussianFit
    scores: Tensor


def lira_statistics(
    target: Tensor, shadow: Tensor, in_mask: Tensor, mode: str, global_variance: bool
) -> LiraStatistics:
    """LiRA's fits and scores from the target's and the shadows' φ on the candidates and the shadows' IN masks."""
    if mode not in MODES:
        raise ConfigError(f"LiRA's mode must be one of {', '.join(MODES)}, got {mode!r}")
    in_mask = in_mask.bool()
    fit_out = fit_gaussians(shadow, ~in_mask, global_variance)
    if mode == "online":
        fit_in = fit_gaussians(shadow, in_mask, global_variance)
        scores = online_scores(target, fit_in, fit_out)
    else:
        fit_in = None
        scores = offline_scores(target, fit_out)
    return LiraStatistics(target, shadow, in_mask, fit_in, fit_out, scores)


# -- the attack -------------------------------------------------------------------------------------


def _as_split(aux: Any) -> Split:
    if not isinstance(aux, Split):
        raise DataError("LiRA needs labelled auxiliary data (a Split of images and labels) to train shadow models on")
    if len(aux) == 0:
        raise DataError("the attacker's auxiliary split is empty: LiRA's shadow models need data")
    return aux


class FittedLira:
    """LiRA ready to score candidates; ``statistics`` holds the last run's per-candidate figures.

    Offline, its ``shadows`` were trained at fit on the auxiliary data alone; online they
    are trained at the first :meth:`run` on aux ∪ the candidates (and again only if other
    candidates are queried).
    """

    def __init__(
        self,
        spec: Lira,
        make_model: Callable[[], nn.Module],
        aux: Split,
        recipe: Callable[[int], Any],
        seed: int,
        progress: bool,
    ) -> None:
        self.spec, self.make_model, self.aux, self.recipe = spec, make_model, aux, recipe
        self.seed, self.progress = seed, progress
        self.shadows: Any = None
        self.shadow_candidates: Tensor | None = None  # the candidates the online shadows were trained with
        self.statistics: LiraStatistics | None = None
        if spec.mode == "offline":
            self.shadows = self._train(aux.images, aux.labels)

    def _train(self, images: Tensor, labels: Tensor) -> Any:
        from dpsnn.shadows import member_masks, train_shadows

        masks = member_masks(len(labels), self.spec.shadow_models, seed=self.seed)
        return train_shadows(
            self.make_model,
            images,
            labels,
            masks,
            recipe=self.recipe(len(labels) // 2),  # each shadow trains on half of what it is given
            seed=self.seed,
            progress=self.progress,
        )

    def _online_shadows(self, queries: Queries) -> Tensor:
        """Shadows trained on aux ∪ the candidates; their IN masks on the candidates ``(S, M)``."""
        if self.shadow_candidates is None or not torch.equal(self.shadow_candidates, queries.images):
            images = torch.cat([self.aux.images, queries.images.to(self.aux.images.dtype)])
            labels = torch.cat([self.aux.labels, queries.labels.to(self.aux.labels.dtype)])
            self.shadows = self._train(images, labels)
            self.shadow_candidates = queries.images
        return self.shadows.masks[:, len(self.aux) :]

    def run(self, queries: Queries) -> MembershipScores:
        """LiRA's score of each candidate (higher: more likely a member of the target's training data)."""
        if len(queries.labels) == 0:
            raise DataError("no candidate examples to score")
        if self.spec.mode == "online":
            in_mask = self._online_shadows(queries)
        else:
            in_mask = torch.zeros((len(self.shadows), len(queries.labels)), dtype=torch.bool)
        torch.manual_seed(self.seed)  # the shadows' own wire noise, if any, drawn reproducibly
        shadow = logit_confidence(self.shadows.logits(queries.images), queries.labels)
        target = logit_confidence(queries.logits, queries.labels)
        self.statistics = lira_statistics(target, shadow, in_mask, self.spec.mode, self.spec.variance == "global")
        return MembershipScores(self.statistics.scores.float())


@register_attack("lira")
@dataclass(frozen=True)
class Lira(ShadowAttack):
    """LiRA with ``shadow_models`` shadows trained ``epochs`` epochs each (see the module docstring).

    The shadow parameters are :class:`~dpsnn.attacks.membership.ShadowAttack`'s
    (``learning_rate`` auto: the target's own).
    """

    threat_model = SHADOW_ATTACK_THREAT
    result = MembershipScores

    shadow_models: int = 16
    mode: str = "online"
    variance: str = "per-example"

    def __post_init__(self) -> None:
        if isinstance(self.shadow_models, int) and not isinstance(self.shadow_models, bool):
            if self.shadow_models < MIN_SHADOWS:
                raise ConfigError(
                    f"attack 'lira' needs at least {MIN_SHADOWS} shadow models to fit its Gaussians, "
                    f"got shadow_models={self.shadow_models}"
                )
        if self.mode not in MODES:
            raise ConfigError(f"attack 'lira': mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.variance not in VARIANCES:
            raise ConfigError(f"attack 'lira': variance must be one of {', '.join(VARIANCES)}, got {self.variance!r}")
        self._check_shadow_parameters(minimum_shadows=MIN_SHADOWS)

    def fit(
        self, target: nn.Module, aux: Any, training: AttackTraining = DEFAULT_TRAINING, seed: int = 0
    ) -> FittedLira:
        """LiRA against ``target`` with shadows of its recipe on ``aux`` (a labelled :class:`~dpsnn.data.Split`).

        ``training`` gives ``progress`` and, with ``max_steps`` (an experiment's attack
        budget), a cap on each shadow's steps; the rest of the shadows' optimisation is this
        spec's. Offline, the shadows are trained now; online, at the first :meth:`FittedLira.run`.
        """
        from dpsnn.shadows import model_maker

        aux = _as_split(aux)

        def recipe(members: int) -> Any:
            # Online, the shadows train on aux and the candidates: the step cap is counted on what they get.
            return self.recipe(target, members, training.max_steps)

        return FittedLira(self, model_maker(target), aux, recipe, seed, training.progress)


__all__ = [
    "FittedLira",
    "GaussianFit",
    "Lira",
    "LiraStatistics",
    "fit_gaussians",
    "lira_statistics",
    "logit_confidence",
    "offline_scores",
    "online_scores",
]
