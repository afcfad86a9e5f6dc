"""Evaluate saved classifiers on their test split: accuracy and dCor(x, what the server sees).

    python scripts/evaluate_models.py                      # every checkpoint in models/classifiers
    python scripts/evaluate_models.py --models demo --noise 1.0   # noise switched on at inference
    python scripts/evaluate_models.py --wire laplace:scale=1      # the same, as a wire defence

Prints one line per model and writes results/model_performances.csv, each figure with
its standard error (over test images for accuracy, over batches of 256 for dCor). Each
row names the model's architecture, the defences it was trained with and the wire it
was evaluated with (canonical strings, ``none`` for no defence).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dpsnn.checkpoints import CLASSIFIERS_DIR, checkpoints_in, load_classifier
from dpsnn.cli import (
    ArgumentParser,
    check_images,
    non_negative_float,
    positive_int,
    run,
    split_sizes,
    wire_argument,
    wire_from,
)
from dpsnn.data import DEFAULT_DATA_DIR, Splits, make_splits
from dpsnn.defences import canonical
from dpsnn.defences.base import param_of
from dpsnn.evaluation import evaluate_classifier
from dpsnn.results import RESULTS_DIR, format_measure, write_table


def parse_args(argv: Sequence[str] | None) -> object:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="checkpoint names (default: all)")
    parser.add_argument(
        "--noise", type=non_negative_float, default=None, help="override the wire noise (--wire laplace:scale=S)"
    )
    parser.add_argument(
        "--wire",
        type=wire_argument,
        action="append",
        default=None,
        metavar="NAME:key=value,...",
        help="a defence on the wire instead of each model's own, repeatable (e.g. laplace:scale=1)",
    )
    parser.add_argument("--test-size", type=positive_int, default=None, help="score on the first N test images")
    parser.add_argument("--classifiers-dir", type=Path, default=CLASSIFIERS_DIR)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "model_performances.csv")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wire = wire_from(args.noise, args.wire, "--noise")
    paths = checkpoints_in(args.classifiers_dir, args.models)
    models = [load_classifier(path, wire=wire) for path in paths]  # every file is checked before any work
    for path, model in zip(paths, models, strict=True):
        check_images(path.name, model.hparams["input_shape"], model.hparams["dataset"])
    splits_cache: dict[tuple, Splits] = {}
    rows = []
    for path, model in zip(paths, models, strict=True):
        dataset, seed = model.hparams["dataset"], int(model.hparams["seed"])
        sizes = split_sizes(model.hparams)
        key = (dataset, seed, *sorted(sizes.items()))
        if key not in splits_cache:
            splits_cache[key] = make_splits(dataset, seed=seed, test_size=args.test_size, root=args.data_dir, **sizes)
        measured = evaluate_classifier(model, splits_cache[key].test, seed=seed)
        row = {
            "model": path.name,
            "dataset": dataset,
            "architecture": model.hparams["architecture"],
            "defences": model.trained_with(),
            "wire": canonical(model.wire_defences),
            "seed": seed,
            "noise_scale": param_of(model.wire_defences, "laplace"),
            "trained_noise_scale": param_of(model.defences, "laplace"),
            "nopeek_weight": param_of(model.defences, "nopeek"),
            "train_size": model.hparams.get("train_size"),
            "epoch": model.checkpoint_epoch,
            **measured,
        }
        rows.append(row)
        print(
            f"{path.name}: accuracy {format_measure(row, 'accuracy')}  "
            f"dCor(x, what the server sees) {format_measure(row, 'dcor')}  (wire: {row['wire']})"
        )
    write_table(args.output, rows)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    run(main)
