"""A membership attack on MICO's published models: a ``prediction.csv`` for every model folder of a task.

A task built by ``scripts/mico.py build`` (:mod:`dpsnn.mico.build`, a folder holding ``build.json``) is
attacked the same way: its models are loaded with :func:`~dpsnn.mico.build.load_built_model`, its
dataset is :func:`~dpsnn.mico.build.built_dataset`, and ``len_training`` and ``len_challenge`` default
to those it was built with.

For each model folder of each scenario (``<task>/<scenario>/{train,dev,final}/model_k``) the model is
loaded with :func:`~dpsnn.mico.official.load_official_model`, its challenge points are rebuilt from its
seeds with :func:`~dpsnn.mico.official.rebuild_challenge`, the attack scores them, and the scores are
written as ``prediction.csv`` in challenge order. Three kinds of attack are accepted:

- **a registered membership attack that works on the model alone**: ``membership-threshold`` with
  ``shadow_models=0`` (any ``signal``: ``loss``, ``confidence``, ``entropy``, ``modified-entropy``) and
  ``chance``. Attacks that train shadow models on auxiliary data of their own (shadow-calibrated
  thresholds, ``membership-classifier``, ``lira``) are refused: MICO gives no such data, and its own
  shadows are the ``train`` models, which ``calibrated`` and ``classifier`` use;
- **classifier** (``classifier:model=logistic``, ``knn``, ``mlp`` or ``forest``): MindArmour's trained
  attack models (:func:`~dpsnn.attacks.membership.attack_model_search`: a cross-validated grid search) on
  ``[loss, logits]`` of the ``train`` models' challenge points, whose membership their solutions give. One
  fit on every ``train`` model scores the ``dev`` and ``final`` models; each ``train`` model is scored by
  a fit without it (leave-one-out), so its score on ``train/`` is honest. The forest is the slowest: each
  fit is a grid search over 6 settings × 3 folds of 100 trees;
- **calibrated** (``calibrated:mode=online`` or ``mode=offline``): LiRA (Carlini et al. 2022) with the
  ``train`` models of the same scenario as shadow models, the idea of the competition's winners. A
  ``train`` model discloses all its seeds, so its whole training set (``members`` and ``training``) is
  known: for any dataset index some ``train`` models trained on it (IN) and the others did not (OUT).
  The statistic is the logit-scaled confidence φ of :func:`dpsnn.attacks.lira.logit_confidence`; for
  each challenge point, Gaussians are fitted to φ of the IN and of the OUT shadows (means per point,
  one pooled standard deviation each for IN and OUT, as LiRA's ``global`` variance, since each point
  has few shadows) and the score is the log-likelihood ratio (``online``) or ``log Pr[Z < φ]`` under
  the OUT Gaussian (``offline``). A point with no IN shadow takes its OUT mean plus the mean IN − OUT
  shift over all points. A ``train`` model is never its own shadow (leave-one-out), so its predictions
  are honest and scoring them on ``train/`` estimates the attack. Every ``train`` model is run on
  every challenge point of the scenario: cheap for the Purchase-100 MLP, hours on a CPU for the
  CIFAR-10 CNN (100 models × 20,000 images); use a GPU there.

**The scores written.** ``prediction.csv`` holds values in ``[0, 1]``; a raw score ``s`` (any real) is
written as ``0.5 + atan(s) / π`` (:func:`to_unit_interval`). The official scorer ranks all the
challenge points of a scenario's models together, so the map must be one increasing function, the same
for every model: a per-model rank or min-max scaling would reorder points across models. ``atan``
rather than the logistic sigmoid because its tails are polynomial: in float64 the sigmoid reaches
exactly 1 near ``s = 37`` (likelihood ratios of LiRA exceed that), ties that the official ROC cannot
break, while ``0.5 + atan(s)/π`` stays below 1 until ``s`` ≈ 1e15. Differences within about 1e-15 of
``s = 0`` are lost either way.

Predictions go into the model folders (beside ``seed_challenge``; ``solution.csv`` is never touched),
or with ``output`` into a tree of the same layout (``<output>/<task>/<scenario>/<phase>/model_k``). A
``prediction.csv`` of an earlier run is replaced. Every model is scored before anything is written, so
a failure leaves no file. Example::

    from dpsnn.mico.attack import attack_challenge, mico_attack
    from dpsnn.mico.official import mico_purchase100_dataset

    dataset = mico_purchase100_dataset("data")          # data/purchase100/dataset_purchase
    written = attack_challenge("mico/purchase100", dataset, mico_attack("membership-threshold:signal=loss"))
    written = attack_challenge("mico/purchase100", dataset, mico_attack("calibrated"), output="attacked")

and from the command line ``python scripts/mico.py attack --challenge mico/cifar10 --attack
membership-threshold:signal=loss --data-dir data``, which also scores the ``train`` predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from dpsnn.attacks.base import Attack, MembershipScores, make_attack, query, registered_attacks
from dpsnn.attacks.lira import MIN_STD, logit_confidence
from dpsnn.attacks.membership import ATTACK_MODELS, Chance, ThresholdAttack, attack_model_search, loss_logit_features
from dpsnn.data import DEFAULT_DATA_DIR, SYSTEM_DATA_DIR
from dpsnn.defences.base import parse_spec_text
from dpsnn.errors import ConfigError, DataError
from dpsnn.mico.build import MANIFEST_FILE, is_built_task, load_built_model, read_manifest
from dpsnn.mico.challenge import LEN_CHALLENGE
from dpsnn.mico.folders import find_task
from dpsnn.mico.layout import (
    PHASES,
    PREDICTION_FILE,
    list_model_folders,
    model_index,
    model_weights_path,
    write_prediction,
)
from dpsnn.mico.official import (
    MicoDataset,
    load_official_model,
    mico_cifar10_dataset,
    mico_purchase100_dataset,
    rebuild_challenge,
    task_of,
)

__all__ = [
    "CALIBRATED",
    "CALIBRATED_MODES",
    "CLASSIFIER",
    "Calibrated",
    "ShadowClassifier",
    "MicoAttack",
    "ModelTarget",
    "attack_challenge",
    "attack_names",
    "challenge_targets",
    "load_task_dataset",
    "mico_attack",
    "predictions_folder",
    "to_unit_interval",
]

CALIBRATED = "calibrated"
CALIBRATED_MODES = ("online", "offline")
MIN_TRAIN_MODELS = 2  # a train model is never its own shadow, so one other at least, and a spread needs two


@dataclass(frozen=True)
class Calibrated:
    """LiRA with a scenario's ``train`` models as shadows (see the module's description)."""

    mode: str = "online"

    def __post_init__(self) -> None:
        if self.mode not in CALIBRATED_MODES:
            raise ConfigError(
                f"attack '{CALIBRATED}': mode must be one of {', '.join(CALIBRATED_MODES)}, got {self.mode!r}"
            )

    def spec(self) -> str:
        return f"{CALIBRATED}(mode={self.mode})"


CLASSIFIER = "classifier"


@dataclass(frozen=True)
class ShadowClassifier:
    """MindArmour's trained attack model on ``[loss, logits]``, fitted on the ``train`` models' challenge points."""

    model: str = "logistic"

    def __post_init__(self) -> None:
        if self.model not in ATTACK_MODELS:
            raise ConfigError(
                f"attack '{CLASSIFIER}': model must be one of {', '.join(ATTACK_MODELS)}, got {self.model!r}"
            )

    def spec(self) -> str:
        return f"{CLASSIFIER}(model={self.model})"


MicoAttack = Attack | Calibrated | ShadowClassifier
#: The attacks that learn from the scenario's ``train`` models (their solutions are public).
ON_TRAIN_MODELS = (Calibrated, ShadowClassifier)


def attack_names() -> list[str]:
    """The attacks :func:`mico_attack` accepts, by name."""
    return sorted([CALIBRATED, CLASSIFIER, "chance", "membership-threshold"])


def mico_attack(text: str | MicoAttack) -> MicoAttack:
    """``NAME[:key=value,...]`` as an attack on MICO's models alone; :class:`ConfigError` for any other.

    ``membership-threshold`` must keep ``shadow_models=0`` (MICO gives no auxiliary data to train
    shadows on); ``calibrated`` takes ``mode`` (``online`` or ``offline``).
    """
    if isinstance(text, ON_TRAIN_MODELS):
        return text
    if isinstance(text, Attack):
        attack = text
    else:
        name, params = parse_spec_text(str(text), "attack")
        if name == CALIBRATED:
            unknown = sorted(set(params) - {"mode"})
            if unknown:
                raise ConfigError(f"attack '{CALIBRATED}' has no parameter {unknown[0]!r}; it takes mode")
            return Calibrated(**params)
        if name == CLASSIFIER:
            unknown = sorted(set(params) - {"model"})
            if unknown:
                raise ConfigError(f"attack '{CLASSIFIER}' has no parameter {unknown[0]!r}; it takes model")
            return ShadowClassifier(**params)
        if name not in registered_attacks():
            raise ConfigError(f"unknown attack '{name}'; choose from {', '.join(attack_names())}")
        attack = make_attack(name, params)
    if isinstance(attack, ThresholdAttack) and attack.shadow_models == 0 or isinstance(attack, Chance):
        return attack
    if attack.result is not MembershipScores:
        raise ConfigError(f"'{attack.name}' is not a membership attack; choose from {', '.join(attack_names())}")
    raise ConfigError(
        f"'{attack.spec()}' trains shadow models on auxiliary data, which MICO does not give; use "
        f"membership-threshold (shadow_models=0), chance, or {CALIBRATED} or {CLASSIFIER} (the train models as shadows)"
    )


def to_unit_interval(raw: Tensor) -> Tensor:
    """``0.5 + atan(raw) / π`` in float64: one increasing map of the reals into ``[0, 1]`` for every model."""
    raw = torch.as_tensor(raw, dtype=torch.float64)
    if bool(raw.isnan().any()):
        raise DataError("the attack gave a NaN score")
    return (0.5 + torch.atan(raw) / math.pi).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------ data


def load_task_dataset(
    task: str, data_dir: str | Path = DEFAULT_DATA_DIR, purchase100: str | Path | None = None
) -> MicoDataset:
    """The whole dataset of a MICO task: CIFAR-10 under ``data_dir``; Purchase-100 from ``purchase100``.

    ``purchase100`` is the ``dataset_purchase`` text file or a folder holding it (default: ``data_dir``).
    """
    task = task_of(task)
    if task == "cifar10":
        return mico_cifar10_dataset(root=data_dir, system_dir=SYSTEM_DATA_DIR)
    if task == "purchase100":
        return mico_purchase100_dataset(purchase100 if purchase100 is not None else data_dir)
    raise ConfigError(f"MICO's {task} models cannot be loaded by dpsnn (RoBERTa fine-tunes need transformers)")


# --------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class ModelTarget:
    """One model folder to attack: its scenario, phase and folder."""

    scenario: str
    phase: str
    folder: Path


def _check_official_scenarios(task: Path, found: dict[str, Path]) -> None:
    try:
        task_name = task_of(task.name)  # a task folder named as MICO names them: its scenarios are that task's
    except ConfigError:
        task_name = task_of(next(iter(found)))
    for name, folder in found.items():
        if task_of(name) != task_name:
            raise DataError(f"{folder}: a {task_of(name)} scenario in a task folder of {task_name} scenarios")


def _check_built_scenarios(task: Path, found: dict[str, Path]) -> None:
    listed = read_manifest(task)["scenarios"]
    for name, folder in found.items():
        if name not in listed:
            raise DataError(f"{folder}: a scenario that {task / MANIFEST_FILE} does not list ({', '.join(listed)})")


def _scenario_folders(task: Path, scenarios: Sequence[str] | None) -> dict[str, Path]:
    found = {entry.name: entry for entry in sorted(task.iterdir()) if any((entry / p).is_dir() for p in PHASES)}
    if is_built_task(task):  # scenarios named <dataset>_<tag>, listed in the build manifest
        _check_built_scenarios(task, found)
    else:
        _check_official_scenarios(task, found)
    if scenarios is None:
        return found
    for name in scenarios:
        if name not in found:
            raise ConfigError(f"{task}: no scenario {name!r}; it has {', '.join(found)}")
    return {name: found[name] for name in found if name in scenarios}


def challenge_targets(
    challenge: str | Path, scenarios: Sequence[str] | None = None, phases: Sequence[str] | None = None
) -> tuple[Path, list[ModelTarget]]:
    """The task folder of ``challenge`` and its model folders to attack, each checked to hold a ``model.pt``."""
    task = find_task(challenge)
    chosen_phases = PHASES if phases is None else tuple(p for p in PHASES if p in phases)
    unknown = [p for p in phases or () if p not in PHASES]
    if unknown or not chosen_phases:
        raise ConfigError(f"unknown MICO phase {unknown[0] if unknown else ''!r}; the phases are {', '.join(PHASES)}")
    targets = []
    for name, folder in _scenario_folders(task, scenarios).items():
        for phase in chosen_phases:
            if (folder / phase).is_dir():
                targets.extend(ModelTarget(name, phase, model) for model in list_model_folders(folder, phase))
    if not targets:
        raise DataError(f"{task}: no model folders in phase {', '.join(chosen_phases)}")
    for target in targets:
        if not model_weights_path(target.folder).is_file():
            raise DataError(f"{model_weights_path(target.folder)}: no model file there")
    return task, targets


def predictions_folder(target: ModelTarget, task: Path, output: str | Path | None) -> Path:
    """Where ``target``'s ``prediction.csv`` goes: its own folder, or the same place under ``output``."""
    if output is None:
        return target.folder
    return Path(output) / task.name / target.scenario / target.phase / target.folder.name


