"""Run the experiment suites, resumably, and write their tables, figures and report sections.

    python scripts/run_experiments.py all --seeds 3        # the full grid on Fashion-MNIST
    python scripts/run_experiments.py noise nopeek --quick  # a small version, in minutes
    python scripts/run_experiments.py all --shard 2/4       # a quarter of the grid (one machine of four)
    python scripts/run_experiments.py all --merge           # then: every shard's runs, and the tables
    python scripts/run_experiments.py all --plan            # how many runs, and a forecast of their core-hours

Suites: plain, noise, nopeek, combo, post-noise, data-volume, aux-shift, dp, dp-adaptive,
suppress, class-collapse, vib, adversarial (each also with +noise), attacks, all. Every run
(a model, the noise on its wire and an attacker on exactly what the server sees) is
recorded in <results-dir>/runs.csv as soon as it finishes; a second call skips finished
runs and redoes any that was killed half-way. Tables (mean ± SE over seeds) go to
<results-dir>/summary.csv and <results-dir>/tables/, figures to <results-dir>/figures/.
A runs.csv of an earlier results schema is migrated first, with a line saying so.

``--shard K/N`` runs a deterministic N-th of the grid (every run of one trained model
together) into <results-dir>/shards/K-of-N/, resumably, so a job array or any launcher
spreads the grid over machines; copy the shard folders under one <results-dir>/shards/ and
``--merge`` adds their runs to runs.csv, each once, and writes the tables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dpsnn.cli import ArgumentParser, checked, positive_int, run
from dpsnn.data import DATASETS, DEFAULT_DATA_DIR, dataset_info
from dpsnn.errors import ResultsError
from dpsnn.experiments.plan import Timings, format_plan, plan, plan_table
from dpsnn.experiments.report import SUMMARY_FILE, draw_figures, update_report, write_tables
from dpsnn.experiments.runner import ExperimentRunner, Shard
from dpsnn.experiments.store import RUNS_FILE, RunStore, read_runs, upgrade
from dpsnn.experiments.suites import ALL, FULL, QUICK, SUITES, Budget, customised, expand_suites
from dpsnn.experiments.summary import best_within, undefended
from dpsnn.results import RESULTS_DIR, format_measure, write_table

PLAN_FILE = "plan.csv"  # the forecast --plan writes
SHARDS_DIR = "shards"  # under the results folder: one folder per shard, K-of-N
BUDGET_FLAGS = {
    "train_size": "target train images",
    "val_size": "target validation images",
    "model_epochs": "epochs of every target model",
    "attack_steps": "optimiser steps of every attacker",
    "aux_size": "the default attacker's auxiliary images",
    "test_size": "test images everything is scored on",
    "validator_epochs": "epochs of the Validator",
    "validator_train_size": "the Validator's train images",
}


def parse_args(argv: Sequence[str] | None) -> object:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="+", metavar="SUITE", help=f"one or more of {', '.join((*SUITES, ALL))}")
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--quick", action="store_true", help="small models and attackers: minutes, not hours")
    sizes = parser.add_argument_group("budget overrides (the defaults are the full or --quick budget)")
    for name, what in BUDGET_FLAGS.items():
        sizes.add_argument("--" + name.replace("_", "-"), type=positive_int, default=None, help=what)
    parser.add_argument("--results-dir", type=Path, default=None, help="default: results/experiments[-quick]")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: models/experiments[-quick]")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--report", type=Path, default=None, help="report whose generated blocks to refresh")
    parser.add_argument("--redraw", action="store_true", help="rewrite tables and figures even if no run was new")
    parser.add_argument(
        "--tables-only", action="store_true", help="run nothing: rewrite tables, figures and report from runs.csv"
    )
    parser.add_argument("--progress", action="store_true", help="show Lightning's per-epoch progress bars")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="run nothing: count the runs SUITE needs for --seeds and forecast their core-hours from the runs "
        "timed in runs.csv (written to <results-dir>/plan.csv)",
    )
    cluster = parser.add_argument_group("spreading the grid over machines")
    cluster.add_argument(
        "--shard",
        type=checked(Shard.parse),
        default=None,
        metavar="K/N",
        help="run only the K-th of N deterministic parts of the grid, into <results-dir>/shards/K-of-N/",
    )
    cluster.add_argument(
        "--merge",
        action="store_true",
        help="run nothing: add every shard's runs (<results-dir>/shards/*/) to <results-dir>/runs.csv, then "
        "write tables, figures and report",
    )
    args = parser.parse_args(argv)
    if args.plan and (args.shard or args.merge or args.tables_only):
        parser.error("--plan runs nothing; use it alone")
    if args.shard and (args.merge or args.tables_only):
        parser.error("--shard runs part of the grid; merge and write tables in a separate call with --merge")
    return args


def describe(row: dict) -> str:
    """One line per finished run: its status and key, accuracy, and the attack's headline (SSIM gap or AUC)."""
    seconds = (row.get("model_seconds") or 0) + (row.get("attack_seconds") or 0)
    what = f"{row['status']:<8} {row['key']}"
    if row["status"] == "ok":
        what += f"  acc {row['accuracy']:.4f}"
        if row.get("gap_ssim") is not None:
            what += f"  SSIM gap {row['gap_ssim']:+.3f}"
        elif row.get("attack_auc") is not None:  # a membership attack's row
            what += f"  AUC {row['attack_auc']:.3f}"
    return f"{what}  ({seconds:.0f} s)"


def migrate(folder: Path) -> None:
    """Migrate ``folder``'s runs.csv to the current schema, saying so; an unknown schema fails here, before any work."""
    migrated = upgrade(folder)
    if migrated:
        print(migrated)


