"""What every script shares: one-line errors, checked argument types, the entry wrapper.

A script defines ``main(argv)`` and ends with ``run(main)``. Bad input then gives one
line on stderr and a non-zero exit, never a traceback. The argument types turn the
registries' names into specs (``--architecture resnet18``, ``--defence laplace:scale=0.5``,
``--wire laplace:scale=1``, ``--attack decoder``), so a bad name or parameter is a usage
error before anything runs. Example::

    parser = ArgumentParser()
    parser.add_argument("--defence", type=defence_argument, action="append", default=[])
    args = parser.parse_args(["--defence", "laplace:scale=0.5"])
    merge_defences({"laplace": ("--noise-scale", Laplace(0.0))}, args.defence)   # [Laplace(scale=0.5)]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from dpsnn.architectures import architecture_names, canonical_architecture
from dpsnn.data import DATASETS, image_shape
from dpsnn.defences import Defence, Laplace, NoPeek, check, parse_canonical, parse_defence, registered_defences
from dpsnn.errors import ConfigError, DataError, DpsnnError
from dpsnn.models import LR_SCHEDULES

T = TypeVar("T")

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


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got '{text}'")
    return value


def checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser that raises :class:`DpsnnError`: its message becomes the usage error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except DpsnnError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__
    return convert


#: ``--architecture NAME``: a registered architecture's full name (``resnet18`` becomes ``resnet18:2``).
architecture_argument = checked(canonical_architecture)
#: ``--defence NAME:key=value,...``: a registered defence's spec.
defence_argument = checked(parse_defence)


def _wire_defence(text: str) -> Defence:
    spec = parse_defence(text)
    if spec.wire() is None:
        raise ConfigError(f"defence '{spec.name}' puts nothing on the wire (it acts in training only)")
    return spec


#: ``--wire NAME:key=value,...``: a defence that acts on the wire (``laplace:scale=1``).
wire_argument = checked(_wire_defence)


def merge_defences(flags: Mapping[str, tuple[str, Defence]], given: Iterable[Defence]) -> list[Defence]:
    """The defences of the shorthand flags and of ``--defence``, in that order.

    ``flags`` maps a defence name to its flag and the spec the flag gave (``{"laplace":
    ("--noise-scale", Laplace(0.5))}``). A ``--defence`` of that name replaces the flag's
    spec in its place when the flag is at its default (zero strength); when the flag was set
    too, that is a :class:`ConfigError`. Other defences follow in the order given, repeats
    included, so :func:`dpsnn.defences.validate` reports them.
    """
    merged = {name: spec for name, (_, spec) in flags.items()}
    replaced: set[str] = set()
    extra = []
    for spec in given:
        if spec.name in flags and spec.name not in replaced:
            flag, flag_spec = flags[spec.name]
            if not flag_spec.is_identity():
                raise ConfigError(
                    f"{flag} and --defence {spec.name}:... both set the {spec.name} defence; give only one of them"
                )
            merged[spec.name] = spec
            replaced.add(spec.name)
        else:
            extra.append(spec)
    return [*merged.values(), *extra]


def wire_from(noise: float | None, wire: Sequence[Defence] | None, noise_flag: str) -> list[Defence] | None:
    """The wire asked for by ``--wire`` and its shorthand ``noise_flag`` (Laplace noise), or None for the model's own.

    ``noise_flag S`` is ``--wire laplace:scale=S``; giving both is a :class:`ConfigError`.
    """
    if noise is None and not wire:
        return None
    specs = list(wire or [])
    if noise is not None:
        if any(spec.name == Laplace.name for spec in specs):
            raise ConfigError(f"{noise_flag} and --wire {Laplace.name}:... both set the wire noise; give only one")
        specs.insert(0, Laplace(scale=noise))
    return list(check(specs))


def attacked_wire(hparams: Mapping[str, Any]) -> list[Defence]:
    """The wire an attacker checkpoint attacked: its ``wire``, or the ``noise_scale`` of older checkpoints."""
    if "wire" in hparams:
        return list(parse_canonical(str(hparams["wire"])))
    return [Laplace(scale=float(hparams.get("noise_scale") or 0.0))]


def wire_key(wire: Iterable[Defence]) -> str:
    """The file-name form of a wire: ``1noise``; ``0noise`` when nothing acts on it."""
    active = [spec for spec in wire if not spec.is_identity()]
    return "_".join(spec.key() for spec in active) or Laplace(scale=0.0).key()


def check_images(model_name: str, input_shape: Sequence[int], dataset: str, what: str = "its dataset") -> None:
    """:class:`DataError` when the images of the registered ``dataset`` are not the ``input_shape`` a model takes."""
    shape = image_shape(dataset)
    if tuple(shape) != tuple(int(size) for size in input_shape):
        raise DataError(
            f"{model_name} takes {shape_text(input_shape)} images, but {what} '{dataset}' has "
            f"{shape_text(shape)} images"
        )


def split_sizes(hparams: Mapping[str, Any]) -> dict[str, int]:
    """The ``make_splits`` sizes a classifier was trained with (``val_size``, ``aux_size``), where it recorded them.

    Rebuilding a model's splits with them keeps the attacker's auxiliary split disjoint
    from the model's training data; older checkpoints used the defaults.
    """
    sizes = {}
    for key, name in (("val_size", "val_size"), ("aux_size", "aux_split_size")):
        if hparams.get(name) is not None:
            sizes[key] = int(hparams[name])
    return sizes


def measures_text(measures: Mapping[str, float]) -> str:
    """The defences' measures as one JSON cell, keys sorted: ``{"epsilon": 3.1}`` (``{}`` when none)."""
    return json.dumps(dict(sorted(measures.items())))


