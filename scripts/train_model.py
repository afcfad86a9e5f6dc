"""Train a defended split network and save it under models/classifiers/.

    python scripts/train_model.py --noise-scale 0.5 --nopeek-weight 0.1 --max-epochs 10

Writes ``<saveas>_<S>noise_<W>nopeek_epoch=XX.ckpt`` (the best epoch by val accuracy),
prints val accuracy and dCor(x, what the server sees) and appends them, with their
standard errors, to results/train_model.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dpsnn.checkpoints import CLASSIFIERS_DIR, classifier_filename, save_checkpoint
from dpsnn.cli import ArgumentParser, add_run_arguments, non_negative_float, positive_float, positive_int, run
from dpsnn.data import DATASETS, DEFAULT_DATA_DIR, make_splits
from dpsnn.errors import ConfigError
from dpsnn.evaluation import evaluate_classifier
from dpsnn.models import LR_SCHEDULES
from dpsnn.results import RESULTS_DIR, append_rows, format_measure
from dpsnn.training import train_classifier


def parse_args(argv: Sequence[str] | None) -> object:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise-scale", type=non_negative_float, default=0.0, help="Laplace scale on the wire")
    parser.add_argument(
        "--nopeek-weight", type=non_negative_float, default=0.0, help="weight of dCor(x, h) in the loss"
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
    parser.add_argument("--seed", type=int, default=0, help="fixes splits, initialisation and noise")
    parser.add_argument("--saveas", default="classifier", help="file-name prefix of the checkpoint")
    parser.add_argument("--models-dir", type=Path, default=CLASSIFIERS_DIR)
    add_run_arguments(parser, DEFAULT_DATA_DIR, RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if "/" in args.saveas or not args.saveas:
        raise ConfigError(f"--saveas must be a plain file-name prefix, got '{args.saveas}'")
    splits = make_splits(args.dataset, seed=args.seed, train_size=args.train_size, root=args.data_dir)
    model, epoch = train_classifier(
        splits,
        noise_scale=args.noise_scale,
        nopeek_weight=args.nopeek_weight,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        batch_size=args.batch_size,
        max_epochs=args.max_epochs,
        seed=args.seed,
        progress=not args.no_progress,
        log_dir=args.log_dir,
    )
    measured = evaluate_classifier(model, splits.val, seed=args.seed)
    path = args.models_dir / classifier_filename(args.saveas, args.noise_scale, args.nopeek_weight, epoch)
    save_checkpoint(model, path, "classifier", epoch, extra={"val_accuracy": measured["accuracy"]})
    row = {
        "model": path.name,
        "dataset": args.dataset,
        "seed": args.seed,
        "noise_scale": args.noise_scale,
        "nopeek_weight": args.nopeek_weight,
        "train_size": len(splits.train),
        "epoch": epoch,
        "n_val": measured["n_test"],
        "val_accuracy": measured["accuracy"],
        "val_accuracy_se": measured["accuracy_se"],
        "val_dcor": measured["dcor"],
        "val_dcor_se": measured["dcor_se"],
    }
    append_rows(args.results_dir / "train_model.csv", [row])
    print(f"saved {path}")
    print(f"val accuracy: {format_measure(row, 'val_accuracy')}")
    print(f"val dCor(x, what the server sees): {format_measure(row, 'val_dcor')}")
    return 0


if __name__ == "__main__":
    run(main)
