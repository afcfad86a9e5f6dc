"""Suite definitions, the runs table and the summaries over seeds (no training here)."""

import math

import pytest

from dpsnn.errors import ConfigError, ResultsError
from dpsnn.experiments.report import generated_blocks, markdown_table, report_blocks, update_report
from dpsnn.experiments.store import RUN_COLUMNS, RUNS_FILE, RunStore, read_runs
from dpsnn.experiments.suites import (
    FULL,
    QUICK,
    SUITES,
    RunConfig,
    collapsed,
    customised,
    expand_suites,
    suite_configs,
    suites_of,
)
from dpsnn.experiments.summary import best_within, pareto_front, suite_table, summarise


def test_grids_hold_the_values_the_issue_names():
    assert [c.noise_scale for c in suite_configs("noise", "fashion-mnist", FULL)] == [0, 0.1, 0.2, 0.5, 1.0]
    assert [c.nopeek_weight for c in suite_configs("nopeek", "fashion-mnist", FULL)] == [0, 0.1, 0.25, 0.5, 1.0]
    combo = suite_configs("combo", "fashion-mnist", FULL)
    assert len(combo) == 25 and len({(c.noise_scale, c.nopeek_weight) for c in combo}) == 25
    assert [c.aux_size for c in suite_configs("data-volume", "fashion-mnist", FULL)] == [100, 500, 1250, 2500, 5000]
    post = suite_configs("post-noise", "fashion-mnist", FULL)
    assert all(c.noise_scale == 0 for c in post) and max(c.wire_noise for c in post) >= 1.0


