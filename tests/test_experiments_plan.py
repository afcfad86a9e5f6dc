"""Counting the runs of a grid and forecasting their cost (``run_experiments.py --plan``)."""

from __future__ import annotations

import math

import pytest
from test_experiments_runner import TINY_FLAGS, run_in_process, script_in_process

from dpsnn.defences import parse_canonical
from dpsnn.experiments.plan import ANY, Estimate, Timings, family, forecast, format_plan, plan, plan_table, wall_hours
from dpsnn.experiments.store import RUNS_FILE, read_runs
from dpsnn.experiments.suites import QUICK, SUITES, RunConfig
from dpsnn.results import read_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def row(defences="none", attack="decoder", model=0.0, seconds=1.0, budget="b", status="ok"):
    return {
        "defences": defences,
        "attack": attack,
        "model_seconds": model,
        "attack_seconds": seconds,
        "budget": budget,
        "status": status,
    }


def test_a_family_is_the_names_of_the_defences():
    assert family(parse_canonical("none")) == family(()) == "none"
    assert family(parse_canonical("laplace(scale=1)+nopeek(weight=0.5)")) == "laplace+nopeek"
    assert family(parse_canonical("dp(epsilon=4,noise_multiplier=0,max_grad_norm=1)")) == "dp"


def test_timings_are_means_with_standard_errors_of_this_budgets_finished_runs():
    rows = [
        row(model=10, seconds=2),
        row(model=14, seconds=4),
        row(model=0, seconds=6),  # a model trained by an earlier run: no model time
        row("laplace(scale=1)", model=30, seconds=3),
        row(attack="whitebox(steps=50)", seconds=50),
        row(attack="whitebox", seconds=10),
        row(model=1000, seconds=1000, status="diverged"),
        row(model=1000, seconds=1000, budget="other"),
    ]
    timings = Timings.from_rows(rows, "b")
    assert timings.same_budget
    assert timings.models["none"].seconds == 12 and timings.models["none"].n == 2
    assert timings.models["none"].se == pytest.approx(math.sqrt(8) / math.sqrt(2))
    assert timings.models[ANY].n == 3
    assert timings.attacks["decoder"].seconds == pytest.approx((2 + 4 + 6 + 3) / 4)
    assert timings.attacks["whitebox"].seconds == pytest.approx((50 + 10) / 2)  # by name: every white-box run
    assert timings.attacks["whitebox(steps=50)"].seconds == 50 and timings.attacks["whitebox(steps=50)"].n == 1
    elsewhere = Timings.from_rows([row(budget="other", model=7)], "b")  # none of this budget: every row serves
    assert not elsewhere.same_budget and elsewhere.models["none"].seconds == 7


def test_a_plan_holds_every_run_once_and_its_forecast_counts_each_model_once(tmp_path, tiny_runner):
    runner = tiny_runner(tmp_path)
    runner.run(["plain"], seeds=1)
    done = read_runs(runner.results_dir)
    suites = ["plain", "noise", "post-noise"]
    runs = plan(runner, suites, seeds=2, finished=[r["key"] for r in done])
    keys = [run.config.key for run in runs]
    assert len(keys) == len(set(keys))
    expected = set()
    for seed in (0, 1):
        for suite in suites:
            expected |= {c.key for c in SUITES[suite].configs("fashion-mnist", runner.budget, seed)}
            expected |= {c.key for c in SUITES[suite].extension_configs("fashion-mnist", runner.budget, seed)}
    assert set(keys) == expected
    assert [run.config.key for run in runs if run.finished] == [done[0]["key"]]
    assert {run.extension for run in runs} == {False, True}
    # Seed 0's undefended model is on disk; every other model is trained by the first run that needs it.
    to_train = [run for run in runs if not run.model_trained]
    assert len({run.config.model_key for run in to_train}) == len(to_train)
    assert RunConfig.from_row(done[0]).model_key not in {run.config.model_key for run in to_train}

    timings = Timings(
        models={"none": _estimate(100, 3), "laplace": _estimate(200, 4)},
        attacks={"decoder": _estimate(10, 1)},
        same_budget=True,
    )
    todo = [run for run in runs if not run.finished]
    result = forecast(runs, timings)
    models = {"none": 0, "laplace": 0}
    for run in to_train:
        models["laplace" if run.config.defences else "none"] += 1
    assert result.runs == len(todo) and result.models == len(to_train) and result.untimed == 0
    assert result.seconds == pytest.approx(10 * len(todo) + 100 * models["none"] + 200 * models["laplace"])
    assert result.se == pytest.approx(math.sqrt(len(todo) * 1 + models["none"] * 9 + models["laplace"] * 16))
    table = plan_table(runs, timings)
    assert [r["suite"] for r in table] == [*suites, "total"]
    assert table[-1]["runs"] + table[-1]["extension_runs_at_most"] == len(runs)
    assert table[-1]["core_hours_with_extensions"] == pytest.approx(result.seconds / 3600)
    assert forecast(runs, Timings({}, {}, same_budget=False)).untimed == len(todo)  # nothing timed: no guess
    hours = result.seconds / 3600
    assert wall_hours(table, cores=2)[1] == pytest.approx(hours / 2)
    assert f"{hours / 2:.1f} h with every extension value" in format_plan(table, timings, "results", cores=2)
    assert "wall time" not in format_plan(table, timings, "results")

    # A fresh checkout keeps runs.csv but not the models: the first run left to do on that model trains it again.
    runner.model_path(RunConfig.from_row(done[0])).unlink()
    again = [run for run in plan(runner, ["plain", "post-noise"], 1, [done[0]["key"]]) if not run.finished]
    assert {run.config.model_key for run in again} == {RunConfig.from_row(done[0]).model_key}
    assert [run.model_trained for run in again] == [False] + [True] * (len(again) - 1)


def _estimate(seconds: float, se: float) -> Estimate:
    return Estimate(seconds, se, 2)


def test_the_script_plans_without_running_and_writes_the_forecast(tmp_path, data_root, monkeypatch, capsys):
    results = tmp_path / "results"
    common = ["plain", "noise", "--quick", *TINY_FLAGS, "--data-dir", str(data_root)]
    common += ["--results-dir", str(results), "--models-dir", str(tmp_path / "models")]
    out = run_in_process([*common, "--plan", "--seeds", "2"], monkeypatch, capsys)
    assert not (results / RUNS_FILE).exists() and not (tmp_path / "models").exists()
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["suite", "runs", "+ext"] and lines[3].startswith("total")
    assert "no timing at all" in out
    columns, written = read_table(results / "plan.csv")
    assert [r["suite"] for r in written] == ["plain", "noise", "total"] and "core_hours_se" in columns
    values = SUITES["noise"].grid(QUICK).values
    assert 0 in values and int(written[1]["runs"]) == 2 * (len(values) - 1)  # noise 0 is plain's run
    code, captured = script_in_process([*common, "--plan", "--merge"], monkeypatch, capsys)
    assert code == 2 and "--plan runs nothing; use it alone" in captured.err
