"""The record of finished runs: ``runs.csv`` in a results folder, one row per run and seed.

Rows are added by rewriting the whole table into a temporary file and renaming it into
place, so a run killed at any moment leaves the table as it was: a finished run is never
lost and a half-finished one is never recorded. A run already in the table is never
added twice. A lock file keeps two runners from writing one folder at once. Example::

    from dpsnn.experiments.store import RunStore

    with RunStore("results/experiments") as store:
        if "some-key" not in store.finished():
            store.add({"key": "some-key", "seed": 0, "status": "ok", ...})
"""

from __future__ import annotations

import fcntl
import math
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dpsnn.errors import ResultsError
from dpsnn.results import format_cell, read_table, write_table

SCHEMA_VERSION = 1
RUNS_FILE = "runs.csv"

# What is measured about each run (every one also has a ``_se`` column: the standard
# error within the run, over test images or over batches for dCor).
MODEL_METRICS = ("accuracy", "dcor")
ATTACK_METRICS = ("mse", "psnr", "ssim", "dcor", "validator_acc")
ATTACK_COLUMNS = tuple(f"{who}_{m}" for who in ("attack", "baseline", "gap") for m in ATTACK_METRICS) + (
    "validator_acc_originals",
)
METRIC_COLUMNS = tuple(c for m in (*MODEL_METRICS, *ATTACK_COLUMNS) for c in (m, f"{m}_se"))
CONFIG_COLUMNS = (
    "dataset",
    "seed",
    "noise_scale",
    "nopeek_weight",
    "wire_noise",
    "aux_source",
    "aux_size",
    "test_classes",
)
RUN_COLUMNS = (
    "schema_version",
    "key",
    "status",  # "ok" or "diverged"
    "budget",
    "suites",  # every suite whose grid holds this configuration, space-separated
    *CONFIG_COLUMNS,
    "n_aux",
    "n_test",
    "best_epoch",
    *METRIC_COLUMNS,
    "model_seconds",  # 0 when the model was already trained by an earlier run
    "attack_seconds",
    "code",  # the commit of the code that measured it
    "note",
)
NUMERIC_COLUMNS = frozenset(
    {"schema_version", "seed", "noise_scale", "nopeek_weight", "wire_noise", "aux_size", "n_aux", "n_test"}
    | {"best_epoch", "model_seconds", "attack_seconds", *METRIC_COLUMNS}
)


def _parse(row: Mapping[str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for column, text in row.items():
        if column in NUMERIC_COLUMNS:
            parsed[column] = float(text) if text not in ("", None) else math.nan
        else:
            parsed[column] = text
    for column in ("seed", "aux_size", "schema_version"):
        if not math.isnan(parsed.get(column, math.nan)):
            parsed[column] = int(parsed[column])
    return parsed


def read_runs(folder: str | Path) -> list[dict[str, Any]]:
    """The finished runs recorded in ``folder`` (numbers parsed), or ``[]``.

    Raises :class:`ResultsError` for a table written with another version of the schema.
    """
    path = Path(folder) / RUNS_FILE
    header, rows = read_table(path)
    if header and tuple(header) != RUN_COLUMNS:
        versions = sorted({row.get("schema_version", "?") for row in rows}) or ["?"]
        raise ResultsError(
            f"{path} was written by another version of the results schema (version {', '.join(versions)}, "
            f"this is {SCHEMA_VERSION}); move it aside or use another --results-dir"
        )
    try:
        return [_parse(row) for row in rows]
    except ValueError as error:
        raise ResultsError(f"{path} has a malformed number ({error}); move it aside or fix it") from None


class RunStore:
    """The runs table of one results folder, held under an exclusive lock."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RUNS_FILE
        self._lock_file: Any = None
        self._rows: list[dict[str, Any]] = []

    def __enter__(self) -> RunStore:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = (self.folder / ".lock").open("w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ResultsError(f"another run is writing {self.folder} (it holds {self.folder / '.lock'})") from None
        self._rows = read_runs(self.folder)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()

    def finished(self) -> set[str]:
        return {row["key"] for row in self._rows}

    def get(self, key: str) -> dict[str, Any] | None:
        return next((row for row in self._rows if row["key"] == key), None)

    def add(self, row: Mapping[str, Any]) -> None:
        """Record one finished run; the table on disk is replaced atomically."""
        if row["key"] in self.finished():
            raise ResultsError(f"run {row['key']} is already recorded in {self.path}")
        extra = set(row) - set(RUN_COLUMNS)
        if extra:
            raise ResultsError(f"a run row has columns the schema lacks: {', '.join(sorted(extra))}")
        row = {"schema_version": SCHEMA_VERSION, **row}
        write_table(self.path, [*self._raw_rows(), row], list(RUN_COLUMNS))
        # Parse what was written, so the row in memory equals the row on disk.
        self._rows.append(_parse({column: str(format_cell(row.get(column, ""))) for column in RUN_COLUMNS}))

    def _raw_rows(self) -> list[dict[str, str]]:
        return read_table(self.path)[1]


def current_code_version(repo: str | Path | None = None) -> str:
    """The git commit of the working tree (``+dirty`` when it has changes), or the package version."""
    import dpsnn

    repo = Path(repo) if repo else Path(dpsnn.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", "dpsnn", "scripts"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"dpsnn-{dpsnn.__version__}"
    return commit + ("+dirty" if dirty else "")


__all__ = ["RUN_COLUMNS", "RunStore", "SCHEMA_VERSION", "current_code_version", "read_runs"]
