"""The MICO membership-inference competition's scorer, reproduced to the last tie.

MICO (Microsoft's Membership Inference Competition, SaTML 2023) gives each target model
a set of challenge points, half of them members of its training set; an attack submits,
for every point, a confidence in ``[0, 1]`` that it is a member. For each scenario (e.g.
``cifar10_inf``, ``cifar10_hi``, ``cifar10_lo``) the official scoring program
(``src/mico-competition/scoring/score.py`` of ``microsoft/MICO``) concatenates the
solutions and predictions of *all* the scenario's models into one ROC curve, so one
threshold serves every model, and reports:

- ``TPR_FPR_<int(1e4·level)>`` for the levels 0.001, 0.01, 0.05, 0.1, 0.15 and 0.2
  (``TPR_FPR_10`` … ``TPR_FPR_2000``): the largest true-positive rate among the points of
  scikit-learn's ``roc_curve`` whose false-positive rate is *strictly below* the level;
- ``AUC``: scikit-learn's ``roc_auc_score`` (the trapezoids under the same curve);
- ``MIA``: the largest ``TPR − FPR`` over the ROC points (the membership advantage);
- ``accuracy``: the largest ``1 − (FPR + 1 − TPR) / 2`` (balanced accuracy).

A task's ranking figure is the mean of ``TPR_FPR_1000`` over its three scenarios.

What is reproduced exactly, and checked in ``tests/test_mico_scoring.py`` against a
re-implementation that builds the ROC by hand:

- the ROC is ``roc_curve`` with its default ``drop_intermediate=True``. Dropping removes
  the points whose neighbours lie at equal steps on both axes; for untied scores those
  are inner points of horizontal or vertical runs and change nothing, but where members
  and non-members share a score the curve moves diagonally, and a dropped point can be
  the one that lay below a level. With 10 members and 10 non-members, one member scored
  1.0, the others sharing ``0.9, 0.8, …, 0.1`` one each with a non-member, and the last
  non-member scored 0.0, the diagonal keeps only its ends: ``TPR_FPR_1500`` and
  ``TPR_FPR_2000`` are 0.1, where the full curve's point (0.1, 0.2) would give 0.2.
  Rounded scores are enough: in simulated scenarios of 1,000 points with scores rounded
  to 2 or 3 decimals, about one in ten changes at some level;
- the inequality is strict: a point with FPR exactly equal to a level does not count
  (with 1,000 non-members, 1 false positive is an FPR of exactly 0.001);
- the order in which models are concatenated does not matter (the ROC is a function of
  the multiset of (solution, prediction) pairs).

``dpsnn.metrics.membership_metrics`` uses the same strict inequality on the full curve
(``drop_intermediate=False``); on tied scores its TPR at a level can exceed this one.

Where this scorer is stricter than the official program: that program only checks that
the concatenated predictions are as many as the solutions and lie in ``[0, 1]``; here
each model's arrays are checked on their own (equal lengths, the expected number of
challenge points, solutions 0 or 1, predictions neither NaN nor outside ``[0, 1]``) and
an error names the model. Example::

    from dpsnn.mico.scoring import ranking_figure, score_models

    per_model = {"model_0": ([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1]),
                 "model_1": ([1, 0, 1, 0], [0.7, 0.6, 0.2, 0.4])}
    scores = score_models(per_model, expected_count=4)
    print(scores["TPR_FPR_1000"], scores["AUC"])                  # 0.75 0.8125
    print(ranking_figure({"cifar10_inf": scores}))                # 0.75
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.metrics import auc, roc_curve

from dpsnn.errors import ConfigError, DataError

__all__ = [
    "CHALLENGE_POINTS_PER_MODEL",
    "FPR_LEVELS",
    "RANKING_KEY",
    "SCORE_KEYS",
    "curve_scores",
    "ranking_figure",
    "roc_points",
    "score",
    "score_key",
    "score_models",
    "tpr_at_fpr",
]

FPR_LEVELS = (0.001, 0.01, 0.05, 0.1, 0.15, 0.2)
CHALLENGE_POINTS_PER_MODEL = 200  # every MICO target model has 200 challenge points, half of them members


def score_key(level: float) -> str:
    """The official name of the TPR at ``level``: ``TPR_FPR_1000`` for 0.1 (``int(1e4 * level)``)."""
    return f"TPR_FPR_{int(1e4 * level)}"


RANKING_KEY = score_key(0.1)
SCORE_KEYS = (*(score_key(level) for level in FPR_LEVELS), "AUC", "MIA", "accuracy")


def _as_vector(values: Any, what: str, where: str) -> np.ndarray:
    """``values`` (NumPy array, torch tensor or sequence) as a one-dimensional float64 array."""
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        values = values.detach().cpu().numpy()
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{where}{what} must be numbers ({error})") from None
    if vector.ndim != 1:
        raise DataError(f"{where}{what} must be one-dimensional, got shape {vector.shape}")
    return vector


def _check_solutions(solutions: np.ndarray, where: str) -> None:
    bad = (solutions != 0) & (solutions != 1)
    if bad.any():
        raise DataError(f"{where}solutions must be 0 or 1; {int(bad.sum())} are not (e.g. {solutions[bad][0]})")


def _check_predictions(predictions: np.ndarray, where: str) -> None:
    missing = np.isnan(predictions)
    if missing.any():
        raise DataError(f"{where}predictions must not be NaN ({int(missing.sum())} are)")
    bad = (predictions < 0) | (predictions > 1)
    if bad.any():
        raise DataError(f"{where}predictions must lie in [0, 1]; {int(bad.sum())} do not (e.g. {predictions[bad][0]})")


def _checked_pair(solutions: Any, predictions: Any, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Solutions and predictions as float64 vectors of equal length, each value valid."""
    solutions = _as_vector(solutions, "solutions", where)
    predictions = _as_vector(predictions, "predictions", where)
    if len(solutions) != len(predictions):
        raise DataError(f"{where}{len(predictions)} predictions for {len(solutions)} solutions")
    _check_solutions(solutions, where)
    _check_predictions(predictions, where)
    return solutions, predictions


