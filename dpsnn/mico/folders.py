"""Score a MICO tree of solutions and predictions as the official scoring program does, with bootstrap intervals.

The official program (``src/mico-competition/scoring/score.py`` of ``microsoft/MICO``) reads
``ref/<task>/<scenario>/<phase>/model_k/solution.csv`` against
``res/<task>/<scenario>/<phase>/model_k/prediction.csv``, concatenates each scenario's models into
one ROC (:func:`dpsnn.mico.scoring.score`) and writes ``scores.txt``. Here:

- ``solutions`` and ``predictions`` are each a task folder (``ref/cifar10``) or a folder holding
  exactly one (``ref``); they may be the same tree, as when an attacker scores itself on the
  ``train`` models, whose ``solution.csv`` lies beside its ``prediction.csv``;
- the phases scored are those asked for, or else every phase in which some model of the solutions
  has a ``solution.csv``; every scenario must then have solutions in each of them, and a
  scenario's score concatenates the models of all of them;
- within a phase, a model with a solution but no prediction, or a prediction but no solution, is a
  :class:`~dpsnn.errors.DataError` naming the model folder, and so is a prediction of the wrong
  length, NaN or outside ``[0, 1]`` (the readers of :mod:`dpsnn.mico.layout` and
  :func:`~dpsnn.mico.scoring.score_models` check each model); model folders holding neither file
  are skipped;
- each official score comes with a bootstrap standard error and 95% percentile interval over the
  challenge points, resampled with replacement and stratified by membership as
  :func:`dpsnn.metrics.membership_metrics` resamples (members and non-members apart). A scenario's
  resamples are drawn from the seed and its name, so scoring more scenarios leaves its interval
  unchanged; the average over scenarios (the ranking figure, for ``TPR_FPR_1000``) is bootstrapped
  from the scenarios' resamples, draw by draw.

Each resample is scored on scikit-learn's ``roc_curve`` exactly as the official scorer scores it
(``drop_intermediate=True``, strict FPR levels), but without sorting: the points are grouped once
by distinct prediction, and a resample's ROC is the running count of its members and non-members
over the groups it draws from. That is the same arithmetic on the same integer counts as
``roc_curve`` on the resampled arrays, so the scores are equal to the last bit; it is checked on
the full sample each time, and should it ever differ (another scikit-learn), every resample is
scored with :func:`~dpsnn.mico.scoring.score` instead (``use_scorer=True`` forces that). On 40,000
points (200 models of 200) a resample costs 1 to 4 ms this way (less the more predictions are tied)
and 20 to 30 ms through ``score``: 1,000 resamples of a task's three scenarios take seconds.

Example::

    from dpsnn.mico.folders import score_folders, write_scores_txt

    result = score_folders("mico/cifar10", "mico/cifar10", phases=["train"], n_bootstrap=200, seed=0)
    for scenario in result.scenarios:
        tpr = scenario.estimates["TPR_FPR_1000"]
        print(scenario.scenario, scenario.models, f"{tpr.value:.4f} ± {tpr.se:.4f}")
    print("ranking figure", result.ranking.value)
    write_scores_txt(result, "results/mico")              # results/mico/scores.txt, the official format
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from dpsnn.errors import ConfigError, DataError
from dpsnn.files import atomic_path
from dpsnn.metrics import N_BOOTSTRAP, stratified_draws
from dpsnn.mico.layout import (
    PHASES,
    PREDICTION_FILE,
    SOLUTION_FILE,
    list_model_folders,
    model_index,
    read_predictions,
    read_solution,
)
from dpsnn.mico.scoring import (
    FPR_LEVELS,
    RANKING_KEY,
    SCORE_KEYS,
    curve_scores,
    ranking_figure,
    score,
    score_key,
    score_models,
)

__all__ = [
    "AVERAGE",
    "ROW_COLUMNS",
    "SCORES_FILE",
    "TXT_KEYS",
    "Estimate",
    "FolderScores",
    "ScenarioScores",
    "bootstrap_scores",
    "find_task",
    "read_pairs",
    "score_folders",
    "score_rows",
    "scores_text",
    "write_scores_txt",
]

SCORES_FILE = "scores.txt"
#: The order of a scenario's lines in ``scores.txt``: the official program writes AUC, MIA and accuracy
#: (in the order of a Python set, which varies from run to run; fixed here), then the TPR levels.
TXT_KEYS = ("AUC", "MIA", "accuracy", *(score_key(level) for level in FPR_LEVELS))
#: The name of the row of :func:`score_rows` that averages the scenarios.
AVERAGE = "average"
INTERVAL = ("", "_se", "_ci_low", "_ci_high")
ROW_COLUMNS = (
    "task",
    "scenario",
    "phases",
    "models",
    "points",
    "n_bootstrap",
    "seed",
    *(f"{key}{suffix}" for key in SCORE_KEYS for suffix in INTERVAL),
)


# ----------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Estimate:
    """A score, the standard deviation of its bootstrap resamples, and their 2.5 and 97.5 percentiles."""

    value: float
    se: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ScenarioScores:
    """The official scores of one scenario (:data:`~dpsnn.mico.scoring.SCORE_KEYS`), each an :class:`Estimate`."""

    scenario: str
    phases: tuple[str, ...]
    models: int
    points: int
    estimates: Mapping[str, Estimate]

    @property
    def scores(self) -> dict[str, float]:
        """The scores alone, as :func:`~dpsnn.mico.scoring.score` returns them."""
        return {key: estimate.value for key, estimate in self.estimates.items()}


@dataclass(frozen=True)
class FolderScores:
    """Every scenario of a task, in name order (the official numbering), and their average."""

    task: str
    phases: tuple[str, ...]
    scenarios: tuple[ScenarioScores, ...]
    average: Mapping[str, Estimate]
    n_bootstrap: int
    seed: int

    @property
    def ranking(self) -> Estimate:
        """The ranking figure: the mean ``TPR_FPR_1000`` over the scenarios, with its bootstrap interval."""
        return self.average[RANKING_KEY]

    def scores(self) -> dict[str, dict[str, float]]:
        """The scores by scenario, as :func:`~dpsnn.mico.scoring.ranking_figure` takes them."""
        return {scenario.scenario: scenario.scores for scenario in self.scenarios}


# ----------------------------------------------------------------------------------------- folders


def _subfolders(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _is_scenario(folder: Path) -> bool:
    return any((folder / phase).is_dir() for phase in PHASES)


def _scenarios(task: Path) -> dict[str, Path]:
    return {entry.name: entry for entry in _subfolders(task) if _is_scenario(entry)}


def find_task(root: str | Path) -> Path:
    """The task folder of ``root``: ``root`` itself when it holds scenario folders, else its only task folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    if _scenarios(root):
        return root
    tasks = [entry for entry in _subfolders(root) if _scenarios(entry)]
    if not tasks:
        raise DataError(f"{root}: no MICO scenario folders (<task>/<scenario>/{{{','.join(PHASES)}}}/model_<k>)")
    if len(tasks) > 1:
        raise DataError(f"{root}: {len(tasks)} task folders ({', '.join(t.name for t in tasks)}); give one of them")
    return tasks[0]


