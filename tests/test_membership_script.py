"""scripts/membership_inference.py as a user runs it: a subprocess on a tiny saved model.

One module fixture saves an (untrained) reference split network and runs, as
subprocesses side by side, a good run (whose results table is checked) and a bad input.
Every bad input must give one line on stderr, a non-zero exit and no file; the
others run through the script's own ``main`` and ``run`` in this process (starting a
script costs seconds), with the same checks.
"""

from __future__ import annotations

import math
import os
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dpsnn.checkpoints import save_checkpoint
from dpsnn.cli import run
from dpsnn.models import SplitNN
from dpsnn.results import read_table

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "membership_inference.py"
MODEL = "tiny_0noise_epoch=00.ckpt"
GOOD = [
    "--model", "tiny", "--candidates", "40", "--aux-size", "64", "--bootstrap", "20",
    "--attack", "membership-threshold", "--attack", "lira:shadow_models=2,epochs=1,batch_size=64",
    "--fpr", "0.5", "--fpr", "0.05",
]  # fmt: skip
#: case -> (arguments, what the one error line must contain)
BAD = {
    "unknown-attack": (["--model", "tiny", "--attack", "no-such-attack"], ["'no-such-attack'", "lira"]),
    "inversion-attack": (["--model", "tiny", "--attack", "decoder"], ["'decoder' is not a membership attack"]),
    "lira-one-shadow": (["--model", "tiny", "--attack", "lira:shadow_models=1"], ["at least 2 shadow models"]),
    "fpr-above-one": (["--model", "tiny", "--fpr", "1.5"], ["--fpr", "strictly between 0 and 1"]),
    "fpr-zero": (["--model", "tiny", "--fpr", "0"], ["--fpr", "strictly between 0 and 1"]),
    "unknown-model": (["--model", "missing"], ["no checkpoint named 'missing'", MODEL]),
    "too-many-candidates": (["--model", "tiny", "--candidates", "301"], ["--candidates 301", "training split (300"]),
}
AS_SUBPROCESS = ("lira-one-shadow",)


def folders(classifiers: Path, results: Path, data: Path) -> list[str]:
    return ["--classifiers-dir", str(classifiers), "--results-dir", str(results), "--data-dir", str(data)]


def run_script(args: list[str], classifiers: Path, results: Path, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"scripts/{SCRIPT}", *folders(classifiers, results, data), "--no-progress", *args],
        cwd=REPO,
        env={**os.environ, "DPSNN_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """A folder holding one saved classifier, :data:`MODEL`."""
    folder = tmp_path_factory.mktemp("classifiers")
    save_checkpoint(SplitNN(dataset="fashion-mnist", seed=0, train_size=300), folder / MODEL, "classifier", 0)
    return folder


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, classifiers, data_root):
    """case -> (its results folder, the completed process)."""
    cases = {"good": GOOD, **{case: BAD[case][0] for case in AS_SUBPROCESS}}
    with ThreadPoolExecutor(2) as pool:
        futures = {}
        for case, args in cases.items():
            results = tmp_path_factory.mktemp(case)
            futures[case] = (results, pool.submit(run_script, args, classifiers, results, data_root))
        return {case: (results, future.result()) for case, (results, future) in futures.items()}


def test_a_run_writes_every_metric_with_its_interval(outcomes):
    results, done = outcomes["good"]
    assert done.returncode == 0, done.stderr[-3000:]
    header, rows = read_table(results / "membership.csv")
    metrics = ["auc", "tpr_at_fpr_0_05", "tpr_at_fpr_0_5", "advantage"]
    assert header[-16:] == [f"{m}{suffix}" for m in metrics for suffix in ("", "_se", "_ci_low", "_ci_high")]
    assert [row["attack"].split("(")[0] for row in rows] == ["membership-threshold", "lira"]
    assert "shadow_models=2" in rows[1]["attack"] and "mode=online" in rows[1]["attack"]
    for row in rows:
        assert (row["model"], row["dataset"], row["architecture"], row["defences"]) == (
            MODEL,
            "fashion-mnist",
            "reference",
            "none",
        )
        assert (row["n_members"], row["n_non_members"], row["aux_size"], row["seed"]) == ("40", "40", "64", "0")
        assert "shadow data" in row["threat_model"]
        for metric in metrics:
            value, low, high, se = (float(row[metric + suffix]) for suffix in ("", "_ci_low", "_ci_high", "_se"))
            assert 0 <= low <= value <= high <= 1 and math.isfinite(se) and se >= 0
    assert "wrote 2 rows" in done.stdout
    for name in ("auc", "tpr_at_fpr_0_05", "advantage", "95% interval"):
        assert name in done.stdout


def check_one_line(case: str, returncode: int, stderr: str, results: Path) -> None:
    assert returncode != 0
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(f"{SCRIPT}: error: "), lines[0]
    for part in BAD[case][1]:
        assert part in lines[0], f"{part!r} is not in: {lines[0]}"
    assert not any(results.iterdir()), sorted(results.iterdir())


@pytest.mark.parametrize("case", AS_SUBPROCESS)
def test_bad_input_gives_one_line_and_writes_nothing(case, outcomes):
    results, done = outcomes[case]
    check_one_line(case, done.returncode, done.stderr, results)


@pytest.mark.parametrize("case", sorted(set(BAD) - set(AS_SUBPROCESS)))
def test_more_bad_input_through_main(case, classifiers, data_root, tmp_path, capsys, monkeypatch):
    main = runpy.run_path(str(REPO / "scripts" / SCRIPT))["main"]
    monkeypatch.setattr(sys, "argv", [SCRIPT])
    with pytest.raises(SystemExit) as exited:
        run(main, [*folders(classifiers, tmp_path, data_root), *BAD[case][0]])
    check_one_line(case, exited.value.code, capsys.readouterr().err, tmp_path)