# -------------------------------------------------------------------------------------- scoring


@dataclass
class _Rebuilt:
    target: ModelTarget
    model: nn.Module
    indices: Tensor
    inputs: Tensor
    labels: Tensor
    trained_on: Tensor | None  # a train model's whole training set, as dataset indices


def _logits(model: nn.Module, inputs: Tensor) -> Tensor:
    with torch.no_grad():
        return query(model, inputs, torch.zeros(len(inputs), dtype=torch.long)).logits


def _signal_scores(attack: Attack, rebuilt: _Rebuilt, seed: int) -> Tensor:
    fitted = attack.fit(rebuilt.model, None, seed=seed)
    with torch.no_grad():
        return fitted.run(query(rebuilt.model, rebuilt.inputs, rebuilt.labels, seed)).scores.double()


def _pooled_std(statistics: Tensor, mask: Tensor, mean: Tensor) -> Tensor:
    residuals = torch.where(mask, statistics - mean, torch.zeros_like(statistics))
    degrees = int(mask.sum()) - int((mask.sum(dim=0) > 0).sum())
    if degrees > 0:
        variance = residuals.pow(2).sum() / degrees
    else:
        variance = statistics[mask].var(unbiased=False) if bool(mask.any()) else torch.tensor(1.0)
    return variance.sqrt().clamp_min(MIN_STD)


