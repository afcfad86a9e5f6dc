"""What every script shares: one-line errors, checked argument types, the entry wrapper.

A script defines ``main(argv)`` and ends with ``run(main)``. Bad input then gives one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from dpsnn.errors import DpsnnError

EXIT_USAGE = 2
EXIT_ERROR = 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage stays under ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got '{text}'") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got '{text}'")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got '{text}'")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, data_dir: Path, results_dir: Path) -> None:
    """The flags every training script shares: data and results folders, logs, progress bars."""
    parser.add_argument("--data-dir", type=Path, default=data_dir)
    parser.add_argument("--results-dir", type=Path, default=results_dir)
    parser.add_argument("--log-dir", type=Path, default=None, help="write Lightning CSV logs here")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Call ``main`` and exit; a :class:`DpsnnError` becomes one line on stderr."""
    prog = os.path.basename(sys.argv[0])
    try:
        code = main(argv)
    except DpsnnError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished files are kept, nothing half-written was saved", file=sys.stderr)
        sys.exit(130)
    except OSError as error:  # e.g. a full disk or an unwritable folder
        print(f"{prog}: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(code or 0)