def test_aux_shift_adds_another_dataset_only_when_present():
    without = suite_configs("aux-shift", "fashion-mnist", FULL)
    assert [c.aux_source for c in without] == ["same", "other-classes"]
    assert all(c.test_classes == "lower-half" and c.aux_size == FULL.aux_size // 2 for c in without)
    with_mnist = suite_configs("aux-shift", "fashion-mnist", FULL, other_dataset="mnist")
    assert [c.aux_source for c in with_mnist] == ["same", "other-classes", "mnist"]


def test_all_expands_to_every_suite_once_and_unknown_suites_are_refused():
    assert expand_suites(["all"]) == list(SUITES)
    assert expand_suites(["noise", "all", "noise"]) == list(SUITES)
    with pytest.raises(ConfigError, match="unknown suite 'bogus'"):
        expand_suites(["noise", "bogus"])
    with pytest.raises(ConfigError, match="unknown suite"):
        suite_configs("bogus", "fashion-mnist", FULL)


def test_the_undefended_setting_belongs_to_every_suite_but_aux_shift():
    plain = suite_configs("plain", "fashion-mnist", FULL)[0]
    assert suites_of(plain, FULL) == ["plain", "noise", "nopeek", "combo", "post-noise", "data-volume"]
    large_noise = RunConfig("fashion-mnist", 0, 30.0, 0.0, 30.0, aux_size=FULL.aux_size)
    assert suites_of(large_noise, FULL) == ["noise"]  # an extension value


def test_keys_are_unique_and_name_the_setting():
    configs = {c for s in SUITES for c in suite_configs(s, "fashion-mnist", FULL, other_dataset="mnist")}
    assert len({c.key for c in configs}) == len(configs)
    assert RunConfig("fashion-mnist", 2, 0.5, 0.25, 0.5).key.startswith("fashion-mnist_seed2_05noise_025nopeek_05wire")


def test_collapse_is_measured_from_chance():
    assert not collapsed(0.80, 0.90, 10)
    assert collapsed(0.40, 0.90, 10)  # less than half the way from 0.1 to 0.9
    assert collapsed(0.1, 0.90, 10)


def test_customised_budgets_are_named_apart():
    small = customised(QUICK, train_size=256, attack_steps=5)
    assert small.train_size == 256 and small.attack_steps == 5 and small.name != QUICK.name
    assert small.name.startswith(QUICK.name + "-") and customised(FULL) is FULL
    with pytest.raises(ConfigError):
        customised(FULL, nonsense=1)


def _row(key: str, seed: int = 0, status: str = "ok", **values) -> dict:
    config = RunConfig("fashion-mnist", seed, values.pop("noise", 0.0), values.pop("nopeek", 0.0), 0.0)
    config = RunConfig(**{**config.as_row(), "wire_noise": config.noise_scale, "aux_size": FULL.aux_size})
    suites = " ".join(suites_of(config, FULL))
    return {"key": key, "status": status, "budget": "full", "suites": suites, **config.as_row(), **values}


def test_store_adds_rows_atomically_and_never_twice(tmp_path):
    with RunStore(tmp_path) as store:
        store.add(_row("a", accuracy=0.9))
        with pytest.raises(ResultsError, match="already recorded"):
            store.add(_row("a", accuracy=0.8))
        with pytest.raises(ResultsError, match="columns the schema lacks"):
            store.add({**_row("b"), "surprise": 1})
    rows = read_runs(tmp_path)
    assert [r["key"] for r in rows] == ["a"] and rows[0]["accuracy"] == 0.9
    assert not list(tmp_path.glob(".runs.csv.*"))  # no temporary file left behind


def test_a_failed_write_leaves_the_table_as_it_was(tmp_path, monkeypatch):
    with RunStore(tmp_path) as store:
        store.add(_row("a", accuracy=0.9))
    before = (tmp_path / RUNS_FILE).read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    import dpsnn.experiments.store as store_module

    monkeypatch.setattr(store_module, "write_table", full_disk)
    with RunStore(tmp_path) as store, pytest.raises(OSError):
        store.add(_row("b", accuracy=0.8))
    assert (tmp_path / RUNS_FILE).read_bytes() == before


def test_a_second_writer_is_refused(tmp_path):
    with RunStore(tmp_path), pytest.raises(ResultsError, match="another run is writing"):
        with RunStore(tmp_path):
            pass


def test_a_table_of_another_schema_is_refused(tmp_path):
    (tmp_path / RUNS_FILE).write_text("schema_version,key,status\n0,x,ok\n")
    with pytest.raises(ResultsError, match="another version of the results schema"):
        read_runs(tmp_path)
    with pytest.raises(ResultsError):
        RunStore(tmp_path).__enter__()


def test_summary_is_the_mean_and_standard_error_over_seeds():
    rows = [
        _row("a0", 0, accuracy=0.90, gap_ssim=0.20),
        _row("a1", 1, accuracy=0.92, gap_ssim=0.22),
        _row("a2", 2, status="diverged"),
    ]
    parsed = [{c: r.get(c, math.nan) for c in RUN_COLUMNS} | r for r in rows]
    (row,) = summarise(parsed)
    assert row["n_seeds"] == 3 and row["n_diverged"] == 1
    assert row["accuracy"] == pytest.approx(0.91)
    assert row["accuracy_se"] == pytest.approx(0.01)  # std 0.01414 / sqrt(2)
    assert "plain" in row["suites"].split()


def _summary_rows():
    base = {c: math.nan for c in RUN_COLUMNS}
    rows = []
    for seed in range(2):
        for noise, accuracy, gap in ((0.0, 0.90, 0.25), (0.5, 0.895, 0.20), (1.0, 0.87, 0.05), (3.0, 0.80, 0.10)):
            rows.append(base | _row(f"n{noise}_{seed}", seed, noise=noise, accuracy=accuracy, gap_ssim=gap))
    return summarise(rows)


def test_pareto_front_and_best_setting_within_one_point():
    summary = _summary_rows()
    front = pareto_front(summary)
    assert [p["noise_scale"] for p in front] == [1.0, 0.5, 0.0]  # noise 3 is beaten by noise 1 on both counts
    best = best_within(summary, 0.01)
    assert best["noise_scale"] == 0.5
    assert best_within(summary, 0.001) is None  # nothing defended keeps accuracy that closely
    assert [r["noise_scale"] for r in suite_table(summary, "noise")] == [0.0, 0.5, 1.0, 3.0]


def test_report_blocks_are_rewritten_and_the_prose_is_kept(tmp_path):
    summary = _summary_rows()
    report = tmp_path / "REPORT.md"
    report.write_text("# Report\nprose\n<!-- generated:noise -->\nstale\n<!-- end:noise -->\nmore prose\n")
    assert update_report(report, summary)
    text = report.read_text()
    assert "stale" not in text and "prose\n" in text and "more prose" in text
    assert generated_blocks(report)["noise"] == report_blocks(summary)["noise"]
    assert not update_report(report, summary)  # nothing new: nothing rewritten
    assert "noise 0.5" in markdown_table(suite_table(summary, "noise"))
