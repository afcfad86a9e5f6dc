"""The resumable runner and run_experiments.py, on a tiny budget of real Fashion-MNIST images."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_BUDGET, write_v1_table

from dpsnn.data import Split
from dpsnn.defences import Laplace
from dpsnn.experiments.report import SUMMARY_FILE, generated_blocks, report_blocks
from dpsnn.experiments.runner import ExperimentRunner
from dpsnn.experiments.store import RUN_COLUMNS, RUNS_FILE, RunStore, load_samples, read_runs, upgrade
from dpsnn.experiments.suites import FULL, QUICK, SUITES, Grid, RunConfig, undefended_config
from dpsnn.experiments.summary import summarise

POST_NOISE = SUITES["post-noise"].grid(QUICK).values

REPO = Path(__file__).resolve().parents[1]
TINY_FLAGS = [f"--{name.replace('_', '-')}={value}" for name, value in TINY_BUDGET.items()]


def test_a_suite_runs_once_and_a_second_call_does_nothing(tmp_path, tiny_runner):
    runner = tiny_runner(tmp_path)
    assert runner.run(["plain", "post-noise"], seeds=2) == 2 * len(SUITES["post-noise"].configs("x", runner.budget))
    rows = read_runs(runner.results_dir)
    assert all(row["status"] == "ok" for row in rows)
    assert len({row["key"] for row in rows}) == len(rows)
    # Post-noise attacks the model trained without noise: it was trained once per seed.
    assert sum(row["model_seconds"] > 0 for row in rows) == 2
    assert {row["defences"] for row in rows} == {"none"} and {row["attack"] for row in rows} == {"decoder"}
    assert {json.loads(row["params"]).get("inference_defences") for row in rows} == {None, "laplace(scale=0.5)"}
    assert {SUITES["post-noise"].values(RunConfig.from_row(row)) for row in rows} == {(b,) for b in POST_NOISE}
    # The noisy wire is what was attacked: its leakage differs from the clean wire's on the same model.
    by_wire = {json.loads(row["params"]).get("inference_defences"): row for row in rows if row["seed"] == 0}
    assert by_wire[None]["dcor"] != by_wire["laplace(scale=0.5)"]["dcor"]
    before = (runner.results_dir / RUNS_FILE).read_bytes()
    assert tiny_runner(tmp_path).run(["plain", "post-noise"], seeds=2) == 0
    assert (runner.results_dir / RUNS_FILE).read_bytes() == before
    samples = load_samples(runner.results_dir, rows[0]["key"])
    assert samples["attack"].shape == samples["originals"].shape == (8, 1, 28, 28)


def test_extensions_grow_until_accuracy_collapses(tmp_path, tiny_runner, monkeypatch):
    # What a defence measures about its trained model becomes metric columns of its runs.
    monkeypatch.setattr(Laplace, "measures", lambda self, model: {"scale_seen": self.scale}, raising=True)
    runner = tiny_runner(tmp_path)
    runner.run(["noise"], seeds=1)
    rows = read_runs(runner.results_dir)
    noise = SUITES["noise"]
    scales = sorted(noise.values(RunConfig.from_row(row))[0] for row in rows)
    grid = noise.grid(QUICK)
    assert scales[: len(grid.values)] == sorted(grid.values)
    # The one extension value (2.0) runs only if accuracy at 0.5 had not collapsed.
    last = noise.configs("fashion-mnist", runner.budget)[-1]
    with RunStore(runner.results_dir) as store:
        at_half = store.get(last.key)
        expect_extension = not runner._has_collapsed(last, store, noise.grid(runner.budget))
    assert at_half is not None
    assert (grid.extension[0] in scales) == expect_extension
    assert [row["laplace_scale_seen"] for row in rows if row["defences"] != "none"] == scales[1:]
    assert math.isnan(next(row for row in rows if row["defences"] == "none")["laplace_scale_seen"])


def test_a_diverged_run_is_recorded_as_diverged_and_not_redone(tmp_path, tiny_runner):
    runner = tiny_runner(tmp_path)
    splits = runner.splits("fashion-mnist", 0)
    poisoned = splits.train.images.clone()
    poisoned[0, 0, 0, 0] = float("nan")  # a NaN pixel makes the first loss NaN
    splits.train = Split(poisoned, splits.train.labels)
    assert runner.run(["plain"], seeds=1) == 1
    (row,) = read_runs(runner.results_dir)
    assert row["status"] == "diverged" and "non-finite loss" in row["note"]
    assert tiny_runner(tmp_path).run(["plain"], seeds=1) == 0
    assert summarise(read_runs(runner.results_dir))[0]["n_diverged"] == 1


def script(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "DPSNN_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "run_experiments.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        **kwargs,
    )


def script_in_process(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, Any]:
    """run_experiments.py's ``main`` in this process (no interpreter to start), as the script runs it."""
    import runpy

    from dpsnn.cli import run

    main = runpy.run_path(str(REPO / "scripts" / "run_experiments.py"))["main"]
    monkeypatch.setattr(sys, "argv", ["run_experiments.py"])
    monkeypatch.setenv("DPSNN_OFFLINE", "1")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run(main, args)
    return exited.value.code, capsys.readouterr()