def run_with_bar(runner: ExperimentRunner, suites: Sequence[str], seeds: int, desc: str) -> int:
    """``runner.run``, one line per finished run under a progress bar (no bar when not a terminal)."""
    bar = tqdm(desc=desc, unit="run", dynamic_ncols=True, disable=None)

    def log(row: dict) -> None:
        bar.update(1)
        bar.write(describe(row))

    try:
        return runner.run(suites, seeds, on_row=log)
    finally:
        bar.close()


def run_shard(args: Any, budget: Budget, results_dir: Path, models_dir: Path) -> int:
    """Run one shard's part of the grid into its own folder; tables come from the merge.

    Runs already in ``results_dir``'s own table (merged earlier, or run unsharded) are not run again.
    """
    suites = expand_suites(args.suites)
    folder = results_dir / SHARDS_DIR / args.shard.folder_name
    for table in (results_dir, folder):
        migrate(table)
    runner = ExperimentRunner(
        budget,
        args.dataset,
        folder,
        models_dir,
        args.data_dir,
        progress=args.progress,
        shard=args.shard,
        read_also=(results_dir,),
    )
    started = time.perf_counter()
    done = run_with_bar(runner, suites, args.seeds, f"shard {args.shard.index}/{args.shard.count}")
    print(
        f"shard {args.shard.index}/{args.shard.count}: {done} run(s) in {(time.perf_counter() - started) / 60:.1f} "
        f"min into {folder}/; when every shard is done, `run_experiments.py {' '.join(args.suites)} --merge` "
        "writes the tables"
    )
    return 0


def merge_shards(results_dir: Path) -> None:
    """Add the runs of every shard folder under ``results_dir`` to its table, one line per shard."""
    shards = sorted(path.parent for path in (results_dir / SHARDS_DIR).glob(f"*/{RUNS_FILE}"))
    if not shards:
        raise ResultsError(f"no shard results under {results_dir / SHARDS_DIR}/; run with --shard K/N first")
    with RunStore(results_dir) as store:
        for folder in shards:
            added, skipped = store.merge(folder)
            print(f"merged {folder}: {added} run(s) added, {skipped} already in {results_dir / RUNS_FILE}")


def seeds(row: dict) -> str:
    """``'3 seeds'``, or ``'1 seed: no standard error yet'``."""
    count = int(row["n_seeds"])
    return f"{count} seeds" if count > 1 else "1 seed: no standard error yet"


def show_plan(args: Any, budget: Budget, results_dir: Path, models_dir: Path) -> int:
    """Print and write the runs ``args.suites`` need and the forecast of their cost; run nothing."""
    runner = ExperimentRunner(budget, args.dataset, results_dir, models_dir, args.data_dir, say=None)
    rows = read_runs(results_dir)
    timings = Timings.from_rows(rows, budget.name)
    runs = plan(runner, args.suites, args.seeds, finished=(row["key"] for row in rows))
    table = plan_table(runs, timings)
    print(format_plan(table, timings, results_dir, cores=os.cpu_count()))
    write_table(results_dir / PLAN_FILE, table)
    print(f"written to {results_dir / PLAN_FILE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    suites = expand_suites(args.suites)  # an unknown suite fails here, before any work
    dataset_info(args.dataset)
    budget = customised(
        QUICK if args.quick else FULL,
        **{name: getattr(args, name) for name in BUDGET_FLAGS},
    )
    suffix = "-quick" if args.quick else ""
    results_dir = args.results_dir or RESULTS_DIR / f"experiments{suffix}"
    models_dir = args.models_dir or Path("models") / f"experiments{suffix}"
    report = args.report or (None if args.quick else RESULTS_DIR / "REPORT.md")
    if args.shard:
        return run_shard(args, budget, results_dir, models_dir)
    migrate(results_dir)
    if args.plan:
        return show_plan(args, budget, results_dir, models_dir)
    if args.merge:
        merge_shards(results_dir)
        args.tables_only = True
    runner = ExperimentRunner(budget, args.dataset, results_dir, models_dir, args.data_dir, progress=args.progress)
    started = time.perf_counter()
    done = 0 if args.tables_only else run_with_bar(runner, suites, args.seeds, "runs")
    elapsed = time.perf_counter() - started
    if args.tables_only and not (results_dir / RUNS_FILE).is_file():
        raise ResultsError(f"no {results_dir / RUNS_FILE} to make tables from; run some suites first")
    if done == 0 and not (args.redraw or args.tables_only) and (results_dir / SUMMARY_FILE).is_file():
        print(f"nothing to do: every run of {', '.join(suites)} for {args.seeds} seed(s) is in {results_dir}/runs.csv")
        return 0
    summary = write_tables(results_dir)
    figures = draw_figures(results_dir, summary)
    refreshed = report is not None and update_report(report, summary)
    print(
        f"{done} run(s) in {elapsed / 60:.1f} min; tables in {results_dir}/, {len(figures)} figure(s) in "
        f"{results_dir}/figures/" + (f"; refreshed {report}" if refreshed else "")
    )
    plain, best = undefended(summary), best_within(summary, 0.01)
    if plain:
        print(
            f"undefended: accuracy {format_measure(plain, 'accuracy')}, "
            f"SSIM gap to the label-only baseline {format_measure(plain, 'gap_ssim', 3)} ({seeds(plain)})"
        )
    if best:
        print(
            f"smallest SSIM gap within 1 point of accuracy: {best['label']} "
            f"(accuracy {format_measure(best, 'accuracy')}, SSIM gap {format_measure(best, 'gap_ssim', 3)}, "
            f"{seeds(best)})"
        )
    elif plain:
        print("no defended setting keeps accuracy within 1 point of the undefended model")
    return 0


if __name__ == "__main__":
    run(main)
