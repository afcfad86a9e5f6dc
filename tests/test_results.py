import csv
import subprocess
import sys

import pytest

from dpsnn.errors import ResultsError
from dpsnn.results import append_rows, format_measure, read_table, write_table


def test_append_keeps_earlier_rows(tmp_path):
    path = tmp_path / "t.csv"
    append_rows(path, [{"model": "a", "accuracy": 0.5, "accuracy_se": 0.01}])
    append_rows(path, [{"model": "b", "accuracy": 0.75, "accuracy_se": float("nan")}])
    header, rows = read_table(path)
    assert header == ["model", "accuracy", "accuracy_se"]
    assert [r["model"] for r in rows] == ["a", "b"]
    assert rows[1]["accuracy_se"] == ""
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_another_schema_is_refused_and_the_table_kept(tmp_path):
    path = tmp_path / "t.csv"
    write_table(path, [{"model": "a", "accuracy": 0.5}])
    before = path.read_text()
    with pytest.raises(ResultsError, match="another version of its schema"):
        append_rows(path, [{"model": "b", "ssim": 0.5}])
    assert path.read_text() == before


def test_rows_with_new_metrics_add_columns_when_they_say_what_they_are_alike(tmp_path, capsys):
    path = tmp_path / "t.csv"
    append_rows(path, [{"model": "a", "ssim": 0.5}], key_columns=("model",))
    append_rows(path, [{"model": "b", "ssim": 0.6, "l2_ratio": 0.3}], key_columns=("model",))
    assert "added the column(s) l2_ratio" in capsys.readouterr().out
    append_rows(path, [{"model": "c", "l2_ratio": 0.2}], key_columns=("model",))  # a metric fewer: left empty
    header, rows = read_table(path)
    assert header == ["model", "ssim", "l2_ratio"]
    assert [(r["model"], r["ssim"], r["l2_ratio"]) for r in rows] == [
        ("a", "0.5", ""),
        ("b", "0.6", "0.3"),
        ("c", "", "0.2"),
    ]
    before = path.read_text()
    with pytest.raises(ResultsError, match="another version of its schema"):  # other key columns: refused
        append_rows(path, [{"name": "d", "ssim": 0.5}], key_columns=("name",))
    assert path.read_text() == before


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("disk full")


def test_a_failed_write_leaves_the_old_table(tmp_path):
    path = tmp_path / "t.csv"
    write_table(path, [{"a": 1}])
    with pytest.raises(RuntimeError, match="disk full"):
        write_table(path, [{"a": 2}, {"a": Unprintable()}])  # fails after the first row is written
    with pytest.raises(ResultsError, match="columns the table lacks: b"):
        write_table(path, [{"a": 2, "b": 3}], columns=["a"])
    with path.open() as file:
        assert list(csv.DictReader(file)) == [{"a": "1"}]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_format_measure():
    assert format_measure({"x": 0.91234, "x_se": 0.004}, "x") == "0.9123 ± 0.0040"
    assert format_measure({"x": 1.0}, "x", digits=1) == "1.0"


def test_plots_change_no_process_wide_state(tmp_path):
    """Importing dpsnn.plots and drawing with it chooses no backend and loads no pyplot."""
    code = (
        "import sys, matplotlib, torch\n"
        "from dpsnn import plots\n"
        "path = plots.reconstruction_grid({'a': torch.rand(2, 1, 8, 8)}, sys.argv[1], title='t')\n"
        "assert path.stat().st_size > 0\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
        "assert matplotlib.rcParams._get_backend_or_none() is None, 'a backend was chosen'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "grid.png")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")