def _calibrated_scores(mode: str, phi: Tensor, shadows: Tensor, inside: Tensor) -> Tensor:
    """LiRA scores of target statistics ``phi`` (M,) from shadow statistics ``(S, M)`` IN (``inside``) or OUT."""
    outside = ~inside
    count_in, count_out = inside.sum(dim=0), outside.sum(dim=0)
    mean_in = torch.where(inside, shadows, 0.0).sum(dim=0) / count_in.clamp_min(1)
    mean_out = torch.where(outside, shadows, 0.0).sum(dim=0) / count_out.clamp_min(1)
    both = (count_in > 0) & (count_out > 0)
    shift = (mean_in - mean_out)[both].mean() if bool(both.any()) else torch.tensor(0.0, dtype=shadows.dtype)
    overall_out = mean_out[count_out > 0].mean() if bool((count_out > 0).any()) else shadows.mean()
    mean_out = torch.where(count_out > 0, mean_out, torch.where(count_in > 0, mean_in - shift, overall_out))
    mean_in = torch.where(count_in > 0, mean_in, mean_out + shift)
    std_out = _pooled_std(shadows, outside, mean_out)
    if mode == "offline":
        return torch.special.log_ndtr((phi - mean_out) / std_out)
    std_in = _pooled_std(shadows, inside, mean_in)
    normal = torch.distributions.Normal
    return normal(mean_in, std_in).log_prob(phi) - normal(mean_out, std_out).log_prob(phi)


