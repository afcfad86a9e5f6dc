"""Re-execute the analysis notebooks in place, so their committed outputs match results/.

    python scripts/execute_notebooks.py                          # every notebook in notebooks/
    python scripts/execute_notebooks.py notebooks/02_nopeek.ipynb

Run it after `scripts/run_experiments.py` has changed the results. Each notebook runs top
to bottom in its own folder; it is rewritten only if every cell succeeded, so a failing
notebook keeps its previous outputs and the script exits with one line naming the notebook
and its error.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from dpsnn.cli import ArgumentParser, positive_int, run
from dpsnn.errors import DpsnnError
from dpsnn.files import atomic_path

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def execute_in_place(path: Path, timeout: int) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        # The kernel's own start-up warnings are not the notebook's output.
        client.execute(stderr=subprocess.DEVNULL)
    except CellExecutionError as error:
        raise DpsnnError(f"{path.name} failed, left unchanged: {error.ename}: {error.evalue}") from None
    except (CellTimeoutError, DeadKernelError) as error:
        raise DpsnnError(f"{path.name} failed, left unchanged: {type(error).__name__}") from None
    for cell in notebook.cells:
        # Timings would make every re-run a diff.
        cell.metadata.pop("execution", None)
    with atomic_path(path) as partial:
        nbformat.write(notebook, str(partial))


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    parser.add_argument("--timeout", type=positive_int, default=600, help="seconds one cell may take")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    for path in paths:
        if not path.is_file() or path.suffix != ".ipynb":
            raise DpsnnError(f"not a notebook: {path}")
    for path in paths:
        execute_in_place(path.resolve(), args.timeout)
        print(f"executed {path}")


if __name__ == "__main__":
    run(main)