def run_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    """The script's stdout; its exit status must be 0."""
    code, captured = script_in_process(args, monkeypatch, capsys)
    assert code == 0, captured.err[-2000:]
    return captured.out


def test_killed_half_way_the_script_loses_nothing_and_duplicates_nothing(tmp_path, data_root, monkeypatch, capsys):
    results = tmp_path / "results"
    common = ["post-noise", "--quick", "--seeds", "1", *TINY_FLAGS, "--results-dir", str(results)]
    common += ["--models-dir", str(tmp_path / "models"), "--data-dir", str(data_root)]
    process = script(*common, cwd=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_runs(results) if (results / RUNS_FILE).exists() else []) < 1:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    survivors = read_runs(results)
    assert 1 <= len(survivors) < len(POST_NOISE)
    finished = script(*common, cwd=tmp_path)
    out, err = finished.communicate(timeout=600)
    assert finished.returncode == 0, err[-2000:]
    rows = read_runs(results)
    assert len(rows) == len({row["key"] for row in rows}) == len(POST_NOISE)
    assert [row for row in rows if row["key"] in {s["key"] for s in survivors}] == survivors
    assert (results / SUMMARY_FILE).is_file() and (results / "figures" / "post-noise_curves.png").is_file()
    # The interrupted process is what needed a process of its own; the reruns below need none.
    monkeypatch.chdir(tmp_path)
    assert "nothing to do" in run_in_process(common, monkeypatch, capsys)
    # --tables-only rebuilds what is derived and touches no run.
    runs_before = (results / RUNS_FILE).read_bytes()
    (results / SUMMARY_FILE).unlink()
    out = run_in_process([*common, "--tables-only"], monkeypatch, capsys)
    assert "0 run(s)" in out and (results / SUMMARY_FILE).is_file()
    assert (results / RUNS_FILE).read_bytes() == runs_before


