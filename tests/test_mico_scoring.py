"""The MICO scorer against a hand-built ROC: strict FPR levels, scikit-learn's point dropping, ties, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from dpsnn.errors import ConfigError, DataError
from dpsnn.mico.scoring import (
    FPR_LEVELS,
    RANKING_KEY,
    SCORE_KEYS,
    ranking_figure,
    roc_points,
    score,
    score_key,
    score_models,
    tpr_at_fpr,
)

OFFICIAL_KEYS = (
    "TPR_FPR_10",
    "TPR_FPR_100",
    "TPR_FPR_500",
    "TPR_FPR_1000",
    "TPR_FPR_1500",
    "TPR_FPR_2000",
    "AUC",
    "MIA",
    "accuracy",
)


def reference_roc(solutions, predictions, drop_collinear: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ROC by hand: one point per distinct score (descending), collinear equal steps dropped, then (0, 0)."""
    members = np.asarray(solutions) == 1
    predictions = np.asarray(predictions, dtype=np.float64)
    thresholds = np.unique(predictions)[::-1]
    true_positives = np.array([np.sum(members & (predictions >= t)) for t in thresholds])
    false_positives = np.array([np.sum(~members & (predictions >= t)) for t in thresholds])
    keep = list(range(len(thresholds)))
    if drop_collinear and len(thresholds) > 2:  # scikit-learn keeps the ends and any point where a step changes
        inner = [
            i
            for i in range(1, len(thresholds) - 1)
            if true_positives[i - 1] - 2 * true_positives[i] + true_positives[i + 1] != 0
            or false_positives[i - 1] - 2 * false_positives[i] + false_positives[i + 1] != 0
        ]
        keep = [0, *inner, len(thresholds) - 1]
    fpr = np.r_[0, false_positives[keep]] / np.sum(~members)
    tpr = np.r_[0, true_positives[keep]] / np.sum(members)
    return fpr, tpr


def points(fpr, tpr) -> list[tuple[float, float]]:
    return list(zip(np.asarray(fpr).tolist(), np.asarray(tpr).tolist(), strict=True))


def mann_whitney_auc(solutions, predictions) -> float:
    """P(member scores above non-member) + ½ P(tie), over all pairs."""
    members = np.asarray(solutions) == 1
    predictions = np.asarray(predictions, dtype=np.float64)
    inside, outside = predictions[members][:, None], predictions[~members][None, :]
    return float(np.mean((inside > outside) + 0.5 * (inside == outside)))


def reference_score(solutions, predictions, drop_collinear: bool = True) -> dict[str, float]:
    fpr, tpr = reference_roc(solutions, predictions, drop_collinear)
    row = {f"TPR_FPR_{round(level * 10_000)}": max(t for f, t in points(fpr, tpr) if f < level) for level in FPR_LEVELS}
    row["AUC"] = mann_whitney_auc(solutions, predictions)
    row["MIA"] = max(t - f for f, t in points(fpr, tpr))
    row["accuracy"] = max(1 - (f + 1 - t) / 2 for f, t in points(fpr, tpr))
    return row


def assert_agrees(solutions, predictions) -> dict[str, float]:
    scores = score(solutions, predictions)
    expected = reference_score(solutions, predictions)
    assert tuple(scores) == OFFICIAL_KEYS
    for key in OFFICIAL_KEYS[:6]:
        assert scores[key] == expected[key], key  # the same integer ratios: exactly equal
    for key in ("AUC", "MIA", "accuracy"):
        assert scores[key] == pytest.approx(expected[key], abs=1e-12), key
    assert scores["AUC"] == pytest.approx(roc_auc_score(solutions, predictions), abs=1e-15)
    return scores


