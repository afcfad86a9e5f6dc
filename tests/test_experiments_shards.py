"""Sharding the experiment grid (``run_experiments.py --shard K/N``) and merging the shards (``--merge``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_experiments_runner import TINY_FLAGS, run_in_process, script_in_process

from dpsnn.errors import ConfigError
from dpsnn.experiments.runner import Shard, shard_of
from dpsnn.experiments.store import RUNS_FILE, SAMPLES_DIR, RunStore, read_runs
from dpsnn.experiments.suites import FULL, QUICK, SUITES, RunConfig, expand_suites

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def every_config(budget, seeds=3):
    return [
        config
        for seed in range(seeds)
        for suite in expand_suites(["all"])
        for config in SUITES[suite].configs("fashion-mnist", budget, seed)
        + SUITES[suite].extension_configs("fashion-mnist", budget, seed)
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_run_of_the_grid_is_in_exactly_one_shard_with_the_other_runs_of_its_model(count):
    configs = every_config(FULL)
    shards = [Shard(index, count) for index in range(1, count + 1)]
    for config in configs:
        assert sum(shard.owns(config) for shard in shards) == 1
    by_model: dict[str, set[int]] = {}
    for config in configs:
        by_model.setdefault(config.model_key, set()).add(shard_of(config, count))
    assert all(len(owners) == 1 for owners in by_model.values())
    if count > 1:  # and the shards share the work out: none is empty
        assert {shard_of(config, count) for config in configs} == set(range(1, count + 1))


def test_the_shard_of_a_run_is_a_stable_hash_of_its_model():
    config = SUITES["plain"].configs("fashion-mnist", FULL, 0)[0]
    assert config.model_key == "fashion-mnist_seed0_reference_none"
    digest = hashlib.sha256(b"fashion-mnist_seed0_reference_none").digest()
    for count in (1, 2, 3, 5, 8):  # the same on every machine and Python, unlike hash()
        assert shard_of(config, count) == int.from_bytes(digest[:8], "big") % count + 1


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "a/b", "1/0", "-1/2", ""])
def test_a_malformed_shard_is_refused(text):
    with pytest.raises(ConfigError, match="K/N"):
        Shard.parse(text)


def test_shards_merged_hold_exactly_the_runs_of_one_unsharded_run(tmp_path, tiny_runner):
    suites, seeds = ["noise", "post-noise"], 2  # post-noise: several attacks on one model
    whole = tiny_runner(tmp_path / "whole")
    whole.run(suites, seeds)
    expected = {row["key"] for row in read_runs(whole.results_dir)}
    assert SUITES["noise"].grid(QUICK).extension  # a chain of extension values, decided in one shard

    merged_dir = tmp_path / "sharded" / "results"
    shard_keys = []
    for index in (1, 2):
        runner = tiny_runner(tmp_path / "sharded")
        runner.results_dir = merged_dir / "shards" / f"{index}-of-2"
        runner.shard = Shard(index, 2)
        runner.run(suites, seeds)
        shard_keys.append({row["key"] for row in read_runs(runner.results_dir)})
    assert shard_keys[0] | shard_keys[1] == expected
    with RunStore(merged_dir) as store:
        added = [store.merge(merged_dir / "shards" / f"{index}-of-2") for index in (1, 2)]
    rows = read_runs(merged_dir)
    assert sorted(row["key"] for row in rows) == sorted(expected)  # none lost, none twice
    assert sum(count for count, _ in added) == len(expected)
    assert sum(skipped for _, skipped in added) == len(shard_keys[0] & shard_keys[1])
    with RunStore(merged_dir) as store:  # merging again adds nothing
        assert store.merge(merged_dir / "shards" / "1-of-2") == (0, len(shard_keys[0]))
    kept = {path.name for path in (merged_dir / SAMPLES_DIR).glob("*.pt")}
    assert kept == {path.name for path in (whole.results_dir / SAMPLES_DIR).glob("*.pt")}


def test_the_script_runs_a_shard_into_its_folder_then_merges(tmp_path, data_root, monkeypatch, capsys):
    results = tmp_path / "results"
    common = ["plain", "--quick", *TINY_FLAGS, "--data-dir", str(data_root)]
    common += ["--results-dir", str(results), "--models-dir", str(tmp_path / "models")]
    code, captured = script_in_process([*common, "--merge"], monkeypatch, capsys)
    assert code == 1 and captured.err.strip().splitlines() == [
        f"run_experiments.py: error: no shard results under {results / 'shards'}/; run with --shard K/N first"
    ]
    run_in_process([*common, "--seeds", "1"], monkeypatch, capsys)  # seed 0 unsharded, into the merged table
    before = (results / RUNS_FILE).read_bytes()
    for index in (1, 2):
        out = run_in_process([*common, "--seeds", "2", "--shard", f"{index}/2"], monkeypatch, capsys)
        assert f"shard {index}/2:" in out and "--merge" in out
    assert (results / RUNS_FILE).read_bytes() == before  # a shard writes only its own folder
    sharded = []
    for index in (1, 2):
        for row in read_runs(results / "shards" / f"{index}-of-2"):
            assert shard_of(RunConfig.from_row(row), 2) == index
            sharded.append(row["seed"])
    assert sharded == [1]  # seed 0 was in the merged table already: no shard ran it again
    out = run_in_process([*common, "--seeds", "2", "--merge"], monkeypatch, capsys)
    written = sorted((results / "shards").glob(f"*/{RUNS_FILE}"))  # a shard that owned no run writes no table
    assert out.count("merged ") == len(written) == 1
    assert sorted(row["seed"] for row in read_runs(results)) == [0, 1] and (results / "summary.csv").is_file()


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--shard", "3/2"], "a shard is K/N with 1 <= K <= N, got 3/2"),
        (["--shard", "1/2", "--merge"], "merge and write tables in a separate call with --merge"),
        (["--shard", "1/2", "--tables-only"], "merge and write tables in a separate call with --merge"),
    ],
)
def test_bad_shard_flags_are_usage_errors(flags, expect, tmp_path, monkeypatch, capsys):
    code, captured = script_in_process(["plain", "--results-dir", str(tmp_path), *flags], monkeypatch, capsys)
    assert code == 2 and expect in captured.err
    assert list(Path(tmp_path).iterdir()) == []