def error_in_process(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str]:
    """The script's exit status and stderr."""
    code, captured = script_in_process(args, monkeypatch, capsys)
    return code, captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["bogus"], "unknown suite 'bogus'"),
        (["noise", "--seeds", "0"], "--seeds: must be a positive integer"),
        (["noise", "--dataset", "cifar"], "unknown dataset"),
        (["noise", "--train-size", "-5"], "--train-size: must be a positive integer"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = error_in_process([*args, "--results-dir", str(tmp_path / "r")], monkeypatch, capsys)
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not (tmp_path / "r" / RUNS_FILE).exists()


def test_a_results_table_of_another_schema_is_one_line_and_left_alone(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r"
    results.mkdir()
    (results / RUNS_FILE).write_text("schema_version,key,status\n0,x,ok\n")
    before = (results / RUNS_FILE).read_bytes()
    monkeypatch.chdir(tmp_path)
    code, err = error_in_process(["plain", "--quick", "--results-dir", str(results)], monkeypatch, capsys)
    assert code == 1 and "another version of the results schema" in err
    assert len(err.strip().splitlines()) == 1
    assert (results / RUNS_FILE).read_bytes() == before


def test_a_full_disk_is_one_line_and_keeps_finished_rows(tmp_path, data_root, monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    import run_experiments

    results = tmp_path / "results"
    common = ["plain", "--quick", *TINY_FLAGS, "--results-dir", str(results)]
    common += ["--models-dir", str(tmp_path / "models"), "--data-dir", str(data_root)]
    with pytest.raises(SystemExit) as exit_info:
        run_experiments.run(run_experiments.main, [*common, "--seeds", "1"])
    assert exit_info.value.code == 0
    before = (results / RUNS_FILE).read_bytes()

    import dpsnn.experiments.store as store_module

    def full_disk(*_, **__):
        raise OSError(28, "No space left on device", str(results / RUNS_FILE))

    monkeypatch.setattr(store_module, "write_table", full_disk)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_experiments.run(run_experiments.main, [*common, "--seeds", "2"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: No space left on device" in err[0]
    assert (results / RUNS_FILE).read_bytes() == before
    assert not [p for p in results.iterdir() if p.name.startswith(".runs.csv")]


def test_committed_report_agrees_with_the_committed_results():
    results = REPO / "results" / "experiments"
    if not (results / RUNS_FILE).is_file():
        pytest.fail("results/experiments/runs.csv is missing: the full suite's results belong in the repository")
    summary = summarise(read_runs(results))
    blocks = generated_blocks(REPO / "results" / "REPORT.md")
    assert blocks, "results/REPORT.md has no generated blocks"
    expected = report_blocks(summary)
    assert set(expected) <= set(blocks), f"REPORT.md lacks the blocks {sorted(set(expected) - set(blocks))}"
    for name, body in blocks.items():
        assert body == expected[name], f"REPORT.md's '{name}' block is stale: re-run scripts/run_experiments.py"
    with open(results / SUMMARY_FILE, newline="") as file:
        assert len(list(csv.DictReader(file))) == len(summary)


def test_what_the_runner_measures_matches_the_library(tmp_path, tiny_runner):
    """A recorded accuracy is evaluate_classifier's on the same model and test split."""
    from dpsnn.checkpoints import load_classifier
    from dpsnn.evaluation import evaluate_classifier

    runner = tiny_runner(tmp_path)
    runner.run(["plain"], seeds=1)
    (row,) = read_runs(runner.results_dir)
    config = undefended_config("fashion-mnist", runner.budget)
    model = load_classifier(runner.model_path(config))
    again = evaluate_classifier(model, runner.splits("fashion-mnist", 0).test, seed=0)
    assert row["accuracy"] == pytest.approx(again["accuracy"], abs=1e-6)
    assert torch.isfinite(torch.tensor(row["gap_ssim"]))


def test_the_script_migrates_a_schema_1_table_with_one_line(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    import run_experiments

    results = tmp_path / "r"
    old = write_v1_table(results)
    with pytest.raises(SystemExit) as exit_info:
        run_experiments.run(
            run_experiments.main,
            ["plain", "--tables-only", "--results-dir", str(results), "--report", str(tmp_path / "REPORT.md")],
        )
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"migrated {results / RUNS_FILE} from results schema 1 to 2"
    assert sum("migrated" in line for line in lines) == 1
    with open(results / RUNS_FILE, newline="") as file:
        header = next(csv.reader(file))
    assert tuple(header[: len(RUN_COLUMNS)]) == RUN_COLUMNS and len(read_runs(results)) == len(old)
    assert (results / SUMMARY_FILE).is_file() and (results / "figures" / "grid_plain.png").is_file()
    assert upgrade(results) is None  # migrated once: nothing left to do
    assert not (tmp_path / "REPORT.md").exists()  # a missing report is left missing


def test_the_runner_migrates_before_it_runs_and_finds_the_migrated_runs(tmp_path, data_root):
    old = write_v1_table(tmp_path / "results")
    said = []
    runner = ExperimentRunner(
        FULL, "fashion-mnist", tmp_path / "results", tmp_path / "models", data_root, say=said.append
    )
    # The schema-1 table holds the undefended run of the full budget: once migrated, it is found.
    assert runner.run(["plain"], seeds=1) == 0
    assert said == [f"migrated {tmp_path / 'results' / RUNS_FILE} from results schema 1 to 2"]
    rows = read_runs(runner.results_dir)
    assert len(rows) == len(old) and rows[0]["key"] == undefended_config("fashion-mnist", FULL).key
    assert not (tmp_path / "models").exists()  # nothing was trained


@pytest.mark.parametrize("accuracy_at_last, extended", [(0.85, True), (0.3, False)])
def test_the_extension_is_tried_only_while_accuracy_holds(tmp_path, tiny_runner, accuracy_at_last, extended):
    """The collapse rule on recorded rows (no training): seed 0 decides, later seeds repeat what seed 0 ran."""
    runner = tiny_runner(tmp_path)
    noise = SUITES["noise"]
    grid, extension = (
        noise.configs("fashion-mnist", runner.budget),
        noise.extension_configs("fashion-mnist", runner.budget),
    )
    with RunStore(runner.results_dir) as store:
        for config in grid:
            accuracy = accuracy_at_last if config == grid[-1] else 0.9
            store.add({"key": config.key, "status": "ok", **config.as_row(), "accuracy": accuracy})
        first = list(runner._extensions("noise", 0, store))
        assert first == (extension[:1] if extended else [])
        assert list(runner._extensions("noise", 1, store)) == []  # seed 0 has not run it yet
        if extended:
            store.add({"key": extension[0].key, "status": "ok", **extension[0].as_row(), "accuracy": 0.2})
            assert [c.seed for c in runner._extensions("noise", 1, store)] == [1]


def test_a_membership_attack_is_scored_on_members_and_non_members(tmp_path, tiny_runner):
    """A membership attack's row has its ROC metrics beside chance; the candidates come from train and test."""
    runner = tiny_runner(tmp_path)
    config = replace(undefended_config("fashion-mnist", runner.budget), attack="membership-threshold")
    with RunStore(runner.results_dir) as store:
        store.add(runner.measure(config))
    (row,) = read_runs(runner.results_dir)
    assert row["attack"].startswith("membership-threshold(") and "signal=loss" in row["attack"]
    assert 0 <= row["attack_auc"] <= 1 and row["attack_auc_se"] > 0
    assert row["baseline_auc"] == 0.5 and row["gap_auc"] == pytest.approx(
        row["attack_auc"] - 0.5, abs=1e-6
    )  # both rounded in the table
    assert row["baseline_tpr_at_fpr_0_01"] == 0.01 and math.isfinite(row["attack_advantage"])
    assert not any("_ci_" in column for column in row)
    assert math.isnan(row["attack_ssim"])  # no reconstructions in a membership row
    # Scored on its candidates, half of them from the training split: the budget's count, as far as the splits allow.
    assert row["n_test"] == min(runner.budget.membership_candidates, 2 * TINY_BUDGET["train_size"])


def test_each_finished_run_is_one_line_whatever_its_attack_measures():
    import runpy

    describe = runpy.run_path(str(REPO / "scripts" / "run_experiments.py"))["describe"]
    inversion = {"status": "ok", "key": "a", "accuracy": 0.89, "gap_ssim": 0.28, "model_seconds": 3.0}
    membership = {"status": "ok", "key": "b", "accuracy": 0.89, "attack_auc": 0.61, "attack_seconds": 2.0}
    assert describe(inversion) == "ok       a  acc 0.8900  SSIM gap +0.280  (3 s)"
    assert describe(membership) == "ok       b  acc 0.8900  AUC 0.610  (2 s)"
    assert describe({"status": "diverged", "key": "c"}) == "diverged c  (0 s)"


def test_a_one_point_grid_stops_after_the_first_value_that_costs_more_than_a_point(tmp_path, tiny_runner):
    runner = tiny_runner(tmp_path)
    plain = undefended_config("fashion-mnist", runner.budget, 0)
    suite = SUITES["vib"]
    weak, strong = (
        suite.configs("fashion-mnist", runner.budget)[-1],
        suite.extension_configs("fashion-mnist", runner.budget)[0],
    )
    with RunStore(runner.results_dir) as store:
        for config, accuracy in ((plain, 0.890), (weak, 0.885), (strong, 0.870)):
            store.add({"key": config.key, "status": "ok", "seed": 0, "accuracy": accuracy})
        grid = suite.grid(runner.budget)
        assert not runner._has_collapsed(weak, store, grid)  # half a point: the sweep goes on
        assert runner._has_collapsed(strong, store, grid)  # two points: it stops here
        assert not runner._has_collapsed(strong, store, Grid((0.0,)))  # where the collapse rule would go on


def test_splits_of_another_size_never_share_a_validator(tmp_path, data_root):
    """The Validator trains on the target train split, so its file says how many images that held."""
    from dpsnn.data import make_splits
    from dpsnn.training import obtain_validator

    folder = tmp_path / "validators"
    for train_size in (64, 96, 64):
        splits = make_splits("fashion-mnist", seed=0, train_size=train_size, val_size=32, test_size=32, root=data_root)
        obtain_validator(splits, folder, max_epochs=1, progress=False)
    assert sorted(path.name for path in folder.iterdir()) == [
        "fashion-mnist_seed0_64train_1epochs.ckpt",
        "fashion-mnist_seed0_96train_1epochs.ckpt",
    ]