def random_scenario(seed: int, decimals: int | None = None, models: int = 5, per_model: int = 200):
    """``models`` models of ``per_model`` challenge points, half members, members scoring a little higher."""
    rng = np.random.default_rng(seed)
    solutions = np.tile(np.repeat([1.0, 0.0], per_model // 2), models)
    predictions = np.clip(rng.normal(0.5 + 0.1 * solutions, 0.2), 0, 1)
    return solutions, predictions if decimals is None else predictions.round(decimals)


def tied_diagonal() -> tuple[np.ndarray, np.ndarray]:
    """10 members, 10 non-members: one member at 1.0, then 0.9 … 0.1 each shared by a member and a non-member."""
    shared = np.round(np.arange(9, 0, -1) / 10, 1)
    return np.r_[1.0, np.ones(9), np.zeros(9), 0.0], np.r_[1.0, shared, shared, 0.0]


def test_official_key_names():
    assert SCORE_KEYS == OFFICIAL_KEYS
    assert [score_key(level) for level in FPR_LEVELS] == list(OFFICIAL_KEYS[:6])
    assert RANKING_KEY == "TPR_FPR_1000"


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_the_reference_on_random_scores(seed):
    assert_agrees(*random_scenario(seed))


@pytest.mark.parametrize(
    ("seed", "decimals"), [(0, 1), (1, 1), (2, 2), (22, 2), (4, 3), (7, 3)]
)  # 22, 7: dropping counts
def test_agrees_with_the_reference_on_tied_scores(seed, decimals):
    assert_agrees(*random_scenario(seed, decimals))


def test_perfect_and_inverted_separation():
    solutions = np.repeat([1, 0], 50)
    perfect = assert_agrees(solutions, np.r_[np.linspace(1, 0.6, 50), np.linspace(0.4, 0, 50)])
    assert all(perfect[key] == 1.0 for key in OFFICIAL_KEYS)
    inverted = assert_agrees(solutions, np.r_[np.linspace(0.4, 0, 50), np.linspace(1, 0.6, 50)])
    assert all(inverted[key] == 0.0 for key in OFFICIAL_KEYS[:7])
    assert inverted["MIA"] == 0.0 and inverted["accuracy"] == 0.5  # the (0, 0) point
    constant = assert_agrees(solutions, np.full(100, 0.5))
    assert constant["AUC"] == 0.5 and constant[RANKING_KEY] == 0.0


def test_a_point_exactly_at_a_level_does_not_count():
    # 1,000 non-members: one false positive is an FPR of exactly 0.001, ten of exactly 0.01.
    solutions = np.r_[np.ones(100), np.zeros(1000)]
    predictions = np.r_[np.full(30, 0.99), np.full(30, 0.9), np.full(40, 0.5), 0.95, np.full(9, 0.8), np.zeros(990)]
    fpr, tpr = roc_points(solutions, predictions)
    assert (0.001, 0.6) in points(fpr, tpr) and (0.01, 1.0) in points(fpr, tpr)
    scores = assert_agrees(solutions, predictions)
    assert scores["TPR_FPR_10"] == 0.3  # not 0.6, reached at FPR = 0.001
    assert scores["TPR_FPR_100"] == 0.6  # not 1.0, reached at FPR = 0.01
    assert scores["TPR_FPR_500"] == 1.0
    assert tpr_at_fpr(fpr, tpr, 0.0011) == 0.6


def test_dropped_collinear_points_change_the_score_and_it_follows_the_dropping():
    solutions, predictions = tied_diagonal()
    full_fpr, full_tpr, _ = roc_curve(solutions, predictions, drop_intermediate=False)
    assert (0.1, 0.2) in points(full_fpr, full_tpr)  # a point below 0.15 and 0.2 on the full curve ...
    fpr, tpr = roc_points(solutions, predictions)
    assert points(fpr, tpr) == [(0.0, 0.0), (0.0, 0.1), (0.9, 1.0), (1.0, 1.0)]  # ... that the default drops
    undropped = reference_score(solutions, predictions, drop_collinear=False)
    assert undropped["TPR_FPR_1500"] == undropped["TPR_FPR_2000"] == 0.2
    scores = assert_agrees(solutions, predictions)
    assert scores["TPR_FPR_1500"] == scores["TPR_FPR_2000"] == 0.1
    for key in ("AUC", "MIA", "accuracy"):  # maxima and areas lie on the kept ends of a straight run
        assert scores[key] == pytest.approx(undropped[key], abs=1e-12)


def test_dropping_changes_some_random_tied_scenarios():
    changed = 0
    for seed in range(40):
        solutions, predictions = random_scenario(seed, decimals=2, models=3)
        scores = score(solutions, predictions)
        undropped = reference_score(solutions, predictions, drop_collinear=False)
        changed += any(scores[key] != undropped[key] for key in OFFICIAL_KEYS[:6])
    assert changed > 0


def test_numpy_torch_and_lists_give_the_same_scores():
    solutions, predictions = random_scenario(7, decimals=2, models=1)
    expected = score(solutions, predictions)
    assert score(solutions.tolist(), predictions.tolist()) == expected
    assert score(torch.tensor(solutions).bool(), torch.tensor(predictions, requires_grad=True)) == expected
    assert score(solutions.astype(int), predictions.astype(np.float32).astype(np.float64)) == expected


def test_models_are_concatenated_in_any_order():
    solutions, predictions = random_scenario(11, decimals=2, models=4)
    per_model = {
        f"model_{i}": (solutions[200 * i : 200 * (i + 1)], predictions[200 * i : 200 * (i + 1)]) for i in range(4)
    }
    expected = score(solutions, predictions)
    assert score_models(per_model) == expected
    assert score_models(dict(reversed(per_model.items()))) == expected


@pytest.mark.parametrize(
    ("predictions", "message"),
    [
        (np.r_[np.full(199, 0.5), np.nan], "model 'model_1': predictions must not be NaN"),
        (np.r_[np.full(199, 0.5), 1.5], r"model 'model_1': predictions must lie in \[0, 1\]"),
        (np.r_[np.full(199, 0.5), -0.1], r"model 'model_1': predictions must lie in \[0, 1\]"),
        (np.r_[np.full(199, 0.5), np.inf], r"model 'model_1': predictions must lie in \[0, 1\]"),
        (np.full(150, 0.5), "model 'model_1': 150 predictions for 200 solutions"),
        (np.full((200, 2), 0.5), "model 'model_1': predictions must be one-dimensional"),
    ],
)
def test_a_bad_model_is_named(predictions, message):
    good = (np.repeat([1, 0], 100), np.full(200, 0.5))
    with pytest.raises(DataError, match=message):
        score_models({"model_0": good, "model_1": (good[0], predictions), "model_2": good})


def test_wrong_counts_and_solutions_are_named():
    good = (np.repeat([1, 0], 100), np.full(200, 0.5))
    short = (np.repeat([1, 0], 50), np.full(100, 0.5))
    with pytest.raises(DataError, match="model 'model_1': 100 challenge points, expected 200"):
        score_models({"model_0": good, "model_1": short})
    assert score_models({"model_0": good, "model_1": short}, expected_count=None)["AUC"] == 0.5
    with pytest.raises(DataError, match="model 'model_2': solutions must be 0 or 1; 1 are not"):
        score_models({"model_0": good, "model_2": (np.r_[2, np.zeros(199)], good[1])})
    with pytest.raises(DataError, match="model 'model_3': expected a"):
        score_models({"model_3": good[0]})
    with pytest.raises(DataError, match="no models"):
        score_models({})
    with pytest.raises(ConfigError, match="positive"):
        score_models({"model_0": good}, expected_count=0)


def test_a_single_class_is_refused():
    with pytest.raises(DataError, match="both members and non-members"):
        score(np.ones(10), np.linspace(0, 1, 10))
    non_members = (np.zeros(200), np.full(200, 0.5))
    with pytest.raises(DataError, match="0 members among 400"):  # a one-class model is fine, a one-class scenario not
        score_models({"model_0": non_members, "model_1": non_members})
    with pytest.raises(DataError, match="3 predictions for 2 solutions"):
        score([0, 1], [0.1, 0.2, 0.3])


def test_ranking_figure_is_the_mean_tpr_at_a_tenth():
    scenarios = {"cifar10_inf": {RANKING_KEY: 0.5}, "cifar10_hi": {RANKING_KEY: 0.2}, "cifar10_lo": {RANKING_KEY: 0.2}}
    assert ranking_figure(scenarios) == pytest.approx(0.3)
    with pytest.raises(DataError, match="'cifar10_lo' has no TPR_FPR_1000"):
        ranking_figure({**scenarios, "cifar10_lo": {"AUC": 0.5}})
    with pytest.raises(DataError, match="no scenarios"):
        ranking_figure({})
