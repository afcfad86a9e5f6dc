"""Membership inference: the ROC metrics against scikit-learn, the attacks on over-fitted and on unseen data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from dpsnn.attacks import AttackTraining, MembershipScores, Queries, make_attack, query
from dpsnn.attacks.membership import membership_candidates, membership_signal
from dpsnn.data import Split
from dpsnn.errors import ConfigError, DataError
from dpsnn.evaluation import evaluate_membership
from dpsnn.metrics import check_probabilities, fpr_key, membership_metrics
from dpsnn.models import SplitNN
from dpsnn.shadows import ShadowRecipe, train_shadows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 12, 12)
METRICS = ("auc", "tpr_at_fpr_0_001", "tpr_at_fpr_0_01", "tpr_at_fpr_0_1", "advantage")
#: The target's recipe (60 epochs at batch 16), and aux twice its training set: each shadow trains on as many examples.
SMALL_SHADOWS = {"shadow_models": 4, "epochs": 60, "batch_size": 16}


def prototypes_split(n: int, seed: int, noise: float = 0.5) -> Split:
    """One random pattern per class plus heavy noise: a model of few examples learns them by heart."""
    patterns = torch.rand(10, *SHAPE, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return Split((patterns[labels] + noise * torch.randn(n, *SHAPE, generator=generator)).clamp(0, 1), labels)


def small_split() -> SplitNN:
    """A small split network of the user's own modules (its shadows are reset copies of it)."""
    client = nn.Sequential(nn.Flatten(), nn.Linear(144, 128), nn.Tanh())
    return SplitNN(client=client, server=nn.Linear(128, 10), input_shape=SHAPE)


def train_target(train: Split, epochs: int = 60) -> SplitNN:
    """A split network trained on ``train`` alone for many epochs: over-fitted."""
    make = small_split
    everything = torch.ones(1, len(train), dtype=torch.bool)
    trained = train_shadows(make, train.images, train.labels, everything, ShadowRecipe(epochs, batch_size=16), seed=0)
    return trained.module(0)


@pytest.fixture(scope="module")
def overfitted():
    """A target over-fitted on 96 examples; candidates: 96 of its members and 96 examples it never saw; aux data."""
    torch.manual_seed(0)
    members, non_members, aux = prototypes_split(96, seed=1), prototypes_split(400, seed=2), prototypes_split(192, 3)
    target = train_target(members)
    candidates, is_member = membership_candidates(members, non_members, n=192, seed=0)
    return target, candidates, is_member, aux, non_members


# -- the metrics ------------------------------------------------------------------------------------


def test_the_metrics_equal_scikit_learns_roc():
    generator = np.random.default_rng(0)
    members = generator.random(400) < 0.5
    scores = generator.normal(size=400) + 0.8 * members
    measured = membership_metrics(torch.tensor(scores), torch.tensor(members), n_bootstrap=50)
    fpr, tpr, _ = roc_curve(members, scores)
    assert measured["auc"] == pytest.approx(roc_auc_score(members, scores), abs=1e-12)
    for level in (0.001, 0.01, 0.1):
        assert measured[fpr_key(level)] == pytest.approx(tpr[fpr < level].max(), abs=1e-12)
    assert measured["advantage"] == pytest.approx((tpr - fpr).max(), abs=1e-12)
    assert set(measured) == {f"{m}{s}" for m in METRICS for s in ("", "_se", "_ci_low", "_ci_high")}


def test_tpr_at_fpr_uses_the_points_strictly_below_the_level():
    """A ROC point lies exactly at FPR 0.1: "<" leaves it out (TPR 0.5), "<=" would take it (TPR 1)."""
    member_scores = [1.0, 0.99, 0.98, 0.97, 0.96, 0.94, 0.93, 0.92, 0.91, 0.90]
    non_member_scores = [0.95, 0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02]
    scores = torch.tensor(member_scores + non_member_scores)
    members = torch.tensor([True] * 10 + [False] * 10)
    fpr, tpr, _ = roc_curve(members.numpy(), scores.numpy())
    assert tpr[fpr <= 0.1].max() == 1.0 and tpr[fpr < 0.1].max() == 0.5  # the two conventions differ here
    measured = membership_metrics(scores, members, fpr_levels=(0.1, 0.11), n_bootstrap=20)
    assert measured["tpr_at_fpr_0_1"] == 0.5
    assert measured["tpr_at_fpr_0_11"] == 1.0
    assert measured["advantage"] == pytest.approx(0.9)  # TPR 1 at FPR 0.1
    assert measured["auc"] == pytest.approx(0.95)  # one non-member outranks five members: 1 - 5/100


