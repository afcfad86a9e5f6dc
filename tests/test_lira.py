"""LiRA (Carlini et al. 2022): its statistic and Gaussian fits on hand-made numbers, and the attack on a real target.

The statistics are checked against the formulas (scipy's Normal as the oracle); the attack
is run on a deliberately over-fitted target (256 Fashion-MNIST images at 14×14, a small
MLP, 60 epochs), where online LiRA must beat the global loss threshold
(``membership-threshold``) at FPR 0.01.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from dpsnn.attacks import AttackTraining, MembershipScores, attack_from, make_attack, query
from dpsnn.attacks.lira import (
    MIN_STD,
    GaussianFit,
    Lira,
    fit_gaussians,
    lira_statistics,
    logit_confidence,
    offline_scores,
    online_scores,
)
from dpsnn.data import Split, load_images
from dpsnn.errors import ConfigError, DataError
from dpsnn.metrics import membership_metrics
from dpsnn.models import SplitNN
from dpsnn.shadows import ShadowRecipe, model_maker, train_shadows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUIET = AttackTraining(progress=False)


# -- the statistic ----------------------------------------------------------------------------------


def test_logit_confidence_is_the_log_odds_of_the_true_label():
    logits = torch.randn(3, 50, 10, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.randint(0, 10, (50,), generator=torch.Generator().manual_seed(1))
    p = logits.double().softmax(dim=-1).gather(-1, labels.expand(3, 50).unsqueeze(-1)).squeeze(-1)
    phi = logit_confidence(logits, labels)
    assert phi.shape == (3, 50)
    torch.testing.assert_close(phi, torch.log(p / (1 - p)), rtol=0, atol=1e-9)


def test_logit_confidence_is_exact_where_the_probability_rounds_to_one():
    logits = torch.tensor([[100.0, 0.0, 0.0], [0.0, -40.0, 0.0]])
    phi = logit_confidence(logits, torch.tensor([0, 1]))
    # p_y rounds to 1 (the naive log(p / (1 - p)) is inf) and to ~4e-18.
    torch.testing.assert_close(phi, torch.tensor([100.0 - math.log(2.0), -40.0 - math.log(2.0)], dtype=torch.float64))
    naive = logits.softmax(dim=-1)[0, 0]
    assert torch.isinf(torch.log(naive / (1 - naive)))


# -- Gaussian fits ----------------------------------------------------------------------------------


def hand_made(n_examples: int = 40, n_shadows: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, M) statistics with per-example means 0, 1, ... and per-example spreads 0.5, 1, 1.5, ...; a balanced mask."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.arange(n_examples, dtype=torch.float64)
    stds = 0.5 * (1 + torch.arange(n_examples, dtype=torch.float64) % 4)
    values = means + stds * torch.randn(n_shadows, n_examples, generator=generator, dtype=torch.float64)
    mask = torch.rand(n_shadows, n_examples, generator=generator).argsort(dim=0) < n_shadows // 2
    return values, mask


def test_per_example_fits_are_each_examples_own_mean_and_unbiased_std():
    values, mask = hand_made()
    fit = fit_gaussians(values, mask)
    for example in (0, 7, 39):
        own = values[:, example][mask[:, example]]
        assert fit.count[example] == len(own) == 32
        assert fit.mean[example].item() == pytest.approx(own.mean().item())
        assert fit.std[example].item() == pytest.approx(own.std(unbiased=True).item())


def test_global_variance_is_one_pooled_std_about_each_examples_own_mean():
    values, mask = hand_made()
    fit = fit_gaussians(values, mask, global_variance=True)
    assert torch.all(fit.std == fit.std[0])
    # The spreads 0.5, 1, 1.5, 2 in equal numbers: pooled variance (0.25 + 1 + 2.25 + 4) / 4 = 1.875.
    assert fit.std[0].item() == pytest.approx(math.sqrt(1.875), rel=0.1)
    residuals = torch.cat([values[:, m][mask[:, m]] - fit.mean[m] for m in range(values.shape[1])])
    assert fit.std[0].item() ** 2 == pytest.approx((residuals**2).sum().item() / (len(residuals) - values.shape[1]))
    # The means are still each example's own, not one for all.
    torch.testing.assert_close(fit.mean, fit_gaussians(values, mask).mean)


def test_one_statistic_per_example_falls_back_to_a_finite_spread():
    values = torch.tensor([[0.0, 10.0], [1.0, 11.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False], [False, True]])  # two shadow models: one statistic per example
    fit = fit_gaussians(values, mask)
    assert torch.isfinite(fit.std).all() and (fit.std > MIN_STD).all()
    identical = fit_gaussians(torch.zeros(4, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.bool))
    assert torch.all(identical.std == MIN_STD)  # no spread at all: the floor keeps scores finite


def test_an_example_without_statistics_is_a_data_error():
    with pytest.raises(DataError, match="no shadow statistic"):
        fit_gaussians(torch.zeros(4, 3), torch.tensor([[True, False, True]] * 4))


# -- scores -----------------------------------------------------------------------------------------


def gaussians(mean: list[float], std: list[float]) -> GaussianFit:
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    return GaussianFit(as_tensor(mean), as_tensor(std), torch.full((len(mean),), 8))


def test_online_score_is_the_gaussian_log_likelihood_ratio():
    fit_in, fit_out = gaussians([3.0, 2.0, 0.0], [1.0, 0.5, 2.0]), gaussians([-1.0, 1.0, 0.5], [0.5, 2.0, 1.0])
    phi = torch.tensor([2.5, 0.0, -4.0], dtype=torch.float64)
    expected = stats.norm.logpdf(phi, [3.0, 2.0, 0.0], [1.0, 0.5, 2.0]) - stats.norm.logpdf(
        phi, [-1.0, 1.0, 0.5], [0.5, 2.0, 1.0]
    )
    torch.testing.assert_close(online_scores(phi, fit_in, fit_out), torch.from_numpy(expected))
    # Equal spreads: the ratio is positive at μ_in, negative at μ_out, zero halfway.
    same_in, same_out = gaussians([2.0], [1.0]), gaussians([0.0], [1.0])
    at = lambda value: online_scores(torch.tensor([value], dtype=torch.float64), same_in, same_out).item()  # noqa: E731
    assert at(2.0) == pytest.approx(2.0) and at(0.0) == pytest.approx(-2.0) and at(1.0) == pytest.approx(0.0)


def test_offline_score_is_the_log_probability_that_an_out_model_is_below():
    fit_out = gaussians([0.0, 1.0, -2.0], [1.0, 0.5, 3.0])
    phi = torch.tensor([0.0, 2.0, -5.0], dtype=torch.float64)
    expected = stats.norm.logcdf(phi, [0.0, 1.0, -2.0], [1.0, 0.5, 3.0])
    torch.testing.assert_close(offline_scores(phi, fit_out), torch.from_numpy(expected))
    assert offline_scores(torch.zeros(1, dtype=torch.float64), gaussians([0.0], [1.0])).item() == pytest.approx(
        math.log(0.5)
    )
    # Far below the OUT Gaussian the naive log(cdf) is -inf; the score stays finite and ordered.
    far = offline_scores(torch.tensor([-60.0, -50.0], dtype=torch.float64), gaussians([0.0, 0.0], [1.0, 1.0]))
    assert torch.isfinite(far).all() and far[0] < far[1]
    assert far[1].item() == pytest.approx(stats.norm.logcdf(-50.0))


def test_per_example_variance_discounts_examples_whose_shadows_disagree():
    """Two examples with the same means and the same target φ: the one with spread-out shadows scores nearer 0."""
    shadow = torch.stack([torch.tensor([1.0, 1.0]) + torch.tensor([0.1, 3.0]) * z for z in (-1.0, 1.0, -1.0, 1.0)])
    shadow[:2] -= 1.0  # shadows 0, 1 are OUT (mean 0), shadows 2, 3 are IN (mean 1), for both examples
    in_mask = torch.tensor([[False, False], [False, False], [True, True], [True, True]])
    target = torch.tensor([1.0, 1.0], dtype=torch.float64)
    own = lira_statistics(target, shadow.double(), in_mask, "online", global_variance=False)
    assert own.scores[0] > 10 * own.scores[1] > 0
    pooled = lira_statistics(target, shadow.double(), in_mask, "online", global_variance=True)
    assert pooled.scores[0].item() == pytest.approx(pooled.scores[1].item())


def test_lira_separates_members_whose_difficulty_varies_where_a_global_threshold_cannot():
    """Hand-made φ: each example has its own OUT level (its difficulty); membership adds 1.5 to it."""
    generator = torch.Generator().manual_seed(0)
    n, shadows = 2000, 16
    level = 4 * torch.randn(n, generator=generator, dtype=torch.float64)
    in_mask = torch.rand(shadows, n, generator=generator).argsort(dim=0) < shadows // 2
    noise = lambda *shape: 0.3 * torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    shadow = level + in_mask * 1.5 + noise(shadows, n)
    members = torch.arange(n) < n // 2
    target = level + members * 1.5 + noise(n)
    rows = {}
    for mode in ("online", "offline"):
        for variance in ("per-example", "global"):
            scores = lira_statistics(target, shadow, in_mask, mode, variance == "global").scores
            rows[mode, variance] = membership_metrics(scores, members, n_bootstrap=2)
    threshold = membership_metrics(target, members, n_bootstrap=2)
    assert threshold["auc"] < 0.65
    for row in rows.values():
        assert row["auc"] > 0.95
        assert row["tpr_at_fpr_0_01"] > 0.8 > threshold["tpr_at_fpr_0_01"] + 0.5


# -- the spec -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shadow_models", [1, 0, -3])
def test_fewer_than_two_shadow_models_is_one_clear_config_error(shadow_models):
    for build in (
        lambda: make_attack("lira", {"shadow_models": shadow_models}),
        lambda: attack_from(f"lira:shadow_models={shadow_models}"),
        lambda: Lira(shadow_models=shadow_models),
    ):
        with pytest.raises(ConfigError, match="at least 2 shadow models") as raised:
            build()
        assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"mode": "both"}, "mode must be one of online, offline"),
        ({"variance": "pooled"}, "variance must be one of per-example, global"),
        ({"shadow_models": "many"}, "shadow_models must be int"),
        ({"epochs": "0"}, "epochs must be an integer of at least 1"),
        ({"learning_rate": "-1"}, "learning_rate must be a positive number"),
        ({"weight_decay": "nan"}, "weight_decay must be a non-negative number"),
    ],
)
def test_bad_parameters_are_config_errors(params, words):
    with pytest.raises(ConfigError, match=words):
        make_attack("lira", params)


def test_the_spec_round_trips_and_states_its_threat_model():
    attack = make_attack("lira", {"mode": "offline", "variance": "global", "shadow_models": "4"})
    assert attack == Lira(mode="offline", variance="global", shadow_models=4)
    assert attack_from(attack.spec()) == attack and attack_from(attack.to_dict()) == attack
    threat = type(attack).threat_model
    assert threat.shadow_data and threat.query_access and threat.aux_data
    assert not threat.client_weights and not threat.what_server_sees
    assert type(attack).result is MembershipScores


def test_shadows_of_a_registered_split_are_rebuilt_with_its_architecture_and_defences():
    target = SplitNN("reference", defences=["laplace:scale=0.5"], input_shape=(1, 16, 16), learning_rate=0.01)
    make = model_maker(target)
    first, second = make(), make()
    for shadow in (first, second):
        assert isinstance(shadow, SplitNN)
        assert shadow.trained_with() == target.trained_with() == "laplace(scale=0.5)"
        assert shadow.hparams["input_shape"] == [1, 16, 16]
    assert not torch.equal(next(first.parameters()), next(second.parameters()))
    assert make_attack("lira").recipe(target) == ShadowRecipe(learning_rate=0.01)


def test_shadows_of_a_users_own_modules_are_fresh_copies():
    target = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    shadow = model_maker(target)()
    assert isinstance(shadow, nn.Sequential) and shadow is not target
    assert not torch.equal(shadow[1].weight, target[1].weight)


def test_aux_must_be_a_labelled_split():
    target = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(DataError, match="labelled auxiliary data"):
        make_attack("lira").fit(target, torch.rand(8, 1, 2, 2), QUIET)
    with pytest.raises(DataError, match="empty"):
        make_attack("lira").fit(target, Split(torch.rand(0, 1, 2, 2), torch.zeros(0, dtype=torch.long)), QUIET)


# -- on an over-fitted target -------------------------------------------------------------------


RECIPE = {"epochs": 60, "batch_size": 32, "learning_rate": 3e-3}
N_MEMBERS, N_AUX = 256, 64


def small_split_network() -> SplitNN:
    client = nn.Sequential(nn.Flatten(), nn.Linear(14 * 14, 128), nn.ReLU())
    return SplitNN(client=client, server=nn.Linear(128, 10), input_shape=(1, 14, 14))


@pytest.fixture(scope="module")
def overfitted(data_root):
    """A split network of the user's own modules trained 60 epochs on 256 images; 256 non-members; 64 aux images."""
    images, labels = load_images("fashion-mnist", False, root=data_root)
    images = F.avg_pool2d(images, 2)  # 14×14: small and fast
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(2))
    members, others, aux = order[:N_MEMBERS], order[N_MEMBERS : 2 * N_MEMBERS], order[2 * N_MEMBERS :][:N_AUX]
    everything = torch.ones(1, N_MEMBERS, dtype=torch.bool)
    torch.manual_seed(0)
    target = train_shadows(small_split_network, images[members], labels[members], everything, ShadowRecipe(**RECIPE))
    target = target.module(0)
    candidates = torch.cat([members, others])
    is_member = torch.arange(2 * N_MEMBERS) < N_MEMBERS
    return target, Split(images[aux], labels[aux]), query(target, images[candidates], labels[candidates]), is_member


