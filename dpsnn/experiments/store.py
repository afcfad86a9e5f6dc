"""The record of finished runs: ``runs.csv`` in a results folder, one row per run and seed.

The table has one stable schema (version :data:`SCHEMA_VERSION`): the run's identity and
bookkeeping (:data:`RUN_COLUMNS`: the defences as a canonical string, the attack's spec,
the rest of the setting as JSON in ``params``), then one column per metric, each with its
``_se`` twin. A row naming a metric the table lacks adds that column (earlier rows are
empty there), so a new defence or attack adds rows, never a schema that voids the table.
A table of schema 1 (the noise/NoPeek columns of earlier versions) is migrated by
:func:`migrate_v1`, its numbers carried over unchanged; any other table is refused.

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

import math
import numbers
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpsnn.errors import DpsnnError, ResultsError
from dpsnn.experiments.suites import RunConfig
from dpsnn.files import atomic_path, release_lock, try_lock
from dpsnn.results import format_cell, read_table, write_table

if TYPE_CHECKING:
    from torch import Tensor

SCHEMA_VERSION = 2
RUNS_FILE = "runs.csv"
SAMPLES_DIR = "samples"
LOCK_FILE = ".lock"

# The configuration of a run but its seed: runs with equal values are seeds of one setting.
SETTING_COLUMNS = ("dataset", "architecture", "defences", "attack", "params")
RUN_COLUMNS = (
    "schema_version",
    "key",
    "status",  # "ok" or "diverged"
    "budget",
    "suites",  # every suite whose grid holds this configuration, space-separated
    "dataset",
    "seed",
    "architecture",
    "defences",  # canonical: laplace(scale=0.5)+nopeek(weight=0.1), or none
    "attack",  # the attack's spec: decoder
    "params",  # JSON, sorted keys: aux_source, aux_size, test_classes[, inference_defences]
    "n_aux",
    "n_test",  # the images the attack is scored on: test images, or a membership attack's candidates
    "best_epoch",
    "model_seconds",  # 0 when the model was already trained by an earlier run
    "attack_seconds",
    "code",  # the commit of the code that measured it
    "note",
)
# The metrics every table starts with (each also has a ``_se`` column: the standard error
# within the run, over test images or over batches for dCor); others are added as named.
MODEL_METRICS = ("accuracy", "dcor")
ATTACK_METRICS = ("mse", "psnr", "ssim", "dcor", "validator_acc")
ATTACK_COLUMNS = tuple(f"{who}_{m}" for who in ("attack", "baseline", "gap") for m in ATTACK_METRICS) + (
    "validator_acc_originals",
)
STANDARD_METRICS = (*MODEL_METRICS, *ATTACK_COLUMNS)
INTEGER_COLUMNS = ("schema_version", "seed")
NUMERIC_COLUMNS = frozenset({*INTEGER_COLUMNS, "n_aux", "n_test", "best_epoch", "model_seconds", "attack_seconds"})
METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def metric_columns(metrics: Iterable[str]) -> list[str]:
    """``[m, m_se, ...]`` for each metric."""
    return [column for metric in metrics for column in (metric, f"{metric}_se")]


def metrics_of(header: Sequence[str]) -> list[str]:
    """The metrics a table (or row) names, in order: every column past the fixed ones, less the ``_se`` twins."""
    columns = [c for c in header if c not in RUN_COLUMNS]
    return [c for c in columns if not (c.endswith("_se") and c[: -len("_se")] in columns)]


# -- schema 1 ----------------------------------------------------------------------------

V1_METRIC_COLUMNS = tuple(metric_columns(STANDARD_METRICS))
V1_COLUMNS = (
    "schema_version",
    "key",
    "status",
    "budget",
    "suites",
    "dataset",
    "seed",
    "noise_scale",
    "nopeek_weight",
    "wire_noise",
    "aux_source",
    "aux_size",
    "test_classes",
    "n_aux",
    "n_test",
    "best_epoch",
    *V1_METRIC_COLUMNS,
    "model_seconds",
    "attack_seconds",
    "code",
    "note",
)
V1_KEPT = (
    "status",
    "budget",
    "suites",
    "n_aux",
    "n_test",
    "best_epoch",
    "model_seconds",
    "attack_seconds",
    "code",
    "note",
)


def v1_config(row: Mapping[str, str]) -> RunConfig:
    """The configuration of a schema-1 row: Laplace noise and NoPeek specs, post-training noise on the wire."""
    noise, nopeek, wire = (float(row[c]) for c in ("noise_scale", "nopeek_weight", "wire_noise"))
    return RunConfig(
        dataset=row["dataset"],
        seed=int(row["seed"]),
        defences=({"name": "laplace", "params": {"scale": noise}}, {"name": "nopeek", "params": {"weight": nopeek}}),
        inference_defences=None if wire == noise else ({"name": "laplace", "params": {"scale": wire}},),
        aux_source=row["aux_source"],
        aux_size=int(row["aux_size"]),
        test_classes=row["test_classes"],
    )


def migrate_v1(folder: str | Path) -> str | None:
    """Convert ``folder``'s schema-1 ``runs.csv`` to schema 2; return the line saying so, or None.

    Each row's configuration is rebuilt from its noise, NoPeek, wire-noise and attacker
    columns and re-keyed; every other cell (every measured number) is carried over as
    the very same text. Kept reconstructions ``samples/<old key>.pt`` are renamed to the
    new keys, then the table is replaced atomically; run again after an interruption, it
    finishes the job, and on a table already at schema 2 it does nothing (None). A
    malformed table is a :class:`ResultsError` and nothing is changed. The caller holds
    the folder's lock (:class:`RunStore` and :func:`upgrade` do).
    """
    folder = Path(folder)
    path = folder / RUNS_FILE
    header, rows = read_table(path)
    if tuple(header) != V1_COLUMNS:
        return None
    converted, renames = [], []
    for number, row in enumerate(rows, start=2):
        if row.get("schema_version") != "1" or None in row or any(value is None for value in row.values()):
            raise ResultsError(f"{path} line {number} is not a schema-1 row; nothing was migrated")
        try:
            config = v1_config(row)
        except (ValueError, DpsnnError) as error:
            raise ResultsError(f"{path} line {number} is malformed ({error}); nothing was migrated") from None
        new = {"schema_version": str(SCHEMA_VERSION), "key": config.key, **config.as_row()}
        new |= {column: row[column] for column in (*V1_KEPT, *V1_METRIC_COLUMNS)}
        converted.append(new)
        renames.append((row["key"], config.key))
    keys = [new for _, new in renames]
    if len(set(keys)) != len(keys) or len({old for old, _ in renames}) != len(renames):
        raise ResultsError(f"{path} records one setting twice; nothing was migrated")
    samples = folder / SAMPLES_DIR
    for old, new in renames:
        source, target = samples / f"{old}.pt", samples / f"{new}.pt"
        if source.is_file() and not target.exists():
            os.replace(source, target)
    write_table(path, converted, [*RUN_COLUMNS, *V1_METRIC_COLUMNS])
    return f"migrated {path} from results schema 1 to {SCHEMA_VERSION}"


# -- schema 2 ----------------------------------------------------------------------------


def _unknown_schema(path: Path, rows: Sequence[Mapping[str, Any]]) -> ResultsError:
    versions = sorted({str(row.get("schema_version", "?")) for row in rows}) or ["?"]
    return ResultsError(
        f"{path} was written by another version of the results schema (version {', '.join(versions)}, "
        f"this is {SCHEMA_VERSION}); move it aside or use another --results-dir"
    )


def check_table(path: Path, header: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """:class:`ResultsError` unless ``header`` and ``rows`` are a well-formed schema-2 table."""
    extra = list(header[len(RUN_COLUMNS) :])
    pairs = extra[0::2], extra[1::2]
    if (
        tuple(header[: len(RUN_COLUMNS)]) != RUN_COLUMNS
        or len(extra) % 2
        or any(se != f"{metric}_se" or not METRIC_NAME.match(metric) for metric, se in zip(*pairs, strict=True))
        or any(str(row.get("schema_version")) != str(SCHEMA_VERSION) for row in rows)
    ):
        raise _unknown_schema(path, rows)
    if any(None in row or any(value is None for value in row.values()) for row in rows):
        raise ResultsError(f"{path} has a row with more or fewer cells than columns; move it aside or fix it")


def _parse(row: Mapping[str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for column, text in row.items():
        if column in NUMERIC_COLUMNS or column not in RUN_COLUMNS:
            parsed[column] = float(text) if text not in ("", None) else math.nan
        else:
            parsed[column] = text
    for column in INTEGER_COLUMNS:
        if not math.isnan(parsed.get(column, math.nan)):
            parsed[column] = int(parsed[column])
    return parsed


def _parse_all(path: Path, rows: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    try:
        return [_parse(row) for row in rows]
    except ValueError as error:
        raise ResultsError(f"{path} has a malformed number ({error}); move it aside or fix it") from None


def _locked(folder: Path) -> Any:
    lock = try_lock(folder / LOCK_FILE)
    if lock is None:
        raise ResultsError(f"another run is writing {folder} (it holds {folder / LOCK_FILE})")
    return lock


def upgrade(folder: str | Path) -> str | None:
    """Migrate ``folder``'s ``runs.csv`` to the current schema under the folder's lock; the line saying so, or None.

    A missing table, or one already current, is left alone (and no lock is taken); a
    table of an unknown schema is a :class:`ResultsError`.
    """
    folder = Path(folder)
    header, rows = read_table(folder / RUNS_FILE)
    if tuple(header) != V1_COLUMNS:
        if header:
            check_table(folder / RUNS_FILE, header, rows)
        return None
    lock = _locked(folder)
    try:
        return migrate_v1(folder)
    finally:
        release_lock(lock)


def read_runs(folder: str | Path) -> list[dict[str, Any]]:
    """The finished runs recorded in ``folder`` (numbers parsed), or ``[]``.

    A schema-1 table is migrated first (one line on stdout says so); a table of any other
    schema is a :class:`ResultsError`.
    """
    path = Path(folder) / RUNS_FILE
    header, rows = read_table(path)
    if tuple(header) == V1_COLUMNS:
        message = upgrade(folder)
        if message:
            print(message, file=sys.stdout)
        header, rows = read_table(path)
    if not header:
        return []
    check_table(path, header, rows)
    return _parse_all(path, rows)


class RunStore:
    """The runs table of one results folder, held under an exclusive lock.

    Entering it migrates a schema-1 table (``migrated`` then holds the line saying so).
    ``read_also`` names other results folders whose runs count as finished here too, read
    once on entering and never written (a shard's view of the merged table it adds to).
    """

    def __init__(self, folder: str | Path, read_also: Sequence[str | Path] = ()) -> None:
        self.folder = Path(folder)
        self.read_also = [Path(other) for other in read_also]
        self._others: list[dict[str, Any]] = []
        self.path = self.folder / RUNS_FILE
        self.migrated: str | None = None
        self._lock_file: Any = None
        self._rows: list[dict[str, Any]] = []
        self._header: list[str] = []

    def __enter__(self) -> RunStore:
        self._lock_file = _locked(self.folder)
        try:
            self.migrated = migrate_v1(self.folder)
            header, rows = read_table(self.path)
            if header:
                check_table(self.path, header, rows)
            self._header, self._rows = list(header), _parse_all(self.path, rows)
            self._others = [row for other in self.read_also for row in read_runs(other)]
        except BaseException:
            release_lock(self._lock_file)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        release_lock(self._lock_file)

    @property
    def metrics(self) -> list[str]:
        """The metrics the table has columns for."""
        return metrics_of(self._header) if self._header else list(STANDARD_METRICS)

    def finished(self) -> set[str]:
        """The keys of the runs recorded here (or in the ``read_also`` folders)."""
        return {row["key"] for row in (*self._rows, *self._others)}

    def get(self, key: str) -> dict[str, Any] | None:
        """The run ``key`` as recorded here (or in the ``read_also`` folders), or None."""
        return next((row for row in (*self._rows, *self._others) if row["key"] == key), None)

    def add(self, row: Mapping[str, Any]) -> None:
        """Record one finished run; the table on disk is replaced atomically.

        Every column past :data:`RUN_COLUMNS` is a metric: a number (NaN when not
        measured). A metric the table lacks adds its column and ``_se`` twin at the end.
        """
        if row["key"] in self.finished():
            raise ResultsError(f"run {row['key']} is already recorded in {self.path} or a folder it reads")
        metrics: list[str] = []
        for column in (c for c in row if c not in RUN_COLUMNS):
            value = row[column]
            if not METRIC_NAME.match(column) or isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ResultsError(f"a run row has a column that is not a metric (a number): {column}={value!r}")
            metric = column.removesuffix("_se")
            if metric not in metrics:
                metrics.append(metric)
        header = list(self._header) or [*RUN_COLUMNS, *metric_columns(STANDARD_METRICS)]
        header += [c for c in metric_columns(metrics) if c not in header]
        row = {"schema_version": SCHEMA_VERSION, **row}
        write_table(self.path, [*self._raw_rows(), row], header)
        # Parse what was written, so the row in memory equals the row on disk.
        self._header = header
        self._rows = [{c: old.get(c, math.nan) for c in header} for old in self._rows]
        self._rows.append(_parse({column: str(format_cell(row.get(column, ""))) for column in header}))

    def merge(self, folder: str | Path) -> tuple[int, int]:
        """Add the runs recorded in another results folder (a shard's) that this table lacks; ``(added, skipped)``.

        ``folder``'s table is checked as any table is read; a run whose key is here already
        is skipped, never recorded twice (shards that each ran a run another needed hold it
        twice). The added runs' kept samples are copied along; the table is written once,
        atomically, so an interrupted merge leaves it as it was.
        """
        folder = Path(folder)
        source = folder / RUNS_FILE
        header, rows = read_table(source)
        if not header:
            return 0, 0
        check_table(source, header, rows)
        _parse_all(source, rows)  # every number readable, before anything is written
        finished, new = self.finished(), []
        for row in rows:
            if row["key"] not in finished:
                finished.add(row["key"])
                new.append(row)
        if new:
            for row in new:
                samples = folder / SAMPLES_DIR / f"{row['key']}.pt"
                if samples.is_file():
                    with atomic_path(self.folder / SAMPLES_DIR / samples.name) as partial:
                        shutil.copyfile(samples, partial)
            columns = list(self._header) or list(header)
            columns += [column for column in header if column not in columns]
            write_table(self.path, [*self._raw_rows(), *new], columns)
            self._header, raw = columns, read_table(self.path)[1]
            self._rows = _parse_all(self.path, raw)
        return len(new), len(rows) - len(new)

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


def load_samples(results_dir: str | Path, key: str) -> dict[str, Tensor] | None:
    """The kept reconstructions of run ``key`` (tensors only, loaded without running code), or None."""
    import torch  # only here: reading the tables needs no torch

    path = Path(results_dir) / SAMPLES_DIR / f"{key}.pt"
    if not path.is_file():
        return None
    return {name: images.float() for name, images in torch.load(path, map_location="cpu", weights_only=True).items()}


__all__ = [
    "load_samples",
    "RUN_COLUMNS",
    "RunStore",
    "SCHEMA_VERSION",
    "current_code_version",
    "migrate_v1",
    "read_runs",
    "upgrade",
]
