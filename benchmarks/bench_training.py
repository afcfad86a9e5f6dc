"""Training cost: the NoPeek overhead per step, and Lightning's throughput against a hand-written loop.

Part ``step``: one full :class:`SplitNN` training step (client, wire, server, NoPeek
loss, backward, Adam step) at batch 128, with NoPeek weight 0 (cross-entropy only; dCor
is not computed) and with weight 0.5. Two models with the same initial weights take
turns on the same Fashion-MNIST batches, alternating which goes first, and each step is
timed on its own. Target: the NoPeek step at most 10% slower (median against median).

Part ``fit``: training throughput on the same in-memory data (the first ``--train-size``
images of the Fashion-MNIST train split, batch 128, shuffled with a fixed seed) and the
same model, seed and Adam optimiser, run by Lightning (``make_trainer`` and
``trainer.fit``, no validation loader) and by a plain torch loop over the same loader
calling the model's own step. Runs alternate (hand, Lightning, Lightning, hand, ...)
after an untimed warm-up of each. Images/s are reported excluding Lightning's start-up
and tear-down (time inside the training epochs, from a callback) and including them
(wall time of building the trainer and ``fit``). Target: Lightning's throughput
excluding start-up within 10% of the hand loop's; the start-up is a fixed cost per run,
also reported in seconds.

Run: ``.venv/bin/python benchmarks/bench_training.py`` (see ``--help``); the conditions the
figures depend on (an idle machine, threads, memory allocation) are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from _timing import (
    RESULTS_DIR,
    CpuMonitor,
    Summary,
    add_machine_arguments,
    apply_machine_arguments,
    format_number,
    format_table,
    machine_note,
    minor_faults,
    ratio,
    verdict,
    with_error,
    write_csv,
)
from torch import Tensor
from torch.utils.data import DataLoader

from dpsnn.data import Split, make_splits
from dpsnn.models import SplitNN
from dpsnn.training import make_trainer

STEP_OVERHEAD_TARGET = 0.10
LIGHTNING_TARGET = 0.90  # Lightning's images/s at least this fraction of the hand loop's

# The fits deliberately have no validation loader.
warnings.filterwarnings("ignore", message=r".*but have no `val_dataloader`.*")

Batch = tuple[Tensor, Tensor]


def train_step(model: SplitNN, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    """What Lightning's automatic optimisation does for one batch, without its bookkeeping."""
    optimizer.zero_grad(set_to_none=True)
    loss = model._step(batch)["loss"]
    loss.backward()
    optimizer.step()


def time_steps(args: argparse.Namespace, split: Split) -> tuple[dict[str, Summary], dict[str, Summary]]:
    """Milliseconds and minor page faults per training step of the plain and the NoPeek model, interleaved."""
    L.seed_everything(args.seed, verbose=False)
    models = {"plain": SplitNN(nopeek_weight=0.0), "nopeek": SplitNN(nopeek_weight=args.nopeek_weight)}
    models["nopeek"].load_state_dict(models["plain"].state_dict())
    optimizers = {name: model.configure_optimizers() for name, model in models.items()}
    for model in models.values():
        model.train()
    batches = list(split.loader(args.batch_size, shuffle=True, seed=args.seed))
    batches = [b for b in batches if len(b[1]) == args.batch_size]  # a short last batch would be cheaper
    times: dict[str, list[float]] = {name: [] for name in models}
    faults: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.step_warmup + args.steps):
        batch = batches[step % len(batches)]
        for name in ("plain", "nopeek") if step % 2 == 0 else ("nopeek", "plain"):
            faults_before, start = minor_faults(), time.perf_counter()
            train_step(models[name], optimizers[name], batch)
            elapsed, faulted = time.perf_counter() - start, minor_faults() - faults_before
            if step >= args.step_warmup:
                times[name].append(elapsed * 1e3)
                faults[name].append(float(faulted))
    return {n: Summary.of(v) for n, v in times.items()}, {n: Summary.of(v) for n, v in faults.items()}