def _check_phases(phases: Sequence[str]) -> tuple[str, ...]:
    phases = (phases,) if isinstance(phases, str) else tuple(phases)
    unknown = [phase for phase in phases if phase not in PHASES]
    if unknown:
        raise ConfigError(f"unknown MICO phase {unknown[0]!r}; the phases are {', '.join(PHASES)}")
    if not phases:
        raise ConfigError("no phases to score")
    return tuple(phase for phase in PHASES if phase in phases)


def _model_files(phase_folder: Path, file_name: str) -> dict[str, Path]:
    """The model folders of a phase folder that hold ``file_name``, by name (none when the folder is absent)."""
    if not phase_folder.is_dir():
        return {}
    folders = list_model_folders(phase_folder.parent, phase_folder.name)
    return {folder.name: folder for folder in folders if (folder / file_name).is_file()}


def _default_phases(task: Path, scenarios: Mapping[str, Path]) -> tuple[str, ...]:
    phases = tuple(
        phase for phase in PHASES if any(_model_files(folder / phase, SOLUTION_FILE) for folder in scenarios.values())
    )
    if not phases:
        raise DataError(f"{task}: no model folder holds a {SOLUTION_FILE}")
    return phases


def _unpaired(present: Path, absent: Path, has: str, lacks: str) -> DataError:
    if present.resolve() == absent.resolve():
        return DataError(f"{present}: {has} but no {lacks}")
    return DataError(f"{absent}: no {lacks} for the {has} in {present}")