def _check_both_classes(solutions: np.ndarray) -> None:
    members = int(solutions.sum())
    if members == 0 or members == len(solutions):
        raise DataError(
            f"scoring needs both members and non-members, got {members} members among {len(solutions)} solutions"
        )


def _official_roc(solutions: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(solutions, predictions, drop_intermediate=True)  # the default, stated: it matters
    return fpr, tpr


def roc_points(solutions: Any, predictions: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``(fpr, tpr)`` points of the official ROC: ``roc_curve`` with its default point dropping."""
    solutions, predictions = _checked_pair(solutions, predictions)
    _check_both_classes(solutions)
    return _official_roc(solutions, predictions)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """The largest TPR among the ROC points whose FPR is strictly below ``level``."""
    if not 0.0 < level <= 1.0:
        raise ConfigError(f"a false-positive-rate level must lie in (0, 1], got {level}")
    return float(np.max(tpr[fpr < level]))  # the curve starts at (0, 0): never empty


def curve_scores(fpr: np.ndarray, tpr: np.ndarray) -> dict[str, float]:
    """The official metrics (:data:`SCORE_KEYS`) read off the points of an official ROC.

    The AUC is the trapezoid area under these points: what ``roc_auc_score`` computes, since it
    draws the same curve (with the same point dropping) and sums the same trapezoids.
    """
    scores = {score_key(level): tpr_at_fpr(fpr, tpr, level) for level in FPR_LEVELS}
    scores["AUC"] = float(auc(fpr, tpr))
    scores["MIA"] = float(np.max(tpr - fpr))
    scores["accuracy"] = float(np.max(1 - (fpr + (1 - tpr)) / 2))
    return scores


def score(solutions: Any, predictions: Any) -> dict[str, float]:
    """The official metrics (:data:`SCORE_KEYS`) of one ROC over all of a scenario's challenge points.

    ``solutions`` are 1 for members and 0 for non-members, ``predictions`` the confidences
    in ``[0, 1]`` that each point is a member; both classes must be present.
    """
    solutions, predictions = _checked_pair(solutions, predictions)
    _check_both_classes(solutions)
    return curve_scores(*_official_roc(solutions, predictions))


def score_models(
    per_model: Mapping[str, tuple[Any, Any]], expected_count: int | None = CHALLENGE_POINTS_PER_MODEL
) -> dict[str, float]:
    """:func:`score` of all models' points concatenated; each model, named by its folder, is checked first.

    ``per_model`` maps a model's folder name to its ``(solutions, predictions)``; each
    model must have ``expected_count`` challenge points (any number if ``None``).
    """
    if expected_count is not None and expected_count < 1:
        raise ConfigError(f"the expected number of challenge points per model must be positive, got {expected_count}")
    if not per_model:
        raise DataError("no models to score")
    all_solutions, all_predictions = [], []
    for name, pair in per_model.items():
        where = f"model {name!r}: "
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise DataError(f"{where}expected a (solutions, predictions) pair")
        solutions, predictions = _checked_pair(*pair, where=where)
        if expected_count is not None and len(solutions) != expected_count:
            raise DataError(f"{where}{len(solutions)} challenge points, expected {expected_count}")
        all_solutions.append(solutions)
        all_predictions.append(predictions)
    return score(np.concatenate(all_solutions), np.concatenate(all_predictions))


def ranking_figure(scores_by_scenario: Mapping[str, Mapping[str, float]]) -> float:
    """A task's ranking figure: the mean ``TPR_FPR_1000`` over its scenarios."""
    if not scores_by_scenario:
        raise DataError("no scenarios to rank")
    missing = [scenario for scenario, scores in scores_by_scenario.items() if RANKING_KEY not in scores]
    if missing:
        raise DataError(f"scenario {missing[0]!r} has no {RANKING_KEY} score")
    return float(np.mean([scores[RANKING_KEY] for scores in scores_by_scenario.values()]))