def _scenario_calibrated(mode: str, rebuilt: list[_Rebuilt], dataset_size: int, progress: bool) -> list[Tensor]:
    shadows = [item for item in rebuilt if item.trained_on is not None]
    if len(shadows) < MIN_TRAIN_MODELS:
        scenario = rebuilt[0].target.scenario
        raise DataError(
            f"{scenario}: {CALIBRATED} needs at least {MIN_TRAIN_MODELS} train models, found {len(shadows)}"
        )
    wanted = torch.unique(torch.cat([item.indices for item in rebuilt]))
    position = torch.full((dataset_size,), -1, dtype=torch.long)
    position[wanted] = torch.arange(len(wanted))
    points = [(item.inputs, item.labels, item.indices) for item in rebuilt]
    inputs = torch.cat([p[0] for p in points])
    labels = torch.cat([p[1] for p in points])
    indices = torch.cat([p[2] for p in points])
    first = torch.zeros(len(wanted), dtype=torch.long)
    first[position[indices].flip(0)] = torch.arange(len(indices) - 1, -1, -1)  # one row of inputs per index
    inputs, labels = inputs[first], labels[first]
    statistics = torch.stack(
        [
            logit_confidence(_logits(item.model, inputs), labels)
            for item in tqdm(
                shadows, desc="train models as shadows", unit="model", disable=None if progress else True, leave=False
            )
        ]
    )  # (S, U)
    membership = torch.zeros(len(shadows), dataset_size, dtype=torch.bool)
    for row, item in enumerate(shadows):
        membership[row, item.trained_on] = True
    membership = membership[:, wanted]
    scores = []
    for item in rebuilt:
        columns = position[item.indices]
        keep = torch.tensor([other is not item for other in shadows])  # never a model's own shadow
        phi = logit_confidence(_logits(item.model, item.inputs), item.labels)
        scores.append(_calibrated_scores(mode, phi, statistics[keep][:, columns], membership[keep][:, columns]))
    return scores


