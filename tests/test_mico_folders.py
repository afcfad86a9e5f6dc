"""MICO trees scored as the official program scores them: pairing, phases, bootstrap intervals, scores.txt.

The trees are small (a few models of 200 challenge points per scenario) and written with
:mod:`dpsnn.mico.layout`'s writers; predictions are rounded to two decimals, so that tied scores
exercise scikit-learn's point dropping in the resamples too.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from dpsnn.errors import ConfigError, DataError
from dpsnn.mico.folders import (
    AVERAGE,
    ROW_COLUMNS,
    SCORES_FILE,
    TXT_KEYS,
    Estimate,
    _GroupedPoints,
    _scenario_seed,
    bootstrap_scores,
    find_task,
    read_pairs,
    score_folders,
    score_rows,
    scores_text,
    write_scores_txt,
)
from dpsnn.mico.layout import PHASE_MODELS, PREDICTION_FILE, SOLUTION_FILE, write_prediction, write_solution
from dpsnn.mico.scoring import SCORE_KEYS, ranking_figure, score

TASK = "cifar10"
POINTS = 200
MODELS = 3
#: scenario -> how far members' scores lie above non-members' (0: random scores)
SHIFTS = {"cifar10_hi": 0.15, "cifar10_inf": 0.3, "cifar10_lo": 0.0}
N_BOOTSTRAP = 40


def model_arrays(rng: np.random.Generator, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """One model's solution (half members, shuffled) and predictions in [0, 1], two decimals."""
    solution = rng.permutation(np.r_[np.ones(POINTS // 2), np.zeros(POINTS // 2)]).astype(np.int64)
    prediction = np.clip(rng.normal(0.5 + shift * (solution - 0.5), 0.2), 0, 1).round(2)
    return solution, prediction


def write_tree(
    solutions: Path,
    predictions: Path,
    phases: dict[str, tuple[str, ...]] | None = None,
    shifts: dict[str, float] = SHIFTS,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``solutions/TASK/...`` and ``predictions/TASK/...`` (possibly one tree); return each scenario's arrays.

    ``phases`` maps a phase to what it gets: ``("solution", "prediction")`` by default for ``train``.
    The arrays returned concatenate the models of the phases that have both files.
    """
    phases = phases or {"train": ("solution", "prediction")}
    rng = np.random.default_rng(seed)
    scored = {}
    for scenario, shift in shifts.items():
        solved, predicted = [], []
        for phase, files in phases.items():
            for index in PHASE_MODELS[phase][:MODELS]:
                solution, prediction = model_arrays(rng, shift)
                if "solution" in files:
                    write_solution(solutions / TASK / scenario / phase / f"model_{index}", solution)
                if "prediction" in files:
                    write_prediction(predictions / TASK / scenario / phase / f"model_{index}", prediction, POINTS)
                if files == ("solution", "prediction"):
                    solved.append(solution)
                    predicted.append(prediction)
        scored[scenario] = (np.concatenate(solved), np.concatenate(predicted))
    return scored


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """One tree holding train solutions beside their predictions, and what each scenario should score."""
    root = tmp_path_factory.mktemp("mico")
    return root, write_tree(root, root)


@pytest.fixture(scope="module")
def result(tree):
    root, _ = tree
    return score_folders(root, root, n_bootstrap=N_BOOTSTRAP, seed=0)


def test_each_scenario_scores_as_the_scorer_scores_its_concatenated_models(tree, result):
    _, arrays = tree
    assert result.task == TASK and result.phases == ("train",)
    assert [s.scenario for s in result.scenarios] == sorted(SHIFTS)
    for scenario in result.scenarios:
        assert (scenario.models, scenario.points, scenario.phases) == (MODELS, MODELS * POINTS, ("train",))
        assert scenario.scores == score(*arrays[scenario.scenario])
        assert list(scenario.estimates) == list(SCORE_KEYS)
    assert result.ranking.value == ranking_figure({name: score(*pair) for name, pair in arrays.items()})
    by_name = result.scores()
    assert by_name["cifar10_inf"]["AUC"] > by_name["cifar10_hi"]["AUC"] > by_name["cifar10_lo"]["AUC"]
    assert abs(by_name["cifar10_lo"]["AUC"] - 0.5) < 0.1


def test_a_task_folder_or_a_folder_holding_one(tree, tmp_path):
    root, _ = tree
    assert find_task(root) == root / TASK == find_task(root / TASK)
    assert score_folders(root / TASK, root, n_bootstrap=N_BOOTSTRAP) == score_folders(
        root, root / TASK, n_bootstrap=N_BOOTSTRAP
    )
    (tmp_path / "a" / "s" / "dev").mkdir(parents=True)
    (tmp_path / "b" / "s" / "final").mkdir(parents=True)
    with pytest.raises(DataError, match=r"2 task folders \(a, b\); give one of them"):
        find_task(tmp_path)
    with pytest.raises(DataError, match="no MICO scenario folders"):
        find_task(tmp_path / "a" / "s")
    with pytest.raises(DataError, match="no such folder"):
        find_task(tmp_path / "missing")


def test_apart_trees_score_the_phase_of_the_solutions(tmp_path):
    """As the official program runs: ref/ holds dev solutions only, res/ the dev and final predictions."""
    ref, res = tmp_path / "ref", tmp_path / "res"
    arrays = write_tree(ref, res, {"dev": ("solution", "prediction"), "final": ("prediction",)})
    result = score_folders(ref, res, n_bootstrap=N_BOOTSTRAP)
    assert result.phases == ("dev",)
    assert result.scores() == {name: score(*pair) for name, pair in arrays.items()}
    with pytest.raises(DataError, match=f"{ref / TASK / 'cifar10_hi' / 'final'}: no model folder holds a solution"):
        score_folders(ref, res, phases=["final"], n_bootstrap=N_BOOTSTRAP)


def test_the_phases_scored_are_concatenated_and_can_be_chosen(tmp_path):
    both = {"train": ("solution", "prediction"), "dev": ("solution", "prediction"), "final": ("prediction",)}
    arrays = write_tree(tmp_path, tmp_path, both)
    result = score_folders(tmp_path, tmp_path, n_bootstrap=N_BOOTSTRAP)
    assert result.phases == ("train", "dev")
    assert result.scores() == {name: score(*pair) for name, pair in arrays.items()}
    assert {s.models for s in result.scenarios} == {2 * MODELS}
    dev = score_folders(tmp_path, tmp_path, phases=["dev", "dev"], n_bootstrap=N_BOOTSTRAP)
    assert dev.phases == ("dev",) and {s.points for s in dev.scenarios} == {MODELS * POINTS}
    pairs = read_pairs(tmp_path / TASK / "cifar10_hi", tmp_path / TASK / "cifar10_hi", ["dev"])
    assert [Path(name).name for name in pairs] == ["model_100", "model_101", "model_102"]
    with pytest.raises(ConfigError, match="unknown MICO phase 'test'"):
        score_folders(tmp_path, tmp_path, phases=["test"])


def test_bootstrap_intervals_bracket_the_scores_and_follow_the_seed(tree, result):
    root, _ = tree
    for estimates in [s.estimates for s in result.scenarios] + [result.average]:
        for key in SCORE_KEYS:
            estimate = estimates[key]
            assert estimate.ci_low <= estimate.value <= estimate.ci_high, key
            assert math.isfinite(estimate.se) and estimate.se >= 0
            if key not in ("TPR_FPR_10", "TPR_FPR_100"):  # the lowest levels can be 0 in every resample
                assert estimate.se > 0, key
    again = score_folders(root, root, n_bootstrap=N_BOOTSTRAP, seed=0)
    assert again == result
    other = score_folders(root, root, n_bootstrap=N_BOOTSTRAP, seed=1)
    assert other.scores() == result.scores() and other.ranking.se != result.ranking.se


def test_the_average_is_bootstrapped_draw_by_draw_from_the_scenarios(tree, result):
    _, arrays = tree
    drawn = {name: bootstrap_scores(*pair, N_BOOTSTRAP, seed=_scenario_seed(0, name)) for name, pair in arrays.items()}
    for key in SCORE_KEYS:
        for scenario in result.scenarios:
            samples = drawn[scenario.scenario][key]
            assert scenario.estimates[key].se == samples.std(ddof=1)
            assert scenario.estimates[key].ci_low == np.percentile(samples, 2.5)
        average = result.average[key]
        assert average.value == pytest.approx(np.mean([s.estimates[key].value for s in result.scenarios]))
        assert average.se == pytest.approx(np.mean([drawn[name][key] for name in arrays], axis=0).std(ddof=1))
    assert result.ranking is result.average["TPR_FPR_1000"]


def test_a_scenario_s_interval_does_not_depend_on_the_others(tree, result, tmp_path):
    root, _ = tree
    shutil.copytree(root / TASK / "cifar10_hi", tmp_path / TASK / "cifar10_hi")
    alone = score_folders(tmp_path, tmp_path, n_bootstrap=N_BOOTSTRAP)
    assert alone.scenarios[0] == result.scenarios[0]
    assert alone.ranking.value == result.scenarios[0].estimates["TPR_FPR_1000"].value


def test_grouped_resamples_score_as_the_scorer_scores_each_resample():
    rng = np.random.default_rng(5)
    for decimals in (1, 2, 6):
        solutions = rng.integers(0, 2, 500)
        predictions = np.clip(rng.normal(0.5 + 0.2 * solutions, 0.25), 0, 1).round(decimals)
        assert _GroupedPoints(solutions.astype(float), predictions).whole() == score(solutions, predictions)
        grouped = bootstrap_scores(solutions, predictions, 25, seed=3)
        scored = bootstrap_scores(solutions, predictions, 25, seed=3, use_scorer=True)
        for key in SCORE_KEYS:
            np.testing.assert_array_equal(grouped[key], scored[key], err_msg=f"{key}, {decimals} decimals")
    with pytest.raises(ConfigError, match="at least 2 resamples"):
        bootstrap_scores([0, 1], [0.1, 0.9], 1)
    with pytest.raises(DataError, match="both members and non-members"):
        bootstrap_scores([1, 1], [0.1, 0.9], 2)


def corrupt(folder: Path, case: str) -> None:
    """Spoil one model folder's files as ``case`` says."""
    if case == "missing-prediction":
        (folder / PREDICTION_FILE).unlink()
    elif case == "missing-solution":
        (folder / SOLUTION_FILE).unlink()
    elif case == "wrong-count":
        write_prediction(folder, np.full(POINTS - 1, 0.5), POINTS - 1)
    else:
        value = {"nan": "nan", "above-one": "1.5", "below-zero": "-0.25"}[case]
        (folder / PREDICTION_FILE).write_text(",".join([value] + ["0.5"] * (POINTS - 1)) + "\r\n")


#: case -> what the one-line error says after the model folder's path
ERRORS = {
    "missing-prediction": "solution.csv but no prediction.csv",
    "missing-solution": "prediction.csv but no solution.csv",
    "wrong-count": "prediction.csv: 199 scores for 200 challenge points",
    "nan": "prediction.csv: value 0 is 'nan', not a number",
    "above-one": "prediction.csv: score 0 is 1.5, outside [0, 1]",
    "below-zero": "prediction.csv: score 0 is -0.25, outside [0, 1]",
}


def spoilt_tree(root: Path, case: str) -> Path:
    """A one-tree task whose ``cifar10_inf`` model 1 is spoilt as ``case`` says; return that model folder."""
    write_tree(root, root, shifts={"cifar10_hi": 0.1, "cifar10_inf": 0.2})
    folder = root / TASK / "cifar10_inf" / "train" / "model_1"
    corrupt(folder, case)
    return folder


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_a_bad_model_is_one_error_naming_its_folder(case, tmp_path):
    folder = spoilt_tree(tmp_path, case)
    with pytest.raises(DataError) as raised:
        score_folders(tmp_path, tmp_path, n_bootstrap=N_BOOTSTRAP)
    message = str(raised.value)
    assert str(folder) in message and ERRORS[case] in message and "\n" not in message


def test_unpaired_models_of_apart_trees_name_both_folders(tmp_path):
    ref, res = tmp_path / "ref", tmp_path / "res"
    write_tree(ref, res, {"dev": ("solution", "prediction")})
    model = Path(TASK) / "cifar10_lo" / "dev" / "model_102"
    shutil.rmtree(res / model)
    with pytest.raises(
        DataError, match=re.escape(f"{res / model}: no prediction.csv for the solution.csv in {ref / model}")
    ):
        score_folders(ref, res, n_bootstrap=N_BOOTSTRAP)
    write_prediction(res / model, np.full(POINTS, 0.5))
    (ref / model / SOLUTION_FILE).unlink()
    with pytest.raises(
        DataError, match=re.escape(f"{ref / model}: no solution.csv for the prediction.csv in {res / model}")
    ):
        score_folders(ref, res, n_bootstrap=N_BOOTSTRAP)


def test_a_scenario_without_solutions_is_refused(tmp_path):
    ref, res = tmp_path / "ref", tmp_path / "res"
    write_tree(ref, res, {"dev": ("solution", "prediction")})
    write_prediction(res / TASK / "cifar10_mid" / "dev" / "model_100", np.full(POINTS, 0.5))
    with pytest.raises(DataError, match="cifar10_mid: predictions for a scenario that the solutions do not have"):
        score_folders(ref, res, n_bootstrap=N_BOOTSTRAP)
    write_solution(tmp_path / "one" / TASK / "s" / "train" / "model_0", [1, 1])
    write_prediction(tmp_path / "one" / TASK / "s" / "train" / "model_0", [0.5, 0.5], 2)
    with pytest.raises(DataError, match="all 2 challenge points are members; scoring needs both"):
        score_folders(tmp_path / "one", tmp_path / "one", n_bootstrap=N_BOOTSTRAP)


def test_bootstrap_settings_are_checked(tree):
    root, _ = tree
    with pytest.raises(ConfigError, match="at least 2 resamples, got 1"):
        score_folders(root, root, n_bootstrap=1)
    with pytest.raises(ConfigError, match="non-negative integer, got -1"):
        score_folders(root, root, seed=-1)


def test_scores_txt_is_in_the_official_format(result, tmp_path):
    text = scores_text(result)
    lines = text.split("\n")
    assert not text.endswith("\n") and len(lines) == 3 * len(TXT_KEYS) + 1
    expected_keys = [f"scenario{i}_{key}" for i in (1, 2, 3) for key in TXT_KEYS] + ["average_TPR_FPR_1000"]
    assert [line.split(": ")[0] for line in lines] == expected_keys
    assert TXT_KEYS[:3] == ("AUC", "MIA", "accuracy") and TXT_KEYS[3:] == SCORE_KEYS[:6]
    values = [float(line.split(": ")[1]) for line in lines]
    assert values[:-1] == [s.estimates[key].value for s in result.scenarios for key in TXT_KEYS]
    assert values[-1] == result.ranking.value
    assert lines[0] == f"scenario1_AUC: {result.scenarios[0].scores['AUC']!r}"
    path = write_scores_txt(result, tmp_path / "out")
    assert path == tmp_path / "out" / SCORES_FILE and path.read_text() == text


def test_rows_hold_every_score_with_its_interval(result):
    rows = score_rows(result)
    assert [row["scenario"] for row in rows] == [*sorted(SHIFTS), AVERAGE]
    assert all(list(row) == list(ROW_COLUMNS) for row in rows)
    assert rows[-1]["models"] == 3 * MODELS and rows[-1]["points"] == 3 * MODELS * POINTS
    assert rows[0]["phases"] == "train" and rows[0]["n_bootstrap"] == N_BOOTSTRAP
    first = result.scenarios[0].estimates["AUC"]
    assert Estimate(*(rows[0][f"AUC{suffix}"] for suffix in ("", "_se", "_ci_low", "_ci_high"))) == first
    assert rows[-1]["TPR_FPR_1000"] == result.ranking.value