def shape_text(shape: Sequence[int]) -> str:
    """``3×32×32``."""
    return "×".join(str(int(size)) for size in shape)


def add_run_arguments(parser: argparse.ArgumentParser, data_dir: Path, results_dir: Path) -> None:
    """The flags every training script shares: data and results folders, logs, progress bars."""
    parser.add_argument("--data-dir", type=Path, default=data_dir)
    parser.add_argument("--results-dir", type=Path, default=results_dir)
    parser.add_argument("--log-dir", type=Path, default=None, help="write Lightning CSV logs here")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say what split network is trained and how: train_model.py's, and split.py's for both parties."""
    parser.add_argument(
        "--noise-scale", type=non_negative_float, default=0.0, help="Laplace scale on the wire (laplace:scale=S)"
    )
    parser.add_argument(
        "--nopeek-weight",
        type=non_negative_float,
        default=0.0,
        help="weight of dCor(x, h) in the loss (nopeek:weight=W)",
    )
    parser.add_argument(
        "--defence",
        type=defence_argument,
        action="append",
        default=[],
        metavar="NAME:key=value,...",
        help=f"a defence to train with, repeatable; one of {', '.join(sorted(registered_defences()))} "
        "(e.g. laplace:scale=0.5, nopeek:weight=0.1)",
    )
    parser.add_argument(
        "--architecture",
        type=architecture_argument,
        default="reference",
        help=f"the split network: {', '.join(architecture_names())} (resnet18 is resnet18:2)",
    )
    parser.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)
    parser.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default="constant",
        help="constant, or one-cycle: warm up to the learning rate, then anneal to almost zero",
    )
    parser.add_argument("--max-epochs", type=positive_int, default=10)
    parser.add_argument("--train-size", type=positive_int, default=None, help="images of the target train split")
    parser.add_argument(
        "--val-size", type=positive_int, default=None, help="images of the target val split (default: 5000)"
    )
    parser.add_argument(
        "--aux-split-size",
        type=positive_int,
        default=None,
        help="images kept out of training for the attacker's auxiliary split (default: 5000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="fixes splits, initialisation and noise")


def training_defences(args: argparse.Namespace) -> tuple[Defence, ...]:
    """The defences of :func:`add_training_arguments`' flags, merged and checked (see :func:`merge_defences`)."""
    flags = {
        "laplace": ("--noise-scale", Laplace(scale=args.noise_scale)),
        "nopeek": ("--nopeek-weight", NoPeek(weight=args.nopeek_weight)),
    }
    return check(merge_defences(flags, args.defence))


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