def test_the_target_is_over_fitted(overfitted):
    target, _, queries, is_member = overfitted
    correct = (queries.logits.argmax(dim=1) == queries.labels).float()
    assert correct[is_member].mean() > 0.95 > correct[~is_member].mean() + 0.15


def test_online_lira_beats_the_global_loss_threshold_at_low_false_positive_rates(overfitted):
    target, aux, queries, is_member = overfitted
    fitted = make_attack("lira", {"mode": "online", "shadow_models": 16, **RECIPE}).fit(target, aux, QUIET, seed=1)
    lira = membership_metrics(fitted.run(queries).scores, is_member, n_bootstrap=20)
    threshold = make_attack("membership-threshold", {"signal": "loss"}).fit(target, aux, QUIET, seed=1)
    loss = membership_metrics(threshold.run(queries).scores, is_member, n_bootstrap=20)
    assert lira["tpr_at_fpr_0_01"] > loss["tpr_at_fpr_0_01"] + 0.05
    assert lira["auc"] > loss["auc"]

    # What the fitted attack exposes: each candidate IN exactly half of the shadows, and the φ it fitted.
    statistics = fitted.statistics
    assert statistics.shadow.shape == statistics.in_mask.shape == (16, 2 * N_MEMBERS)
    assert torch.all(statistics.in_mask.sum(dim=0) == 8)
    torch.testing.assert_close(statistics.target, logit_confidence(queries.logits, queries.labels))
    assert statistics.fit_in.mean[is_member].mean() > statistics.fit_out.mean[is_member].mean()


