"""scripts/execute_notebooks.py rewrites a notebook with fresh outputs, and leaves a failing one alone."""

import runpy
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dpsnn.cli import run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def execute(capsys, monkeypatch):
    """Run scripts/execute_notebooks.py's ``main`` in this process, as its command line does (the kernel is a
    process of its own either way); return its exit status and output."""
    main = runpy.run_path(str(REPO / "scripts" / "execute_notebooks.py"))["main"]
    monkeypatch.setattr(sys, "argv", ["execute_notebooks.py"])

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            run(main, list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, exited.value.code, captured.out, captured.err)

    return call


def write_notebook(path: Path, *sources: str) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    nbformat.write(notebook, path)


def test_outputs_are_written_in_place_without_timings(tmp_path, execute):
    path = tmp_path / "sums.ipynb"
    # The notebook runs in its own folder: it can read files beside it.
    (tmp_path / "numbers.txt").write_text("2 3\n")
    write_notebook(path, "from pathlib import Path", "print(sum(map(int, Path('numbers.txt').read_text().split())))")

    result = execute(str(path))

    assert result.returncode == 0, result.stderr
    cells = nbformat.read(path, as_version=4).cells
    assert cells[1].outputs[0]["text"] == "5\n"
    assert all("execution" not in cell.metadata for cell in cells)


def test_a_failing_notebook_is_left_unchanged_with_one_line(tmp_path, execute):
    path = tmp_path / "broken.ipynb"
    write_notebook(path, "print('fine')", "raise ValueError('no results here')")
    before = path.read_bytes()

    result = execute(str(path))

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "broken.ipynb" in result.stderr and "no results here" in result.stderr
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_a_cell_past_the_timeout_gives_one_line_and_no_change(tmp_path, execute):
    path = tmp_path / "slow.ipynb"
    write_notebook(path, "import time; time.sleep(60)")
    before = path.read_bytes()

    result = execute(str(path), "--timeout", "2")

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "execute_notebooks.py: error: slow.ipynb failed, left unchanged: CellTimeoutError"
    ]
    assert path.read_bytes() == before


def test_a_path_that_is_not_a_notebook_gives_one_line(tmp_path, execute):
    missing = tmp_path / "missing.ipynb"
    result = execute(str(missing))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"execute_notebooks.py: error: not a notebook: {missing}"]
