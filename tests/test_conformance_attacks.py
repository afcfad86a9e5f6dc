"""Conformance of every registered attack: one suite, run over :func:`dpsnn.attacks.registered_attacks`.

Each attack is fitted on a few auxiliary images of a tiny split network (one whose
intermediate is a vector, one whose intermediate is a feature map), run on what the server
observed, and its result scored beside the baseline its result type names: every metric
the result type names must reach the summary row, with a finite value and standard error.
An attack added to :mod:`dpsnn.attacks` is tested here without new test code.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from dpsnn.attacks import (
    AttackTraining,
    MembershipScores,
    attack_from,
    make_attack,
    observe,
    query,
    registered_attacks,
)
from dpsnn.attacks.membership import membership_candidates
from dpsnn.data import Split
from dpsnn.errors import ConfigError
from dpsnn.evaluation import baseline_of, evaluate_attack, evaluate_membership, score
from dpsnn.models import SplitNN, Validator

NAMES = sorted(registered_attacks())
#: (architecture, image shape): a vector intermediate and a feature-map intermediate, on small images.
TARGETS = [
    pytest.param("reference", (1, 16, 16), id="vector"),
    pytest.param("cifar-cnn", (3, 16, 16), id="feature-map"),
]
TRAINING = AttackTraining(batch_size=16, max_steps=2, progress=False)
#: Shadow-model attacks on a tiny budget too: two shadows (LiRA's default sixteen take a while here).
SMALL_SHADOWS = {"shadow_models": 2, "batch_size": 16}
FILE_NAME_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
NEEDS_VALIDATOR = ("validator_acc", "validator_confidence")


def split(shape: tuple[int, ...], size: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.rand(size, *shape, generator=generator), torch.randint(0, 10, (size,), generator=generator))


def setting(architecture: str, shape: tuple[int, ...]) -> tuple[SplitNN, Split, Split]:
    """An untrained target with Laplace noise on its wire, a small auxiliary split and a test split.

    384 test images give dCor two batches (256 and 128), so its standard error is finite too.
    """
    torch.manual_seed(0)
    target = SplitNN(architecture, defences=["laplace:scale=0.1"], input_shape=shape).eval()
    return target, split(shape, 32, seed=1), split(shape, 384, seed=2)


def expected_metrics(result_type: type, validator: object) -> set[str]:
    metrics = set(result_type.metrics)
    return metrics if validator is not None else metrics - set(NEEDS_VALIDATOR)


@pytest.mark.parametrize("name", NAMES)
def test_the_threat_model_describes_what_the_attack_is_given(name):
    attack = make_attack(name)
    assert attack.name == name
    description = type(attack).threat_model.describe()
    assert description and (description != "nothing" or name == type(attack).result.baseline)


@pytest.mark.parametrize("name", NAMES)
def test_the_result_type_names_its_metrics_and_a_registered_baseline(name):
    result_type = type(make_attack(name)).result
    assert result_type.metrics and len(set(result_type.metrics)) == len(result_type.metrics)
    assert all(isinstance(metric, str) and metric for metric in result_type.metrics)
    assert attack_from(result_type.baseline).name in registered_attacks()


@pytest.mark.parametrize("name", NAMES)
def test_names_and_plain_data_round_trips(name):
    attack = make_attack(name)
    assert FILE_NAME_SAFE.fullmatch(attack.key()), attack.key()
    assert attack.label().strip()
    assert attack_from(attack.spec()) == attack
    assert attack_from(attack.to_dict()) == attack
    assert attack_from(name) == attack


def test_keys_and_labels_are_unique_across_the_registry():
    attacks = [make_attack(name) for name in NAMES]
    assert len({attack.key() for attack in attacks}) == len(attacks)
    assert len({attack.label() for attack in attacks}) == len(attacks)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_attacks_and_parameters_are_config_errors(name):
    with pytest.raises(ConfigError):
        make_attack(name, {"no_such_parameter": 1})
    with pytest.raises(ConfigError):
        attack_from(f"{name}:no_such_parameter=1")
    with pytest.raises(ConfigError):
        make_attack(f"{name}-no-such-attack")


def check_row(row: dict[str, float], result_type: type, validator: object) -> None:
    """Every metric ``result_type`` names is in ``row`` as attack, baseline and gap, each with a finite SE."""
    for metric in expected_metrics(result_type, validator):
        for prefix in ("attack_", "baseline_", "gap_"):
            for key in (f"{prefix}{metric}", f"{prefix}{metric}_se"):
                assert key in row, f"{key} is missing from the summary row"
                assert math.isfinite(row[key]), f"{key} = {row[key]}"
        assert row[f"gap_{metric}"] == pytest.approx(row[f"attack_{metric}"] - row[f"baseline_{metric}"])
    if validator is None:
        assert not any(name in key for key in row for name in NEEDS_VALIDATOR)


@pytest.mark.parametrize("architecture,shape", TARGETS)
@pytest.mark.parametrize("name", NAMES)
def test_a_tiny_run_reaches_the_summary_row(name, architecture, shape):
    defaults = make_attack(name).params()
    attack = make_attack(name, {key: value for key, value in SMALL_SHADOWS.items() if key in defaults})
    target, aux, test = setting(architecture, shape)
    fitted = attack.fit(target, aux, TRAINING, seed=0)
    if type(attack).result is MembershipScores:
        candidates, members = membership_candidates(aux, test, n=32, seed=0)
        result = fitted.run(query(target, candidates.images, candidates.labels, seed=0))
        assert isinstance(result, MembershipScores) and result.scores.shape == (32,)
        check_row(evaluate_membership(target, fitted, candidates, members, seed=0), MembershipScores, None)
        return

    # Step by step: observe, run, the baseline the result type names, the summary row.
    observation = observe(target, test.images, seed=0)
    result = fitted.run(observation)
    assert isinstance(result, type(attack).result)
    baseline = baseline_of(result, target, aux, observation, seed=0)
    assert type(baseline).metrics == type(result).metrics  # scored on the same terms
    check_row(score(result, baseline, test), type(result), None)

    # In one call, with a Validator: its accuracy on the reconstructions joins the row.
    validator = Validator(num_classes=10, image_shape=shape).eval()
    row = evaluate_attack(target, fitted, test, aux, validator=validator, seed=0)
    check_row(row, type(result), validator)
    assert row["n_test"] == len(test) and row["n_aux_baseline"] == len(aux)
    assert math.isfinite(row["validator_acc_originals"])
