"""Make an unlearnable copy of a dataset, and train on one with the recipes that try to learn despite it.

    python scripts/unlearnable.py make --dataset fashion-mnist --method ntga --epsilon 0.3
    python scripts/unlearnable.py train --dataset fashion-mnist+ntga --recipe plain --recipe jpeg:quality=10 --seeds 3

``make`` poisons the official training set of a registered dataset with ``ntga`` (the Neural
Tangent Generalization Attack), ``random`` (uniform noise) or ``error-min`` (error-minimising
noise) within an L∞ budget ε, and writes it as the derived dataset ``DATASET+TAG``
(``data/derived/``), which every script then takes by name. An interrupted ``make`` resumes
where it stopped when run again with the same flags. It appends a row (method, settings,
seconds) to results/unlearnable/make.csv.

``train`` trains the registered architectures on a dataset (clean, or a derived copy) with
each recipe and seed, and appends the clean test accuracy with its standard error (and the
accuracy on the poisoned and the clean validation split) to results/unlearnable/train.csv; runs
already there are skipped. The recipes outside the competition's rules (``oracle-early-stop``,
``last-layer``) are given the clean copies of the validation and auxiliary splits.

``summary`` writes results/unlearnable/summary.csv: each setting's mean clean test accuracy
over its seeds with the standard error, and prints it as a table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from dpsnn.architectures import architecture_names
from dpsnn.cli import (
    ArgumentParser,
    add_run_arguments,
    architecture_argument,
    checked,
    positive_float,
    positive_int,
    run,
)
from dpsnn.data import DEFAULT_DATA_DIR, Splits, dataset_info, derived_metadata, make_splits
from dpsnn.errors import ConfigError, ResultsError
from dpsnn.results import RESULTS_DIR, append_rows, fill_blocks, read_table, write_table
from dpsnn.unlearnable.poisons import POISONS, PoisonJob, check_poison, make_unlearnable
from dpsnn.unlearnable.recipes import (
    Recipe,
    RecipeResult,
    recipe_from,
    recipe_names,
    train_with_recipe,
    train_with_recipes,
    trains_plainly,
)
from dpsnn.unlearnable.report import markdown_table, summarise

TRAIN_KEYS = ("dataset", "method", "epsilon", "architecture", "recipe", "seed", "epochs", "train_size")
README, README_BLOCK = Path("README.md"), "unlearnable"  # the README's table of results
#: The default budget per image size: the published ε for MNIST-like gray images, and for CIFAR.
DEFAULT_EPSILON = {(1, 28, 28): 0.3, (3, 32, 32): 8 / 255}


def _make_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist", help="a registered dataset")
    parser.add_argument("--method", choices=sorted(POISONS), default="ntga")
    parser.add_argument(
        "--epsilon", type=float, default=None, help="L∞ budget in [0, 1] pixel units (default 0.3; 8/255 for CIFAR)"
    )
    parser.add_argument("--tag", default=None, help="the derived dataset is DATASET+TAG (default: the method)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, default=None, help="keep partial results here (to resume)")
    ntga = parser.add_argument_group("ntga")
    ntga.add_argument("--block-size", type=positive_int, default=None, help="images attacked together (512)")
    ntga.add_argument("--time", type=float, default=None, help="the GP's training time t (64)")
    ntga.add_argument("--iterations", type=positive_int, default=None, help="projected gradient steps (10)")
    ntga.add_argument("--step-size", type=positive_float, default=None, help="default 1.1·ε/iterations")
    ntga.add_argument("--target-size", type=positive_int, default=None, help="clean images scored (10000)")
    ntga.add_argument("--diag-reg", type=float, default=None, help="kernel regulariser, relative (1e-4)")
    ntga.add_argument("--precision", choices=("float32", "float64"), default=None)
    ntga.add_argument("--no-compile", action="store_true", help="do not compile the kernel with torch.compile")
    error_min = parser.add_argument_group("error-min")
    error_min.add_argument("--pgd-steps", type=positive_int, default=None, help="noise steps per round (20)")
    error_min.add_argument("--train-steps", type=positive_int, default=None, help="model batches per round (10)")
    error_min.add_argument("--max-rounds", type=positive_int, default=None)
    error_min.add_argument("--stop-accuracy", type=float, default=None, help="stop at this accuracy (0.99)")
    error_min.add_argument(
        "--surrogate",
        dest="architecture",
        type=architecture_argument,
        default=None,
        help="the registered architecture the noise is fitted against (reference)",
    )


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", action="append", default=None, help="repeatable (default: fashion-mnist+ntga)")
    parser.add_argument(
        "--recipe",
        type=checked(recipe_from),
        action="append",
        default=None,
        metavar="NAME:key=value",
        help=f"repeatable; one of {', '.join(recipe_names())} (default: plain)",
    )
    parser.add_argument(
        "--architecture",
        type=architecture_argument,
        action="append",
        default=None,
        help=f"repeatable; one of {', '.join(architecture_names())} (default: reference)",
    )
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--seeds", type=positive_int, default=1, help="seeds 0..N-1")
    parser.add_argument("--train-size", type=positive_int, default=None)
    parser.add_argument("--val-size", type=positive_int, default=5000, help="poisoned val split (and its clean copy)")
    parser.add_argument(
        "--aux-split-size", type=positive_int, default=5000, help="held out; its clean copy serves last-layer"
    )
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="poison a dataset's training set")
    _make_arguments(make)
    add_run_arguments(make, DEFAULT_DATA_DIR, RESULTS_DIR / "unlearnable")
    train = commands.add_parser("train", help="train on a (poisoned) dataset with recipes")
    _train_arguments(train)
    add_run_arguments(train, DEFAULT_DATA_DIR, RESULTS_DIR / "unlearnable")
    summary = commands.add_parser("summary", help="summarise train.csv over seeds into summary.csv")
    summary.add_argument("--results-dir", type=Path, default=RESULTS_DIR / "unlearnable")
    summary.add_argument(
        "--readme",
        type=Path,
        default=None,
        help=f"the Markdown file whose '{README_BLOCK}' block gets the table (default: README.md for the "
        "default results folder, none otherwise)",
    )
    return parser.parse_args(argv)


NTGA_FLAGS = ("block_size", "time", "iterations", "step_size", "target_size", "diag_reg", "precision")
ERROR_MIN_FLAGS = ("step_size", "pgd_steps", "train_steps", "max_rounds", "stop_accuracy", "architecture")
FLAG_NAMES = {"architecture": "--surrogate"}  # settings whose flag is not named after them


def _options(args: argparse.Namespace) -> dict[str, object]:
    """The method's own settings from the flags given; a flag of another method is an error."""
    own = {"ntga": NTGA_FLAGS, "error-min": ERROR_MIN_FLAGS, "random": ()}[args.method]
    every = set(NTGA_FLAGS) | set(ERROR_MIN_FLAGS)
    given = {name: getattr(args, name) for name in sorted(every) if getattr(args, name) is not None}
    foreign = sorted(name for name in given if name not in own)
    if foreign:
        flags = ", ".join(FLAG_NAMES.get(name, "--" + name.replace("_", "-")) for name in foreign)
        raise ConfigError(f"{flags}: not a setting of --method {args.method}")
    if args.no_compile:
        if args.method != "ntga":
            raise ConfigError(f"--no-compile does not apply to --method {args.method}")
        given["compile"] = False
    return given