def test_offline_lira_trains_its_shadows_on_aux_alone(overfitted):
    target, aux, queries, is_member = overfitted
    attack = make_attack("lira", {"mode": "offline", "variance": "global", "shadow_models": 4, "epochs": 2})
    fitted = attack.fit(target, aux, QUIET, seed=0)
    assert fitted.shadows.masks.shape == (4, N_AUX)  # trained at fit, before any candidate was seen
    result = fitted.run(queries)
    assert isinstance(result, MembershipScores) and result.scores.shape == (2 * N_MEMBERS,)
    assert torch.isfinite(result.scores).all()
    assert not fitted.statistics.in_mask.any() and fitted.statistics.fit_in is None


def test_a_step_cap_counts_the_images_the_shadows_really_train_on(overfitted, monkeypatch):
    import dpsnn.shadows

    target, aux, queries, _ = overfitted
    recipes = []
    real = dpsnn.shadows.train_shadows
    monkeypatch.setattr(dpsnn.shadows, "train_shadows", lambda *a, **k: recipes.append(k["recipe"]) or real(*a, **k))
    capped = AttackTraining(progress=False, max_steps=12)
    spec = {"shadow_models": 2, "epochs": 60, "batch_size": 32}
    make_attack("lira", {**spec, "mode": "online"}).fit(target, aux, capped, seed=0).run(queries)
    make_attack("lira", {**spec, "mode": "offline"}).fit(target, aux, capped, seed=0)
    # Online: aux and the candidates, 576 images, 288 per shadow, 9 batches: 2 epochs fit 12 steps (rounded up).
    # Offline: aux alone, 32 per shadow, 1 batch: 12 epochs.
    assert [recipe.epochs for recipe in recipes] == [math.ceil(12 / 9), 12]