@dataclass
class Run:
    """One training run: its wall time and the time spent inside each epoch, in seconds."""

    total: float
    epochs: list[float] = field(default_factory=list)


class EpochTimer(L.Callback):
    """Record the wall time of each training epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._start)


def lightning_run(model: SplitNN, loader: DataLoader, epochs: int) -> Run:
    timer = EpochTimer()
    start = time.perf_counter()
    trainer = make_trainer(epochs, progress=False, callbacks=[timer])
    trainer.fit(model, loader)
    return Run(time.perf_counter() - start, timer.times)


def hand_run(model: SplitNN, loader: DataLoader, epochs: int) -> Run:
    start = time.perf_counter()
    optimizer = model.configure_optimizers()
    model.train()
    epoch_times = []
    for _ in range(epochs):
        epoch_start = time.perf_counter()
        for batch in loader:
            train_step(model, optimizer, batch)
        epoch_times.append(time.perf_counter() - epoch_start)
    return Run(time.perf_counter() - start, epoch_times)


def time_fits(args: argparse.Namespace, split: Split) -> tuple[dict[str, list[Run]], dict[str, Run]]:
    """Alternating Lightning and hand-loop runs from the same seed, and the one-epoch warm-up run of each.

    The warm-up runs are the first of their kind in the process, so their start-up
    includes one-off costs (e.g. Lightning's first set-up); they are not in the medians.
    """
    runners: dict[str, Callable[[SplitNN, DataLoader, int], Run]] = {"hand": hand_run, "lightning": lightning_run}

    def one(name: str, epochs: int) -> Run:
        L.seed_everything(args.seed, verbose=False)
        model = SplitNN(nopeek_weight=args.nopeek_weight)
        return runners[name](model, split.loader(args.batch_size, shuffle=True, seed=args.seed), epochs)

    first = {name: one(name, 1) for name in runners}
    runs: dict[str, list[Run]] = {name: [] for name in runners}
    for repeat in range(args.fit_repeats):
        for name in ("hand", "lightning") if repeat % 2 == 0 else ("lightning", "hand"):
            print(f"  fit {repeat + 1}/{args.fit_repeats}: {name}", flush=True)
            runs[name].append(one(name, args.epochs))
    return runs, first


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["step", "fit"], default=["step", "fit"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--nopeek-weight", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per variant (part step)")
    parser.add_argument("--step-warmup", type=int, default=5, help="untimed steps per variant first")
    parser.add_argument("--train-size", type=int, default=4096, help="training images (part fit)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (part fit)")
    parser.add_argument("--fit-repeats", type=int, default=3, help="timed runs per trainer (part fit)")
    parser.add_argument("--seed", type=int, default=0)
    add_machine_arguments(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_training.csv")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    pinned = apply_machine_arguments(args)
    print(f"SplitNN training at batch {args.batch_size}. {machine_note(pinned)}")
    monitor = CpuMonitor()
    split = make_splits("fashion-mnist", seed=args.seed, train_size=args.train_size).train
    records: list[dict[str, object]] = []
    summary_lines = []

    def record(
        part: str, variant: str, metric: str, summary: Summary, ratio_to: str, value: tuple[float, float]
    ) -> None:
        records.append(
            {
                "part": part,
                "variant": variant,
                "metric": metric,
                "median": summary.median,
                "stderr": summary.stderr,
                "iqr": summary.iqr,
                "n": summary.n,
                "ratio_to": ratio_to,
                "ratio": value[0],
                "ratio_stderr": value[1],
            }
        )

    if "step" in args.parts:
        print(f"step: {args.steps} timed steps per variant, interleaved ...", flush=True)
        steps, faults = time_steps(args, split)
        step_ratio = ratio(steps["nopeek"], steps["plain"])
        rows = []
        for name, label in (("plain", "plain (weight 0)"), ("nopeek", f"nopeek (weight {args.nopeek_weight:g})")):
            value = step_ratio if name == "nopeek" else (1.0, 0.0)
            record("step", name, "step_ms", steps[name], "plain", value)
            record("step", name, "page_faults_per_step", faults[name], "", (math.nan, math.nan))
            rows.append(
                [
                    label,
                    with_error(steps[name].median, steps[name].stderr),
                    format_number(steps[name].iqr),
                    with_error(*value),
                    f"{faults[name].median:,.0f}",
                    str(steps[name].n),
                ]
            )
        overhead, overhead_err = step_ratio[0] - 1.0, step_ratio[1]
        print()
        print(format_table(["variant", "ms/step", "IQR ms", "ratio to plain", "page faults/step", "steps"], rows))
        summary_lines.append(
            f"Target: NoPeek step overhead <= {STEP_OVERHEAD_TARGET:.0%}: {overhead:+.1%} ± {overhead_err:.1%}, "
            f"{verdict(overhead <= STEP_OVERHEAD_TARGET)}"
        )
        print(summary_lines[-1])

    if "fit" in args.parts:
        images = args.epochs * len(split)
        print(f"\nfit: {len(split)} images, {args.epochs} epochs, {args.fit_repeats} runs per trainer ...", flush=True)
        runs, first = time_fits(args, split)
        within = {name: Summary.of([images / sum(r.epochs) for r in rs]) for name, rs in runs.items()}
        overall = {name: Summary.of([images / r.total for r in rs]) for name, rs in runs.items()}
        startup = {name: Summary.of([r.total - sum(r.epochs) for r in rs]) for name, rs in runs.items()}
        rows = []
        for name in ("hand", "lightning"):
            within_ratio, overall_ratio = ratio(within[name], within["hand"]), ratio(overall[name], overall["hand"])
            record("fit", name, "images_per_s_excl_startup", within[name], "hand", within_ratio)
            record("fit", name, "images_per_s_incl_startup", overall[name], "hand", overall_ratio)
            record("fit", name, "startup_s", startup[name], "", (math.nan, math.nan))
            rows.append(
                [
                    name,
                    with_error(within[name].median, within[name].stderr),
                    with_error(*within_ratio),
                    with_error(overall[name].median, overall[name].stderr),
                    with_error(*overall_ratio),
                    with_error(startup[name].median, startup[name].stderr),
                    str(within[name].n),
                ]
            )
        headers = ["trainer", "img/s excl. start-up", "ratio", "img/s incl. start-up", "ratio", "start-up s", "runs"]
        print()
        print(format_table(headers, rows))
        for name, run in first.items():
            record(
                "fit", name, "first_run_startup_s", Summary.of([run.total - sum(run.epochs)]), "", (math.nan, math.nan)
            )
        print(
            "Start-up of the first (untimed, one-epoch) run of each in this process: "
            + ", ".join(f"{name} {run.total - sum(run.epochs):.3f} s" for name, run in first.items())
        )
        lightning_ratio = ratio(within["lightning"], within["hand"])[0]
        including = ratio(overall["lightning"], overall["hand"])[0]
        summary_lines.append(
            f"Target: Lightning within {1 - LIGHTNING_TARGET:.0%} of the hand loop (judged excluding start-up): "
            f"{lightning_ratio:.3f}x, {verdict(lightning_ratio >= LIGHTNING_TARGET)}; "
            f"including start-up {including:.3f}x ({verdict(including >= LIGHTNING_TARGET)} on that basis)"
        )
        print(summary_lines[-1])

    print("\nMedians ± bootstrap standard error; ratios ± propagated standard error.")
    print("\n".join(summary_lines))
    print(f"Written {write_csv(args.output, records)} ({machine_note(pinned)})")
    print(monitor.report())


if __name__ == "__main__":
    main()
