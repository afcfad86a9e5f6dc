"""Is the experiment suites' training budget long enough? The undefended model against long runs.

    .venv/bin/python benchmarks/bench_budget.py                    # the full budget, seed 0
    .venv/bin/python benchmarks/bench_budget.py --seeds 0 1 2

run_experiments.py trains every target model on the budget in dpsnn.experiments.suites.FULL
so that the whole `all` suite fits in a few hours on 2 cores. This script trains the
undefended model on that budget and on two long ones (the same data for 4x the epochs,
and the whole 50,000-image train split for 10 epochs), scores all on the 10,000 test
images and prints the accuracy of each beside the budget's, with standard errors over
test images (and over seeds when several are given). Figures go to
results/benchmarks/bench_budget.csv.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--long-factor", type=int, default=4, help="epochs of the long run on the same data, x budget")
    parser.add_argument("--full-epochs", type=int, default=10, help="epochs of the run on the whole train split")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [
        Setting("suite budget", FULL.train_size, FULL.model_epochs),
        Setting("long run, same data", FULL.train_size, FULL.model_epochs * args.long_factor),
        Setting("long run, whole train split", None, args.full_epochs),
    ]
    rows = []
    for setting in settings:
        accuracies, seconds = [], []
        for seed in args.seeds:
            splits = make_splits("fashion-mnist", seed=seed, train_size=setting.train_size, val_size=FULL.val_size)
            started = time.perf_counter()
            model, epoch = train_classifier(splits, max_epochs=setting.epochs, seed=seed, progress=False)
            seconds.append(time.perf_counter() - started)
            measured = evaluate_classifier(model, splits.test, seed=seed)
            accuracies.append(measured["accuracy"])
            print(
                f"{setting.name:<28} seed {seed}: {len(splits.train)} images x {setting.epochs} epochs "
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
                "seeds": len(args.seeds),
                "accuracy": mean,
                "accuracy_se": se,
                "seconds": sum(seconds) / len(seconds),
            }
        )
    budget = rows[0]["accuracy"]
    print(f"\n{'setting':<28} {'images':>7} {'epochs':>6}  accuracy           budget minus this")
    for row in rows:
        print(
            f"{row['setting']:<28} {row['train_size']:>7} {row['epochs']:>6}  "
            f"{row['accuracy']:.4f} ± {row['accuracy_se']:.4f}   {100 * (budget - row['accuracy']):+.2f} points"
        )
        row["budget_minus_this_points"] = 100 * (budget - row["accuracy"])
    write_csv(RESULTS_DIR / "bench_budget.csv", rows)
    print(f"wrote {RESULTS_DIR / 'bench_budget.csv'}")


if __name__ == "__main__":
    main()