def _scenario_classifier(attack: ShadowClassifier, rebuilt: list[_Rebuilt], seed: int) -> list[Tensor]:
    """Each model's members' probability by an attack model fitted on the other ``train`` models' challenge points.

    One fit (scikit-learn's grid search, :func:`~dpsnn.attacks.membership.attack_model_search`) on every
    ``train`` model serves the ``dev`` and ``final`` models; a ``train`` model gets a fit without itself.
    """
    shadows = [item for item in rebuilt if item.trained_on is not None]
    if len(shadows) < MIN_TRAIN_MODELS:
        scenario = rebuilt[0].target.scenario
        raise DataError(
            f"{scenario}: {CLASSIFIER} needs at least {MIN_TRAIN_MODELS} train models, found {len(shadows)}"
        )
    features = [loss_logit_features(_logits(item.model, item.inputs), item.labels) for item in rebuilt]
    truth = {k: torch.isin(item.indices, item.trained_on).numpy() for k, item in enumerate(rebuilt) if item in shadows}
    fits: dict[int | None, Any] = {}

    def fitted(left_out: int | None) -> Any:
        if left_out not in fits:
            rows = [k for k in truth if k != left_out]
            search = attack_model_search(attack.model, seed)
            search.fit(np.concatenate([features[k] for k in rows]), np.concatenate([truth[k] for k in rows]))
            fits[left_out] = search
        return fits[left_out]

    return [
        torch.from_numpy(fitted(k if k in truth else None).predict_proba(features[k])[:, 1]).double()
        for k in range(len(rebuilt))
    ]