def make(args: argparse.Namespace) -> None:
    info = dataset_info(args.dataset)
    epsilon = args.epsilon if args.epsilon is not None else DEFAULT_EPSILON.get(info.image_shape, 0.3)
    options = _options(args)
    check_poison(args.method, PoisonJob(epsilon, info.num_classes, args.seed, options=tuple(sorted(options.items()))))
    started = time.perf_counter()
    name = make_unlearnable(
        args.dataset,
        args.method,
        epsilon,
        tag=args.tag,
        seed=args.seed,
        options=options,
        root=args.data_dir,
        state_dir=args.state_dir,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - started
    metadata = derived_metadata(name, args.data_dir)
    print(f"{name}: {args.method} at ε = {epsilon:.4g}, largest change {metadata['largest_change']}, {seconds:.0f} s")
    row = {
        "dataset": name,
        "source": args.dataset,
        "method": args.method,
        "epsilon": epsilon,
        "seed": args.seed,
        "options": metadata["options"],
        "largest_change": float(metadata["largest_change"]),
        "seconds": seconds,
    }
    append_rows(args.results_dir / "make.csv", [row])


def _done(table: Path) -> set[tuple[str, ...]]:
    _, rows = read_table(table)
    return {tuple(row.get(key, "") for key in TRAIN_KEYS) for row in rows}


def train(args: argparse.Namespace) -> None:
    datasets = args.dataset or ["fashion-mnist+ntga"]
    recipes = args.recipe or [recipe_from("plain")]
    architectures = args.architecture or ["reference"]
    for name in datasets:
        dataset_info(name)
    table = args.results_dir / "train.csv"
    for name in datasets:
        info = dataset_info(name)
        made = derived_metadata(name, args.data_dir) if info.derived_from else {"method": "clean", "epsilon": "0"}
        for seed in range(args.seeds):
            sizes = {"seed": seed, "val_size": args.val_size, "aux_size": args.aux_split_size, "root": args.data_dir}
            splits = make_splits(name, train_size=args.train_size, **sizes)
            clean = make_splits(info.derived_from, **sizes) if info.derived_from else splits
            for architecture in architectures:
                todo = []
                for recipe in recipes:
                    key = (name, made["method"], made["epsilon"], architecture, recipe.spec(), str(seed))
                    key += (str(args.epochs), str(len(splits.train)))
                    if key in _done(table):
                        print(f"{name} {architecture} {recipe.label()} seed {seed}: already in {table}")
                    else:
                        todo.append((recipe, key))
                for group in _runs(todo):
                    results = _train_group(args, splits, clean, architecture, [recipe for recipe, _ in group], seed)
                    for (recipe, key), result in zip(group, results, strict=True):
                        _record(table, recipe, key, result, len(splits.test))
                        print(
                            f"{name} {architecture} {recipe.label()} seed {seed}: clean test accuracy "
                            f"{result.test_acc:.4f} ± {result.test_acc_se:.4f}"
                        )


def _runs(todo: list[tuple[Recipe, tuple[str, ...]]]) -> list[list[tuple[Recipe, tuple[str, ...]]]]:
    """The training runs ``todo`` needs: one for every recipe that trains as plain does together, one per other."""
    shared = [item for item in todo if trains_plainly(item[0])]
    alone = [[item] for item in todo if not trains_plainly(item[0])]
    return ([shared] if shared else []) + alone


def _record(table: Path, recipe: Recipe, key: tuple[str, ...], result: RecipeResult, n_test: int) -> None:
    row = dict(zip(TRAIN_KEYS, key, strict=True))
    row.update(
        test_acc=result.test_acc,
        test_acc_se=result.test_acc_se,
        n_test=n_test,
        best_epoch="" if result.best_epoch is None else result.best_epoch,
        poisoned_val_acc=result.poisoned_val_acc,
        clean_val_acc=result.clean_val_acc,
        obeys_rules=recipe.obeys_rules,
    )
    append_rows(table, [row])


def _train_group(
    args: argparse.Namespace, splits: Splits, clean: Splits, architecture: str, recipes: list[Recipe], seed: int
) -> list[RecipeResult]:
    """One training run for ``recipes``: several only when they all train as plain does (:func:`trains_plainly`)."""
    data = (splits.train, splits.val, splits.test, splits.num_classes)
    options = {
        "architecture": architecture,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": seed,
        "progress": not args.no_progress,
        "clean_val": clean.val,
        "clean_extra": clean.aux,
    }
    if len(recipes) == 1:
        return [train_with_recipe(recipes[0], *data, **options)[1]]
    return train_with_recipes(recipes, *data, **options)


def summary(args: argparse.Namespace) -> None:
    table = args.results_dir / "train.csv"
    if not table.is_file():
        raise ResultsError(f"no results at {table}: run `scripts/unlearnable.py train` first")
    _, rows = read_table(table)
    summarised = summarise(rows)
    written = write_table(args.results_dir / "summary.csv", summarised)
    table_text = markdown_table(summarised)
    print(table_text)
    print(f"written {written}")
    readme = args.readme or (README if args.results_dir == RESULTS_DIR / "unlearnable" else None)
    if readme is not None and fill_blocks(readme, {README_BLOCK: table_text}):
        print(f"refreshed the '{README_BLOCK}' table in {readme}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    {"make": make, "train": train, "summary": summary}[args.command](args)
    return 0


if __name__ == "__main__":
    run(main)