def _paired_models(solutions: Path, predictions: Path) -> list[tuple[Path, Path]]:
    """The (solution folder, prediction folder) of each model of one phase, in model order."""
    solved = _model_files(solutions, SOLUTION_FILE)
    predicted = _model_files(predictions, PREDICTION_FILE)
    pairs = []
    for name in sorted(solved.keys() | predicted.keys(), key=model_index):
        if name not in predicted:
            raise _unpaired(solved[name], predictions / name, SOLUTION_FILE, PREDICTION_FILE)
        if name not in solved:
            raise _unpaired(predicted[name], solutions / name, PREDICTION_FILE, SOLUTION_FILE)
        pairs.append((solved[name], predicted[name]))
    return pairs


def read_pairs(
    solutions: str | Path, predictions: str | Path, phases: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (solution, prediction) arrays of each model of one scenario's ``phases``, keyed by prediction folder.

    ``solutions`` and ``predictions`` are the scenario's folders in the two trees (possibly the same
    folder). Every phase must have solutions; the predictions must pair with them model by model.
    """
    solutions, predictions = Path(solutions), Path(predictions)
    pairs = {}
    for phase in _check_phases(phases):
        if not _model_files(solutions / phase, SOLUTION_FILE):
            raise DataError(f"{solutions / phase}: no model folder holds a {SOLUTION_FILE}")
        for solution_folder, prediction_folder in _paired_models(solutions / phase, predictions / phase):
            solution = read_solution(solution_folder)
            prediction = read_predictions(prediction_folder, count=len(solution))
            pairs[str(prediction_folder)] = (solution.numpy().astype(np.float64), prediction.numpy())
    return pairs


def _check_unscored(predictions: Path, scenarios: Mapping[str, Path], phases: Sequence[str]) -> None:
    """A DataError for a scenario that has predictions in ``phases`` but is not among the solutions' scenarios."""
    for name, folder in _scenarios(predictions).items():
        if name not in scenarios and any(_model_files(folder / phase, PREDICTION_FILE) for phase in phases):
            raise DataError(f"{folder}: predictions for a scenario that the solutions do not have")


# --------------------------------------------------------------------------------------- bootstrap


