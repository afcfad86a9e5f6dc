"""Score a defended model, and an attack's result against the truth beside its baseline.

Every number comes with its standard error: over images for per-image metrics, over
batches of :data:`~dpsnn.metrics.DCOR_BATCH_SIZE` for distance correlation. Example::

    from dpsnn.evaluation import evaluate_attack, evaluate_classifier

    row = evaluate_classifier(target, splits.test)          # accuracy, dcor (+ _se)
    row = evaluate_attack(target, attacker, splits.test, splits.aux, validator=validator)
    row["gap_ssim"], row["gap_ssim_se"]                      # attack minus label-only baseline
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from dpsnn.attacks.base import Observation, attack_from, observe
from dpsnn.data import Split
from dpsnn.metrics import mean_and_se, per_batch_dcor, per_image_correct, summarise
from dpsnn.models import SplitNN, Validator


def evaluate_classifier(model: SplitNN, test: Split, seed: int = 0) -> dict[str, float]:
    """Test accuracy and dCor(x, what the server sees), each with its standard error."""
    test.require("test")
    observation = observe(model, test.images, seed)
    correct = (observation.predicted == test.labels).float()
    row = {"n_test": len(test)}
    row["accuracy"], row["accuracy_se"] = mean_and_se(correct)
    row["dcor"], row["dcor_se"] = mean_and_se(per_batch_dcor(test.images, observation.seen))
    return row


def baseline_of(result: Any, target: SplitNN, aux: Split, observation: Observation, seed: int = 0) -> Any:
    """The result of the baseline attack ``result``'s type names, on the same observation."""
    return attack_from(type(result).baseline).fit(target, aux, seed=seed).run(observation)


def score(result: Any, baseline: Any, test: Split, validator: Validator | None = None) -> dict[str, float]:
    """``attack_<m>``, ``baseline_<m>`` and their paired gap ``gap_<m>``, each with a ``_se`` twin."""
    attack = result.measure(test, validator)
    reference = baseline.measure(test, validator)
    row: dict[str, float] = {}
    row |= summarise("attack_", attack)
    row |= summarise("baseline_", reference)
    row |= summarise("gap_", {name: attack[name] - reference[name] for name in attack})
    return row


def reconstruct(target: SplitNN, attacker: Any, images: Tensor, baseline: Any, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Attack reconstructions and label-only guesses of ``images``, from one recording of what the server sees."""
    observation = observe(target, images, seed)
    return attacker.run(observation).images, baseline.run(observation).images


def evaluate_attack(
    target: SplitNN,
    attacker: Any,
    test: Split,
    aux: Split,
    validator: Validator | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Run a fitted attack on what the server sees of ``test`` and score it beside its baseline.

    The baseline (for reconstructions, the mean ``aux`` image of the class the server
    predicts) runs on the same recording. Keys are ``attack_<m>``, ``baseline_<m>`` and
    ``gap_<m>`` (attack minus baseline, paired per image or batch) for every metric the
    result type names (for reconstructions: mse, psnr, ssim, dcor and, with a
    ``validator``, validator_acc); each has a ``_se`` twin.
    """
    test.require("test")
    observation = observe(target, test.images, seed)
    result = attacker.run(observation)
    row: dict[str, Any] = {"n_test": len(test), "n_aux_baseline": len(aux)}
    row |= score(result, baseline_of(result, target, aux, observation, seed), test, validator)
    if validator is not None:
        row["validator_acc_originals"], row["validator_acc_originals_se"] = mean_and_se(
            per_image_correct(validator, test.images, test.labels)
        )
    return row


def chance_membership_metrics(fpr_levels: tuple[float, ...] | None = None) -> dict[str, float]:
    """What scores without information give, in expectation: AUC 0.5, TPR = FPR at each level, advantage 0."""
    from dpsnn.metrics import FPR_LEVELS, fpr_key

    levels = FPR_LEVELS if fpr_levels is None else fpr_levels
    return {"auc": 0.5, **{fpr_key(level): float(level) for level in levels}, "advantage": 0.0}


def evaluate_membership(
    target: SplitNN,
    fitted: Any,
    candidates: Split,
    members: Tensor,
    seed: int = 0,
) -> dict[str, float]:
    """Query ``target`` on ``candidates``, run a fitted membership attack and score it beside chance.

    ``members`` (bool, one per candidate) is the truth. Keys, for each metric of
    :func:`dpsnn.metrics.membership_metrics` (auc, tpr_at_fpr_0_001, tpr_at_fpr_0_01,
    tpr_at_fpr_0_1, advantage): ``attack_<m>`` with ``_se`` (bootstrap) and
    ``_ci_low``/``_ci_high`` (95% percentile bootstrap); ``baseline_<m>``, chance's
    expected value (exact, so ``_se`` 0); ``gap_<m>`` = attack − chance, with the attack's
    ``_se`` and interval shifted by the baseline. Also ``n_candidates`` and ``n_members``.
    """
    from dpsnn.attacks.base import query
    from dpsnn.errors import DataError
    from dpsnn.metrics import membership_metrics

    candidates.require("candidates")
    if len(members) != len(candidates):
        raise DataError(f"{len(members)} membership labels for {len(candidates)} candidates")
    result = fitted.run(query(target, candidates.images, candidates.labels, seed))
    measured = membership_metrics(result.scores, members, seed=seed)
    row: dict[str, Any] = {"n_candidates": len(candidates), "n_members": int(members.sum())}
    for name, chance in chance_membership_metrics().items():
        row[f"attack_{name}"] = measured[name]
        for suffix in ("_se", "_ci_low", "_ci_high"):
            row[f"attack_{name}{suffix}"] = measured[f"{name}{suffix}"]
        row[f"baseline_{name}"], row[f"baseline_{name}_se"] = chance, 0.0
        row[f"gap_{name}"], row[f"gap_{name}_se"] = measured[name] - chance, measured[f"{name}_se"]
        row[f"gap_{name}_ci_low"] = measured[f"{name}_ci_low"] - chance
        row[f"gap_{name}_ci_high"] = measured[f"{name}_ci_high"] - chance
    return row
