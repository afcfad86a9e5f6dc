"""Train a defended split network and save it under models/classifiers/.

    python scripts/train_model.py --noise-scale 0.5 --nopeek-weight 0.1 --max-epochs 10
    python scripts/train_model.py --dataset cifar10 --architecture resnet18:2 --defence laplace:scale=0.5

Writes ``<saveas>_<S>noise_<W>nopeek_epoch=XX.ckpt`` (the best epoch by val accuracy;
another architecture than ``reference`` is named after the prefix, and any further
``--defence`` after the nopeek key), prints val accuracy, dCor(x, what the server sees)
and what the defences measure (DP-SGD: ε after every epoch and in all), and appends them, with their standard errors, to
results/train_model.csv.

``--noise-scale S`` is ``--defence laplace:scale=S`` and ``--nopeek-weight W`` is
``--defence nopeek:weight=W``; a ``--defence`` of the same name replaces the flag's
default, and setting both is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dpsnn.architectures import build_split
from dpsnn.checkpoints import CLASSIFIERS_DIR, classifier_filename, save_checkpoint
from dpsnn.cli import (
    ArgumentParser,
    add_run_arguments,
    add_training_arguments,
    measures_text,
    run,
    training_defences,
)
from dpsnn.data import DEFAULT_DATA_DIR, dataset_info, make_splits
from dpsnn.defences import Laplace, NoPeek, canonical, label
from dpsnn.defences.base import param_of
from dpsnn.errors import ConfigError
from dpsnn.evaluation import evaluate_classifier
from dpsnn.experiments.runner import defence_measures
from dpsnn.results import RESULTS_DIR, append_rows, check_columns, format_measure
from dpsnn.training import train_classifier

COLUMNS = (
    "model",
    "dataset",
    "architecture",
    "defences",
    "seed",
    "noise_scale",
    "nopeek_weight",
    "train_size",
    "epoch",
    "n_val",
    "val_accuracy",
    "val_accuracy_se",
    "val_dcor",
    "val_dcor_se",
    "measures",
)
# The table before architectures and defence specs: the reference network, noise and NoPeek only.
LEGACY_COLUMNS = (
    "model",
    "dataset",
    "seed",
    "noise_scale",
    "nopeek_weight",
    "train_size",
    "epoch",
    "n_val",
    "val_accuracy",
    "val_accuracy_se",
    "val_dcor",
    "val_dcor_se",
)


def upgrade_legacy_row(row: dict[str, str]) -> dict[str, str]:
    """A row of the table's first schema in today's columns."""
    defences = [Laplace(scale=float(row["noise_scale"] or 0)), NoPeek(weight=float(row["nopeek_weight"] or 0))]
    upgraded = {**row, "architecture": "reference", "defences": canonical(defences), "measures": "{}"}
    return {column: upgraded.get(column, "") for column in COLUMNS}


def parse_args(argv: Sequence[str] | None) -> object:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_arguments(parser)
    parser.add_argument("--saveas", default="classifier", help="file-name prefix of the checkpoint")
    parser.add_argument("--models-dir", type=Path, default=CLASSIFIERS_DIR)
    add_run_arguments(parser, DEFAULT_DATA_DIR, RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if "/" in args.saveas or not args.saveas:
        raise ConfigError(f"--saveas must be a plain file-name prefix, got '{args.saveas}'")
    defences = training_defences(args)
    # Everything that can be known before loading data is checked first: nothing is written on bad input.
    info = dataset_info(args.dataset)
    client, server = build_split(args.architecture, info.image_shape, info.num_classes)
    for defence in defences:
        defence.check_parts({"client": client, "server": server})
    table = args.results_dir / "train_model.csv"
    check_columns(table, COLUMNS, {LEGACY_COLUMNS: upgrade_legacy_row})
    sizes = {"val_size": args.val_size, "aux_size": args.aux_split_size}
    splits = make_splits(
        args.dataset,
        seed=args.seed,
        train_size=args.train_size,
        root=args.data_dir,
        **{key: value for key, value in sizes.items() if value is not None},
    )
    model, epoch = train_classifier(
        splits,
        architecture=args.architecture,
        defences=defences,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        batch_size=args.batch_size,
        max_epochs=args.max_epochs,
        seed=args.seed,
        progress=not args.no_progress,
        log_dir=args.log_dir,
    )
    # The split sizes, so that the attacker and the evaluations rebuild the same disjoint splits.
    model.hparams.update(val_size=len(splits.val), aux_split_size=len(splits.aux))
    measured = evaluate_classifier(model, splits.val, seed=args.seed)
    measures = defence_measures(model)
    path = args.models_dir / classifier_filename(args.saveas, defences, epoch, architecture=args.architecture)
    save_checkpoint(model, path, "classifier", epoch, extra={"val_accuracy": measured["accuracy"], **measures})
    row = {
        "model": path.name,
        "dataset": args.dataset,
        "architecture": args.architecture,
        "defences": model.trained_with(),
        "seed": args.seed,
        "noise_scale": param_of(model.defences, "laplace"),
        "nopeek_weight": param_of(model.defences, "nopeek"),
        "train_size": len(splits.train),
        "epoch": epoch,
        "n_val": measured["n_test"],
        "val_accuracy": measured["accuracy"],
        "val_accuracy_se": measured["accuracy_se"],
        "val_dcor": measured["dcor"],
        "val_dcor_se": measured["dcor_se"],
        "measures": measures_text(measures),
    }
    append_rows(table, [row], {LEGACY_COLUMNS: upgrade_legacy_row}, key_columns=COLUMNS)
    print(f"saved {path}")
    print(f"architecture: {args.architecture}; defences: {label(model.defences)}")
    print(f"val accuracy: {format_measure(row, 'val_accuracy')}")
    print(f"val dCor(x, what the server sees): {format_measure(row, 'val_dcor')}")
    privacy = model.hparams.get("privacy")
    if privacy:
        for number, epsilon in enumerate(privacy["epsilons"]):
            print(f"ε after epoch {number}: {epsilon:.4g} (δ = {privacy['delta']:g}, {privacy['accountant']})")
        print(f"ε spent in all {privacy['steps']} steps (the kept epoch {epoch} included): {privacy['epsilon']:.4g}")
    for key, value in sorted(measures.items()):
        print(f"{key}: {value:.4g}")
    return 0


if __name__ == "__main__":
    run(main)