def _check_bootstrap(n_bootstrap: int) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 2:
        raise ConfigError(f"the bootstrap needs at least 2 resamples, got {n_bootstrap!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"the bootstrap seed must be a non-negative integer, got {seed!r}")


def _curve(true_positives: np.ndarray, false_positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``roc_curve``'s (fpr, tpr) from its cumulative counts at each distinct threshold, highest first."""
    if len(false_positives) > 2:  # drop_intermediate: keep the ends and every point where a step changes
        changes = np.logical_or(np.diff(false_positives, 2), np.diff(true_positives, 2))
        keep = np.r_[True, changes, True]
        true_positives, false_positives = true_positives[keep], false_positives[keep]
    true_positives, false_positives = np.r_[0.0, true_positives], np.r_[0.0, false_positives]
    return false_positives / false_positives[-1], true_positives / true_positives[-1]


class _GroupedPoints:
    """Challenge points grouped by distinct prediction, highest first: a resample's ROC is counted, not sorted."""

    def __init__(self, solutions: np.ndarray, predictions: np.ndarray) -> None:
        distinct, inverse = np.unique(predictions, return_inverse=True)
        self.groups = len(distinct)
        self.group = self.groups - 1 - inverse.reshape(-1)  # group 0 holds the highest prediction
        self.solutions = solutions

    def scores(self, members: np.ndarray, non_members: np.ndarray) -> dict[str, float]:
        true_positives = np.bincount(self.group[members], minlength=self.groups)
        false_positives = np.bincount(self.group[non_members], minlength=self.groups)
        drawn = (true_positives + false_positives) > 0  # roc_curve has a threshold only where a point lies
        curve = _curve(
            np.cumsum(true_positives[drawn]).astype(np.float64), np.cumsum(false_positives[drawn]).astype(np.float64)
        )
        return curve_scores(*curve)

    def whole(self) -> dict[str, float]:
        """The scores of the points themselves, each drawn once."""
        return self.scores(np.flatnonzero(self.solutions == 1), np.flatnonzero(self.solutions == 0))


def bootstrap_scores(
    solutions: Any,
    predictions: Any,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int | Sequence[int] = 0,
    use_scorer: bool = False,
) -> dict[str, np.ndarray]:
    """The official scores of ``n_bootstrap`` resamples of the challenge points, by key (one array each).

    Members and non-members are resampled apart, with replacement, each to its own number, from
    ``np.random.default_rng(seed)``. Each resample is scored as :func:`~dpsnn.mico.scoring.score`
    scores it: by counting over groups of equal predictions, or, with ``use_scorer``, by calling it.
    """
    _check_bootstrap(n_bootstrap)
    solutions = np.asarray(solutions, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    point = score(solutions, predictions)  # checks the points; the grouped scores must equal these
    grouped = None if use_scorer else _GroupedPoints(solutions, predictions)
    if grouped is not None and grouped.whole() != point:
        grouped = None  # a scikit-learn whose ROC is built otherwise: score each resample with it
    samples = {key: np.empty(n_bootstrap) for key in SCORE_KEYS}
    draws = stratified_draws(solutions == 1, n_bootstrap, np.random.default_rng(seed))
    for draw, (members, non_members) in enumerate(draws):
        if grouped is not None:
            scores = grouped.scores(members, non_members)
        else:
            chosen = np.concatenate([members, non_members])
            scores = score(solutions[chosen], predictions[chosen])
        for key in SCORE_KEYS:
            samples[key][draw] = scores[key]
    return samples


def _estimate(value: float, samples: np.ndarray) -> Estimate:
    low, high = np.percentile(samples, [2.5, 97.5])
    return Estimate(float(value), float(samples.std(ddof=1)), float(low), float(high))


def _scenario_seed(seed: int, scenario: str) -> list[int]:
    """The resamples' seed of one scenario: the seed and a checksum of its name."""
    return [seed, zlib.crc32(scenario.encode("utf-8"))]


# ----------------------------------------------------------------------------------------- scoring


def _score_scenario(
    name: str,
    solutions: Path,
    predictions: Path,
    phases: tuple[str, ...],
    n_bootstrap: int,
    seed: int,
    use_scorer: bool,
) -> tuple[ScenarioScores, dict[str, np.ndarray]]:
    pairs = read_pairs(solutions, predictions, phases)
    all_solutions = np.concatenate([solution for solution, _ in pairs.values()])
    all_predictions = np.concatenate([prediction for _, prediction in pairs.values()])
    members = int(all_solutions.sum())
    if members in (0, len(all_solutions)):
        kind = "members" if members else "non-members"
        raise DataError(f"{solutions}: all {len(all_solutions)} challenge points are {kind}; scoring needs both")
    point = score_models(pairs, expected_count=None)
    samples = bootstrap_scores(all_solutions, all_predictions, n_bootstrap, _scenario_seed(seed, name), use_scorer)
    estimates = MappingProxyType({key: _estimate(point[key], samples[key]) for key in SCORE_KEYS})
    return ScenarioScores(name, phases, len(pairs), len(all_solutions), estimates), samples


def _average(scenarios: Sequence[ScenarioScores], samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Estimate]:
    """The mean of each score over the scenarios, bootstrapped draw by draw."""
    average = {}
    for key in SCORE_KEYS:
        value = float(np.mean([scenario.estimates[key].value for scenario in scenarios]))
        average[key] = _estimate(value, np.mean([drawn[key] for drawn in samples], axis=0))
    ranking = ranking_figure({scenario.scenario: scenario.scores for scenario in scenarios})  # the official figure
    average[RANKING_KEY] = replace(average[RANKING_KEY], value=ranking)
    return average


def score_folders(
    solutions: str | Path,
    predictions: str | Path,
    phases: Sequence[str] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    use_scorer: bool = False,
) -> FolderScores:
    """Score every scenario of a task's predictions against its solutions, with bootstrap intervals.

    ``solutions`` and ``predictions``: task folders, or folders holding one task each (the same tree
    when solutions and predictions lie side by side). ``phases``: the phases to score (default: every
    phase in which some model has a ``solution.csv``). See the module's description for the checks.
    """
    _check_bootstrap(n_bootstrap)
    _check_seed(seed)
    solution_task, prediction_task = find_task(solutions), find_task(predictions)
    scenarios = _scenarios(solution_task)
    chosen = _default_phases(solution_task, scenarios) if phases is None else _check_phases(phases)
    _check_unscored(prediction_task, scenarios, chosen)
    scored = [
        _score_scenario(name, folder, prediction_task / name, chosen, n_bootstrap, seed, use_scorer)
        for name, folder in scenarios.items()
    ]
    results = tuple(result for result, _ in scored)
    average = _average(results, [samples for _, samples in scored])
    return FolderScores(solution_task.name, chosen, results, MappingProxyType(average), n_bootstrap, seed)


# ----------------------------------------------------------------------------------------- writing


def scores_text(result: FolderScores) -> str:
    """``scores.txt`` as the official program writes it: ``scenario<i>_<key>: <value>`` lines, then the average.

    Scenarios are numbered from 1 in name order; each has its :data:`TXT_KEYS` lines; the last line,
    ``average_TPR_FPR_1000: <value>``, has no line end. Values are written as Python writes a float.
    """
    lines = [
        f"scenario{number}_{key}: {scenario.estimates[key].value}"
        for number, scenario in enumerate(result.scenarios, start=1)
        for key in TXT_KEYS
    ]
    return "\n".join([*lines, f"average_{RANKING_KEY}: {result.ranking.value}"])


def write_scores_txt(result: FolderScores, folder: str | Path) -> Path:
    """Write :func:`scores_text` to ``folder/scores.txt`` (whole or not at all) and return its path."""
    path = Path(folder) / SCORES_FILE
    with atomic_path(path) as partial:
        partial.write_text(scores_text(result), encoding="ascii")
    return path


def _row(result: FolderScores, scenario: str, models: int, points: int, estimates: Mapping[str, Estimate]) -> dict:
    row: dict[str, Any] = {
        "task": result.task,
        "scenario": scenario,
        "phases": " ".join(result.phases),
        "models": models,
        "points": points,
        "n_bootstrap": result.n_bootstrap,
        "seed": result.seed,
    }
    for key in SCORE_KEYS:
        row |= dict(zip((f"{key}{suffix}" for suffix in INTERVAL), astuple(estimates[key]), strict=True))
    return row


def score_rows(result: FolderScores) -> list[dict[str, Any]]:
    """One table row (:data:`ROW_COLUMNS`) per scenario, then the :data:`AVERAGE` row over them."""
    rows = [_row(result, s.scenario, s.models, s.points, s.estimates) for s in result.scenarios]
    models = sum(s.models for s in result.scenarios)
    points = sum(s.points for s in result.scenarios)
    return [*rows, _row(result, AVERAGE, models, points, result.average)]
