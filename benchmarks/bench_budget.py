"""Is the experiment suites' training budget long enough? The undefended model against long runs.

    .venv/bin/python benchmarks/bench_budget.py                    # every setting, seed 0
    .venv/bin/python benchmarks/bench_budget.py --settings budget --seeds 0 1 2
    .venv/bin/python benchmarks/bench_budget.py --settings whole-split-one-cycle-3 whole-split-one-cycle-4

run_experiments.py trains every target model on the budget in dpsnn.experiments.suites.FULL.
This script trains the undefended model on that budget, on the earlier budget (20,000
images, 3 epochs), on long runs (the same 20,000 images for 12 epochs, and the whole
train split for 10 epochs, each at a constant learning rate and with a
one-cycle schedule, peak --one-cycle-lr) and on the candidates for a converged budget
(the whole split, one-cycle, 2 to 5 epochs). It scores all on the 10,000 test images and
prints each one's accuracy minus the best long run's (the whole split, 10 epochs,
one-cycle), with standard errors over test images (and over seeds when several are
given). The splits are the suites': 2,000 validation images, the 6,250-image auxiliary
split and the rest (51,750) for training; the rows measured before the auxiliary split
grew trained on 53,000, and their images column says so. Figures go to
results/benchmarks/bench_budget.csv, one row per setting: a run with --settings replaces
the rows of the settings it ran and keeps the others.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import dataclass

import torch
from _timing import RESULTS_DIR, write_csv

from dpsnn.data import make_splits
from dpsnn.evaluation import evaluate_classifier
from dpsnn.experiments.suites import FULL
from dpsnn.metrics import mean_and_se
from dpsnn.training import train_classifier


@dataclass(frozen=True)
class Setting:
    name: str
    train_size: int | None
    epochs: int
    lr_schedule: str = "constant"
    learning_rate: float = 1e-3  # with one-cycle, the peak


CSV_PATH = RESULTS_DIR / "bench_budget.csv"


LONG_RUN = "long run, whole split, one-cycle"  # what the budget is compared with
PREVIOUS = {"train_size": 20000, "epochs": 3}  # the suites' budget before the converged one


def settings(long_factor: int = 4, full_epochs: int = 10, one_cycle_lr: float = 3e-3) -> dict[str, Setting]:
    """The settings by command-line key. Long runs are measured with both schedules, so that
    the budget is compared with the best a long run reaches, not with a weak one."""
    previous, long, whole = PREVIOUS["epochs"], PREVIOUS["epochs"] * long_factor, full_epochs
    one_cycle = {"lr_schedule": "one-cycle", "learning_rate": one_cycle_lr}
    small = PREVIOUS["train_size"]
    budget_rate = FULL.model_learning_rate or FULL.learning_rate
    return {
        "budget": Setting("suite budget", FULL.train_size, FULL.model_epochs, FULL.model_lr_schedule, budget_rate),
        "previous-budget": Setting("previous suite budget", small, previous),
        "previous-budget-one-cycle": Setting("previous suite budget, one-cycle", small, previous, **one_cycle),
        "long-same-data": Setting("long run, same data", small, long),
        "long-same-data-one-cycle": Setting("long run, same data, one-cycle", small, long, **one_cycle),
        "long-whole-split": Setting("long run, whole train split", None, whole),
        "long-whole-split-one-cycle": Setting(LONG_RUN, None, whole, **one_cycle),
        # Candidates for a converged budget: the whole split, one-cycle, a few epochs.
        **{
            f"whole-split-one-cycle-{n}": Setting(f"whole split, {n} epochs, one-cycle", None, n, **one_cycle)
            for n in (2, 3, 4, 5)
        },
    }


def previous_rows() -> dict[str, dict[str, object]]:
    """The rows an earlier run wrote, by setting name (none if there is no readable file)."""
    try:
        with CSV_PATH.open(newline="") as handle:
            return {row["setting"]: row for row in csv.DictReader(handle)}
    except (OSError, KeyError, csv.Error):
        return {}


COLUMNS = [
    "setting",
    "train_size",
    "epochs",
    "lr_schedule",
    "learning_rate",
    "seeds",
    "accuracy",
    "accuracy_se",
    "seconds",
    "minus_long_run_points",
    "minus_long_run_points_se",
]
FLOAT_COLUMNS = {"learning_rate", "accuracy", "accuracy_se", "seconds"} | set(COLUMNS[-2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--long-factor", type=int, default=4, help="epochs of the long run on the same data, x budget")
    parser.add_argument("--full-epochs", type=int, default=10, help="epochs of the run on the whole train split")
    parser.add_argument("--one-cycle-lr", type=float, default=3e-3, help="peak learning rate of the one-cycle runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(settings()),
        default=list(settings()),
        help="which settings to train (default: all)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    every = settings(args.long_factor, args.full_epochs, args.one_cycle_lr)
    chosen = [every[key] for key in args.settings]
    rows = []
    for setting in chosen:
        accuracies, seconds = [], []
        for seed in args.seeds:
            splits = make_splits(
                "fashion-mnist",
                seed=seed,
                train_size=setting.train_size,
                val_size=FULL.val_size,
                aux_size=FULL.aux_split_size,  # the suites' splits: the whole train split is 51,750 images
            )
            started = time.perf_counter()
            model, epoch = train_classifier(
                splits,
                max_epochs=setting.epochs,
                batch_size=FULL.batch_size,
                seed=seed,
                progress=False,
                lr_schedule=setting.lr_schedule,
                learning_rate=setting.learning_rate,
            )
            seconds.append(time.perf_counter() - started)
            measured = evaluate_classifier(model, splits.test, seed=seed)
            accuracies.append(measured["accuracy"])
            print(
                f"{setting.name:<33} seed {seed}: {len(splits.train)} images x {setting.epochs} epochs "
                f"(best epoch {epoch + 1}): test accuracy {measured['accuracy']:.4f} ± {measured['accuracy_se']:.4f}"
                f" in {seconds[-1]:.0f} s",
                flush=True,
            )
            within_se = measured["accuracy_se"]
        mean, se = mean_and_se(torch.tensor(accuracies)) if len(accuracies) > 1 else (accuracies[0], within_se)
        rows.append(
            {
                "setting": setting.name,
                "train_size": setting.train_size or len(splits.train),
                "epochs": setting.epochs,
                "lr_schedule": setting.lr_schedule,
                "learning_rate": setting.learning_rate,
                "seeds": len(args.seeds),
                "accuracy": mean,
                "accuracy_se": se,
                "seconds": sum(seconds) / len(seconds),
            }
        )
    # Rows of settings not run this time come from the previous file, so the table stays whole.
    measured = {row["setting"]: row for row in rows}
    kept = previous_rows()
    table = []
    for setting in every.values():
        row = measured.get(setting.name) or kept.get(setting.name)
        if row is not None:
            # Files from before the schedule option hold constant-rate runs at the suites' rate.
            filled = {k: v for k, v in row.items() if v != ""}
            row = {"lr_schedule": "constant", "learning_rate": 1e-3, **filled}
            table.append({k: float(v) if k in FLOAT_COLUMNS and v not in ("", None) else v for k, v in row.items()})
    long_run = next((row for row in table if row["setting"] == LONG_RUN), None)
    print(f"\n{'setting':<33} {'images':>7} {'epochs':>6}  accuracy           minus the long run (points)")
    for row in table:
        if long_run is not None:  # the two are independent runs: their standard errors add in quadrature
            row["minus_long_run_points"] = 100 * (row["accuracy"] - long_run["accuracy"])
            row["minus_long_run_points_se"] = 100 * math.hypot(row["accuracy_se"], long_run["accuracy_se"])
        difference = (
            f"{row['minus_long_run_points']:+.2f} ± {row['minus_long_run_points_se']:.2f}"
            if long_run is not None and row is not long_run
            else ""
        )
        print(
            f"{row['setting']:<33} {row['train_size']:>7} {row['epochs']:>6}  "
            f"{row['accuracy']:.4f} ± {row['accuracy_se']:.4f}  {difference:>16}"
            + ("" if row["setting"] in measured else "   (earlier run)")
        )
    write_csv(CSV_PATH, [{column: row.get(column, "") for column in COLUMNS} for row in table])
    print(f"wrote {CSV_PATH}")


if __name__ == "__main__":
    main()
