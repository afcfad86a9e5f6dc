"""CSV tables under ``results/``, written atomically.

A table is rewritten whole into a temporary file and renamed into place, so a reader
never sees half a file and an interrupted write loses nothing already there. Example::

    from dpsnn.results import append_rows

    append_rows("results/train_model.csv", [{"model": "demo", "val_accuracy": 0.9, "val_accuracy_se": 0.01}])
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dpsnn.errors import ResultsError
from dpsnn.files import atomic_path

RESULTS_DIR = Path("results")
FIGURES_DIR = RESULTS_DIR / "figures"


def _columns(rows: list[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    return columns


def format_cell(value: Any) -> Any:
    """How a value is written into a CSV table: floats to 6 significant figures, NaN as empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a CSV table (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return [], []
    try:
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise ResultsError(f"{path} cannot be read as a CSV table ({error}); move it aside and re-run") from None


def write_table(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: list[str] | None = None) -> Path:
    """Replace ``path`` with ``rows`` (atomically)."""
    rows = list(rows)
    columns = columns or _columns(rows)
    extra = set(_columns(rows)) - set(columns)
    if extra:
        raise ResultsError(f"rows for {path} have columns the table lacks: {', '.join(sorted(extra))}")
    with atomic_path(path) as partial, partial.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="raise")
        writer.writeheader()
        writer.writerows({key: format_cell(row.get(key, "")) for key in columns} for row in rows)
    return Path(path)


#: Turns a row of an older schema of a table into a row of its current columns.
Upgrade = Callable[[dict[str, str]], dict[str, Any]]


def _existing_rows(
    path: Path, columns: Sequence[str], legacy: Mapping[tuple[str, ...], Upgrade] | None, prefix_only: bool
) -> tuple[list[dict[str, Any]], bool]:
    """The rows already at ``path`` under ``columns`` (upgraded if under a ``legacy`` header), and whether upgraded."""
    header, rows = read_table(path)
    if not header:
        return [], False
    if (header[: len(columns)] if prefix_only else header) == list(columns):
        return list(rows), False
    for old, upgrade in (legacy or {}).items():
        if header[: len(old)] == list(old):
            return [upgrade(row) for row in rows], True
    raise ResultsError(
        f"{path} was written with other columns (another version of its schema); "
        "move it aside or write to another --results-dir"
    )


def check_columns(
    path: str | Path, columns: Sequence[str], legacy: Mapping[tuple[str, ...], Upgrade] | None = None
) -> None:
    """Before any work: :class:`ResultsError` unless the table at ``path`` is new or starts with ``columns``.

    A table that starts with a header of ``legacy`` (an older schema) passes too: it is
    upgraded when rows are appended.
    """
    _existing_rows(Path(path), columns, legacy, prefix_only=True)


def append_rows(
    path: str | Path,
    rows: Iterable[Mapping[str, Any]],
    legacy: Mapping[tuple[str, ...], Upgrade] | None = None,
    key_columns: Sequence[str] = (),
) -> Path:
    """Add ``rows`` to the table at ``path``; its columns must be the table's columns.

    Rows under a header of ``legacy`` (an older schema, by its first columns) are upgraded
    by its function first, with a line saying so. With ``key_columns`` (the columns that
    say what a row is, before its metrics), a table and rows that both start with them may
    differ in their metrics: the table gains the new metric columns (empty in its earlier
    rows), with a line saying so. Any other header is a :class:`ResultsError`.
    """
    path, rows = Path(path), list(rows)
    columns = _columns(rows)
    header, _ = read_table(path)
    keys = list(key_columns)
    expected, added = columns, []  # the header the table must have, and the columns it gains
    if keys and header[: len(keys)] == keys and columns[: len(keys)] == keys:
        expected, added = header, [column for column in columns if column not in header]
        columns = header + added
    existing, upgraded = _existing_rows(path, expected, legacy, prefix_only=False)
    if added:
        print(f"added the column(s) {', '.join(added)} to {path}")
    written = write_table(path, [*existing, *rows], columns)
    if upgraded:
        count = f"{len(existing)} earlier row{'s' if len(existing) != 1 else ''}"
        print(f"migrated {count} of {path} to its new columns")
    return written


def format_measure(row: Mapping[str, Any], name: str, digits: int = 4) -> str:
    """``'0.9123 ± 0.0040'`` from ``row[name]`` and ``row[name + '_se']``."""
    value, se = row[name], row.get(f"{name}_se", math.nan)
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def attack_table(row: Mapping[str, Any], metrics: Iterable[str]) -> str:
    """Attack, label-only baseline and gap, one metric a line, each as mean ± SE."""
    lines = [f"  {'metric':<13}  {'attack':<20}  {'label-only baseline':<20}  gap (attack - baseline)"]
    for metric in metrics:
        lines.append(
            f"  {metric:<13}  {format_measure(row, 'attack_' + metric):<20}  "
            f"{format_measure(row, 'baseline_' + metric):<20}  {format_measure(row, 'gap_' + metric)}"
        )
    return "\n".join(lines)


# -- generated blocks of a Markdown file -------------------------------------------------------

#: A block of a Markdown file that code rewrites from results: ``<!-- generated:NAME -->`` … ``<!-- end:NAME -->``.
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w+-]+) -->\n)(?P<body>.*?)(<!-- end:(?P=name) -->)", re.DOTALL)


def fill_blocks(path: str | Path, blocks: Mapping[str, str]) -> bool:
    """Rewrite the generated blocks of the Markdown file at ``path`` named in ``blocks``; whether anything changed.

    The prose around the blocks, and blocks not named in ``blocks``, are left as they are;
    a missing file is left missing. The file is replaced atomically.
    """
    path = Path(path)
    if not path.is_file():
        return False
    text = path.read_text()

    def fill(match: re.Match) -> str:
        body = blocks.get(match.group("name"), match.group("body").rstrip("\n"))
        return f"{match.group(1)}{body}\n{match.group(4)}"

    updated = BLOCK.sub(fill, text)
    if updated == text:
        return False
    with atomic_path(path) as partial:
        partial.write_text(updated)
    return True


def generated_blocks(path: str | Path) -> dict[str, str]:
    """The generated blocks as they stand in the Markdown file at ``path``, by name."""
    return {m.group("name"): m.group("body").rstrip("\n") for m in BLOCK.finditer(Path(path).read_text())}
