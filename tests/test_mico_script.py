"""scripts/mico.py through its own ``main`` and ``run`` in this process: score a tree, zip a submission.

Bad input must give one line on stderr, a non-zero exit and no file.
"""

from __future__ import annotations

import re
import runpy
import sys
import zipfile
from pathlib import Path

import pytest
from test_mico_folders import ERRORS, SHIFTS, TASK, corrupt, spoilt_tree, write_tree

from dpsnn.cli import run
from dpsnn.mico.folders import AVERAGE, ROW_COLUMNS, SCORES_FILE
from dpsnn.mico.scoring import SCORE_KEYS, ranking_figure, score
from dpsnn.results import read_table

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "mico.py"


@pytest.fixture(scope="module")
def main():
    return runpy.run_path(str(REPO / "scripts" / SCRIPT))["main"]


def scoring(root: Path, results: Path, *extra: str) -> list[str]:
    return ["score", "--solutions", str(root), "--predictions", str(root / TASK), "--results-dir", str(results), *extra]


def one_line_error(main, argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """The exit code and the one line on stderr of a run that fails."""
    monkeypatch.setattr(sys, "argv", [SCRIPT])
    with pytest.raises(SystemExit) as exited:
        run(main, argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.match(rf"{SCRIPT}( \w+)?: error: ", lines[0]), lines[0]
    return exited.value.code, lines[0]


def test_score_prints_and_writes_every_score_with_its_se(main, tmp_path, capsys):
    arrays = write_tree(tmp_path / "mico", tmp_path / "mico")
    results = tmp_path / "results"
    assert main(scoring(tmp_path / "mico", results, "--n-bootstrap", "20", "--seed", "3")) == 0
    out = capsys.readouterr().out
    header, rows = read_table(results / "scores.csv")
    assert header == list(ROW_COLUMNS)
    assert [row["scenario"] for row in rows] == [*sorted(SHIFTS), AVERAGE]
    assert {(row["task"], row["phases"], row["n_bootstrap"], row["seed"]) for row in rows} == {
        (TASK, "train", "20", "3")
    }
    for row in rows:
        for key in SCORE_KEYS:
            assert f"{float(row[key]):.4f} ± {float(row[key + '_se']):.4f}" in out, (row["scenario"], key)
            assert float(row[key + "_ci_low"]) <= float(row[key]) <= float(row[key + "_ci_high"])
        assert row["models"] in out and row["points"] in out
        if row["scenario"] != AVERAGE:
            assert float(row["AUC"]) == pytest.approx(score(*arrays[row["scenario"]])["AUC"], abs=1e-6)
    ranking = ranking_figure({name: score(*pair) for name, pair in arrays.items()})
    assert float(rows[-1]["TPR_FPR_1000"]) == pytest.approx(ranking, abs=1e-6)
    assert f"ranking figure (average TPR_FPR_1000): {ranking:.4f} ± " in out
    text = (results / SCORES_FILE).read_text()
    assert text.splitlines()[0].startswith("scenario1_AUC: ") and text.endswith(f"average_TPR_FPR_1000: {ranking}")
    assert f"wrote {results / SCORES_FILE} and {results / 'scores.csv'}" in out


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_a_bad_model_is_one_line_naming_it_and_nothing_is_written(case, main, tmp_path, capsys, monkeypatch):
    folder = spoilt_tree(tmp_path / "mico", case)
    results = tmp_path / "results"
    code, line = one_line_error(main, scoring(tmp_path / "mico", results, "--n-bootstrap", "2"), capsys, monkeypatch)
    assert code == 1 and str(folder) in line and ERRORS[case] in line
    assert not results.exists()


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--n-bootstrap", "1"], "--n-bootstrap: needs at least 2 resamples, got 1"),
        (["--phase", "test"], "argument --phase: invalid choice: 'test'"),
        (["--seed", "-1"], "argument --seed: must be a non-negative integer"),
    ],
)
def test_bad_flags_are_usage_errors(flags, says, main, tmp_path, capsys, monkeypatch):
    code, line = one_line_error(main, scoring(tmp_path, tmp_path / "results", *flags), capsys, monkeypatch)
    assert code == 2 and says in line
    assert not (tmp_path / "results").exists()


def test_submit_zips_the_dev_and_final_predictions(main, tmp_path, capsys, monkeypatch):
    phases = {"train": ("solution", "prediction"), "dev": ("prediction",), "final": ("prediction",)}
    write_tree(tmp_path / "mico", tmp_path / "mico", phases)
    output = tmp_path / "out" / "submission.zip"
    assert main(["submit", "--predictions", str(tmp_path / "mico" / TASK), "--output", str(output)]) == 0
    with zipfile.ZipFile(output) as archive:
        names = archive.namelist()
    expected = [
        f"{TASK}/{scenario}/{phase}/model_{index}/prediction.csv"
        for scenario in sorted(SHIFTS)
        for phase, indices in (("dev", range(100, 103)), ("final", range(150, 153)))
        for index in indices
    ]
    assert names == expected
    assert f"wrote {len(expected)} predictions to {output}" in capsys.readouterr().out

    corrupt(tmp_path / "mico" / TASK / "cifar10_lo" / "final" / "model_151", "above-one")
    output.unlink()
    code, line = one_line_error(
        main, ["submit", "--predictions", str(tmp_path / "mico" / TASK), "--output", str(output)], capsys, monkeypatch
    )
    assert code == 1 and "cifar10_lo/final/model_151/prediction.csv: score 0 is 1.5" in line
    assert not output.exists()