def test_the_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    generator = np.random.default_rng(1)
    members = torch.tensor(generator.random(300) < 0.5)
    scores = torch.tensor(generator.normal(size=300)) + members.double()
    measured = membership_metrics(scores, members, seed=7)
    for name in ("auc", "advantage", "tpr_at_fpr_0_1"):
        assert measured[f"{name}_ci_low"] <= measured[name] <= measured[f"{name}_ci_high"]
        assert 0 < measured[f"{name}_se"] < 0.1
    assert measured["auc_ci_high"] - measured["auc_ci_low"] == pytest.approx(4 * measured["auc_se"], rel=0.3)
    assert measured == membership_metrics(scores, members, seed=7)


def test_bad_scores_labels_and_levels_are_clear_errors():
    scores, members = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([True, False, True, False])
    with pytest.raises(DataError, match="NaN"):
        membership_metrics(torch.tensor([0.1, math.nan, 0.3, 0.4]), members)
    with pytest.raises(DataError, match="both members and non-members"):
        membership_metrics(scores, torch.ones(4, dtype=torch.bool))
    with pytest.raises(DataError):
        membership_metrics(scores, members[:3])
    for levels in ((0.0,), (1.0,), (0.01, 1.5), (-0.1,)):
        with pytest.raises(ConfigError, match="strictly between 0 and 1"):
            membership_metrics(scores, members, fpr_levels=levels)


def test_predictions_must_be_probabilities():
    assert check_probabilities(torch.tensor([0.0, 0.5, 1.0])).tolist() == [0.0, 0.5, 1.0]
    for bad in ([0.2, math.nan], [0.2, 1.5], [-0.1, 0.3]):
        with pytest.raises(DataError, match=r"\[0, 1\]"):
            check_probabilities(torch.tensor(bad))


# -- the candidates ---------------------------------------------------------------------------------


def test_candidates_are_half_members_shuffled_and_labelled():
    members = Split(torch.zeros(50, *SHAPE), torch.zeros(50, dtype=torch.long))
    non_members = Split(torch.ones(80, *SHAPE), torch.ones(80, dtype=torch.long))
    candidates, is_member = membership_candidates(members, non_members, n=40, seed=0)
    assert len(candidates) == 40 and int(is_member.sum()) == 20
    assert torch.equal(is_member, candidates.labels == 0)  # the members are the zero images
    assert not torch.equal(is_member, is_member.sort(descending=True).values)  # shuffled
    with pytest.raises(DataError, match="only 50"):
        membership_candidates(members, non_members, n=120)
    with pytest.raises(DataError):
        membership_candidates(members, non_members, n=1)


# -- the attacks ------------------------------------------------------------------------------------


def test_the_loss_threshold_attack_finds_the_members_of_an_over_fitted_target(overfitted):
    target, candidates, is_member, aux, _ = overfitted
    fitted = make_attack("membership-threshold", {"signal": "loss"}).fit(target, aux)
    row = evaluate_membership(target, fitted, candidates, is_member, seed=0)
    assert row["attack_auc"] > 0.8, row["attack_auc"]
    assert row["attack_auc_ci_low"] > 0.5
    assert row["gap_auc"] == pytest.approx(row["attack_auc"] - 0.5)


def test_on_examples_the_target_never_saw_the_attack_stays_at_chance(overfitted):
    """Candidates all from outside the training set, split into "members" and not at random."""
    target, _, _, aux, non_members = overfitted
    unseen = non_members.subset(300)
    fake_members = torch.randperm(300, generator=torch.Generator().manual_seed(0)) < 150
    fitted = make_attack("membership-threshold", {"signal": "loss"}).fit(target, aux)
    row = evaluate_membership(target, fitted, unseen, fake_members, seed=0)
    assert row["attack_auc_ci_low"] <= 0.5 <= row["attack_auc_ci_high"], row
    assert row["gap_auc_ci_low"] <= 0.0 <= row["gap_auc_ci_high"]
    assert row["attack_advantage"] < 0.2


def test_every_signal_ranks_members_first(overfitted):
    target, candidates, is_member, _, _ = overfitted
    answers = query(target, candidates.images, candidates.labels)
    for signal, bar in (("loss", 0.8), ("confidence", 0.8), ("modified-entropy", 0.8), ("entropy", 0.6)):
        scores = membership_signal(answers.logits, answers.labels, signal)
        assert roc_auc_score(is_member.numpy(), scores.numpy()) > bar, signal


def test_membership_signals_follow_their_definitions():
    logits, labels = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    p = torch.softmax(logits.double(), dim=1)[0]
    assert membership_signal(logits, labels, "loss").item() == pytest.approx(p[0].log().item())
    assert membership_signal(logits, labels, "confidence").item() == pytest.approx(p[0].item())
    assert membership_signal(logits, labels, "entropy").item() == pytest.approx((p * p.log()).sum().item())
    modified = -(1 - p[0]) * p[0].log() - (p[1] * (1 - p[1]).log() + p[2] * (1 - p[2]).log())
    assert membership_signal(logits, labels, "modified-entropy").item() == pytest.approx(-modified.item())