def attack_challenge(
    challenge: str | Path,
    dataset: MicoDataset,
    attack: str | MicoAttack,
    scenarios: Sequence[str] | None = None,
    phases: Sequence[str] | None = None,
    output: str | Path | None = None,
    len_training: int | None = None,
    len_challenge: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Attack every model folder of ``challenge`` and write their ``prediction.csv``; returns the files written.

    ``scenarios`` and ``phases`` restrict the folders (default: all). ``len_training`` and
    ``len_challenge`` are passed to :func:`~dpsnn.mico.official.rebuild_challenge` (by default the
    official sizes, or for a built task those of its ``build.json``). ``seed`` seeds ``chance`` (with each
    model's index). Every prediction is computed, and checked, before the first is written.
    """
    attack = mico_attack(attack)
    task, targets = challenge_targets(challenge, scenarios, phases)
    built = is_built_task(task)
    if built:
        settings = read_manifest(task)["settings"]
        models_of = settings["dataset"]
        len_training = settings["len_training"] if len_training is None else len_training
        len_challenge = settings["len_challenge"] if len_challenge is None else len_challenge
    else:
        models_of = task_of(targets[0].scenario)
        len_challenge = LEN_CHALLENGE if len_challenge is None else len_challenge
    if models_of != dataset.task:
        raise ConfigError(f"{task}: {models_of} models, but a {dataset.task} dataset was given")
    if isinstance(attack, ON_TRAIN_MODELS) and phases is not None and "train" not in phases:
        _, extra = challenge_targets(challenge, scenarios, ("train",))
        shadows_only = {target.folder for target in extra}
        targets = targets + extra
    else:
        shadows_only = set()
    rebuilt = []
    for target in tqdm(targets, desc="MICO models", unit="model", disable=None if progress else True):
        model = load_built_model(target.folder) if built else load_official_model(target.folder, target.scenario)
        split = rebuild_challenge(target.folder, dataset, len_training, len_challenge)
        trained_on = None
        if split.members is not None and split.training is not None:
            trained_on = torch.cat([split.members, split.training])
        rebuilt.append(_Rebuilt(target, model, split.indices, split.inputs, split.labels, trained_on))
    if isinstance(attack, ON_TRAIN_MODELS):
        raw: list[Tensor | None] = [None] * len(rebuilt)
        for name in dict.fromkeys(item.target.scenario for item in rebuilt):
            positions = [k for k, item in enumerate(rebuilt) if item.target.scenario == name]
            group = [rebuilt[k] for k in positions]
            if isinstance(attack, Calibrated):
                scores = _scenario_calibrated(attack.mode, group, len(dataset), progress)
            else:
                scores = _scenario_classifier(attack, group, seed)
            for k, score in zip(positions, scores, strict=True):  # back in the order of rebuilt
                raw[k] = score
    else:
        raw = [_signal_scores(attack, item, seed + model_index(item.target.folder)) for item in rebuilt]
    predictions = [
        (predictions_folder(item.target, task, output), to_unit_interval(scores))
        for item, scores in zip(rebuilt, raw, strict=True)
        if item.target.folder not in shadows_only
    ]
    written = []
    for folder, scores in predictions:
        folder.mkdir(parents=True, exist_ok=True)
        write_prediction(folder, scores, count=2 * len_challenge)
        written.append(folder / PREDICTION_FILE)
    return written