def test_a_threshold_chosen_on_shadows_calls_members_of_the_target(overfitted):
    target, candidates, is_member, aux, _ = overfitted
    plain = make_attack("membership-threshold").fit(target, aux)
    calibrated = make_attack("membership-threshold", SMALL_SHADOWS).fit(target, aux, seed=0)
    assert calibrated.threshold is not None and calibrated.validation["accuracy"] > 0.7
    answers = query(target, candidates.images, candidates.labels)
    scores = calibrated.run(answers).scores
    torch.testing.assert_close(scores, plain.run(answers).scores - calibrated.threshold, rtol=0, atol=1e-5)
    decided = (scores >= 0).float()
    assert (decided == is_member.float()).float().mean() > 0.7  # the shadows' threshold transfers to the target


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # the MLP's grid on a few rows
@pytest.mark.parametrize("model", ["logistic", "knn", "mlp", "forest"])
def test_trained_attack_models_find_the_members(overfitted, model):
    target, candidates, is_member, aux, _ = overfitted
    attack = make_attack("membership-classifier", {"model": model, "attack_examples": 300, **SMALL_SHADOWS})
    fitted = attack.fit(target, aux, seed=0)
    assert set(fitted.validation) == {"precision", "recall", "accuracy"}
    assert fitted.validation["accuracy"] > 0.6, fitted.validation
    result = fitted.run(query(target, candidates.images, candidates.labels))
    assert isinstance(result, MembershipScores) and ((result.scores >= 0) & (result.scores <= 1)).all()
    assert membership_metrics(result.scores, is_member, n_bootstrap=20)["auc"] > 0.7


def test_chance_is_at_chance_and_the_row_has_every_metric(overfitted):
    target, candidates, is_member, aux, _ = overfitted
    row = evaluate_membership(target, make_attack("chance").fit(target, aux, seed=1), candidates, is_member, seed=0)
    assert abs(row["attack_auc"] - 0.5) < 3 * row["attack_auc_se"]
    assert row["n_candidates"] == 192 and row["n_members"] == 96
    for metric in METRICS:
        for prefix in ("attack_", "baseline_", "gap_"):
            assert math.isfinite(row[f"{prefix}{metric}"]) and math.isfinite(row[f"{prefix}{metric}_se"])
        assert row[f"gap_{metric}"] == pytest.approx(row[f"attack_{metric}"] - row[f"baseline_{metric}"])
    assert row["baseline_auc"] == 0.5 and row["baseline_tpr_at_fpr_0_01"] == 0.01 and row["baseline_advantage"] == 0


def test_bad_attack_parameters_and_data_are_clear_errors():
    for name, params in (
        ("membership-threshold", {"signal": "margin"}),
        ("membership-threshold", {"shadow_models": 1}),
        ("membership-classifier", {"model": "svm"}),
        ("membership-classifier", {"shadow_models": 0}),
        ("membership-classifier", {"epochs": 0}),
        ("membership-classifier", {"learning_rate": -1.0}),
    ):
        with pytest.raises(ConfigError):
            make_attack(name, params)
    target = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(DataError, match="labelled auxiliary data"):
        make_attack("membership-classifier").fit(target, torch.rand(10, *SHAPE))
    empty = Queries(torch.zeros(0, *SHAPE), torch.zeros(0, dtype=torch.long), torch.zeros(0, 10))
    with pytest.raises(DataError, match="no candidate"):
        make_attack("membership-threshold").fit(target, None).run(empty)


def test_shadow_attacks_on_one_target_share_their_shadows_when_asked(overfitted, monkeypatch):
    import dpsnn.shadows

    target, candidates, is_member, aux, _ = overfitted
    trained = []
    real = dpsnn.shadows.train_shadows
    monkeypatch.setattr(dpsnn.shadows, "train_shadows", lambda *a, **k: trained.append(1) or real(*a, **k))
    shared: dict = {}
    training = AttackTraining(progress=False, shared=shared)
    small = {**SMALL_SHADOWS, "epochs": 5, "attack_examples": 300}
    logistic = make_attack("membership-classifier", {**small, "model": "logistic"}).fit(target, aux, training, seed=0)
    knn = make_attack("membership-classifier", {**small, "model": "knn"}).fit(target, aux, training, seed=0)
    assert len(trained) == 1 and len(shared) == 1  # the second attack reused the first one's shadows
    assert logistic.best_params != knn.best_params  # two different attack models on them
    make_attack("membership-classifier", {**small, "model": "knn"}).fit(target, aux, training, seed=1)
    assert len(trained) == 2  # another seed: other shadows
    make_attack("membership-classifier", {**small, "model": "knn"}).fit(target, aux, AttackTraining(progress=False))
    assert len(trained) == 3  # nothing shared unless asked
