"""Training cost: the NoPeek overhead per step; Lightning against a hand loop (reference and ResNet-18 splits).

Part ``step``: one full :class:`SplitNN` training step (client, wire, server, NoPeek
loss, backward, Adam step) at batch 128, with NoPeek weight 0 (cross-entropy only; dCor
is not computed) and with weight 0.5. Two models with the same initial weights take
turns on the same Fashion-MNIST batches, alternating which goes first, and each step is
timed on its own. Target: the NoPeek step at most 10% slower (median against median).

Part ``fit``: training throughput on the same in-memory data (the first ``--train-size``
images of the Fashion-MNIST train split, batch 128, shuffled with a fixed seed) and the
same model, seed and Adam optimiser, run by Lightning as dpsnn trains
(``model.use_train_loader``, ``dpsnn.loops.make_trainer`` and ``trainer.fit``, no
validation loader) and by a plain torch loop over the same loader calling the model's
own step. Runs alternate (hand, Lightning, Lightning, hand, ...)
after an untimed warm-up of each. Images/s are reported excluding Lightning's start-up
and tear-down (time inside the training epochs, from a callback) and including them
(wall time of building the trainer and ``fit``). Target: Lightning's throughput
excluding start-up within 10% of the hand loop's; the start-up is a fixed cost per run,
also reported in seconds.

Part ``resnet18``: the same comparison for the ``resnet18:2`` split (torchvision's
ResNet-18 cut after its second stage, ``SplitNN("resnet18:2", input_shape=(3, 32, 32),
num_classes=10)``) on random CIFAR-size images (3x32x32 in [0, 1], 10 random classes),
batch 128, Adam, ``--resnet-steps`` steps per run. Images/s of Lightning and of the hand
loop and their ratio are reported as for part ``fit``; on a GPU they are the figures of
that GPU. ResNet-18 at 32x32 is slow on a CPU (seconds per step), so the default run is
short there and longer on a GPU.

Every part runs on ``--device`` (default: a CUDA GPU when there is one). Lightning picks
its accelerator itself (``make_trainer``: ``accelerator="auto"``), so ``--device cpu``
hides the GPUs from this process before anything queries them.

Run: ``.venv/bin/python benchmarks/bench_training.py`` (see ``--help``); the conditions the
figures depend on (an idle machine, threads, memory allocation) are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
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
from dpsnn.loops import make_trainer
from dpsnn.models import SplitNN

STEP_OVERHEAD_TARGET = 0.10
LIGHTNING_TARGET = 0.90  # Lightning's images/s at least this fraction of the hand loop's
RESNET = "resnet18:2"
RESNET_SHAPE = (3, 32, 32)
RESNET_CLASSES = 10
# Defaults of part resnet18 per device: steps per timed run, untimed warm-up steps, timed runs per trainer.
RESNET_DEFAULTS = {"cpu": (3, 1, 5), "cuda": (50, 20, 5)}
PARTS = ("step", "fit", "resnet18")

# The fits deliberately have no validation loader.
warnings.filterwarnings("ignore", message=r".*but have no `val_dataloader`.*")

Batch = tuple[Tensor, Tensor]


def synchronize(device: torch.device) -> None:
    """Wait for the queued work of ``device`` (a no-op on the CPU), so wall-clock times include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on ``device``, as Lightning moves each batch before its step."""
    return batch[0].to(device), batch[1].to(device)


def train_step(model: SplitNN, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    """What Lightning's automatic optimisation does for one batch, without its bookkeeping."""
    optimizer.zero_grad(set_to_none=True)
    loss = model._step(batch)["loss"]
    loss.backward()
    optimizer.step()


def time_steps(
    args: argparse.Namespace, split: Split, device: torch.device
) -> tuple[dict[str, Summary], dict[str, Summary]]:
    """Milliseconds and minor page faults per training step of the plain and the NoPeek model, interleaved."""
    L.seed_everything(args.seed, verbose=False)
    models = {"plain": SplitNN(nopeek_weight=0.0), "nopeek": SplitNN(nopeek_weight=args.nopeek_weight)}
    models["nopeek"].load_state_dict(models["plain"].state_dict())
    optimizers = {}
    for name, model in models.items():
        model.to(device).train()
        optimizers[name] = model.configure_optimizers()
    batches = list(split.loader(args.batch_size, shuffle=True, seed=args.seed))
    # A short last batch would be cheaper.
    batches = [to_device(b, device) for b in batches if len(b[1]) == args.batch_size]
    times: dict[str, list[float]] = {name: [] for name in models}
    faults: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.step_warmup + args.steps):
        batch = batches[step % len(batches)]
        for name in ("plain", "nopeek") if step % 2 == 0 else ("nopeek", "plain"):
            synchronize(device)
            faults_before, start = minor_faults(), time.perf_counter()
            train_step(models[name], optimizers[name], batch)
            synchronize(device)
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
    """Record the wall time of each training epoch (after the device finished its work)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.device: torch.device | None = None  # where the model trained (Lightning moves it back to the CPU after)
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.device = pl_module.device
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self.times.append(time.perf_counter() - self._start)


def lightning_run(model: SplitNN, loader: DataLoader, epochs: int, device: torch.device) -> Run:
    """Train as dpsnn does: the model's own train loader, ``make_trainer`` and ``trainer.fit`` (no validation)."""
    timer = EpochTimer()
    start = time.perf_counter()
    trainer = make_trainer(epochs, progress=False, callbacks=[timer])
    model.use_train_loader(loader)
    trainer.fit(model)
    if timer.device is None or timer.device.type != device.type:
        raise RuntimeError(f"Lightning trained on {timer.device}, the hand loop on {device}")
    return Run(time.perf_counter() - start, timer.times)


def hand_run(model: SplitNN, loader: DataLoader, epochs: int, device: torch.device) -> Run:
    """A plain torch loop: the model's own optimiser and train loader, each batch moved to ``device``."""
    start = time.perf_counter()
    model.to(device).train()
    model.use_train_loader(loader)
    optimizer = model.configure_optimizers()
    loader = model.train_dataloader()
    epoch_times = []
    for _ in range(epochs):
        synchronize(device)
        epoch_start = time.perf_counter()
        for batch in loader:
            train_step(model, optimizer, to_device(batch, device))
        synchronize(device)
        epoch_times.append(time.perf_counter() - epoch_start)
    return Run(time.perf_counter() - start, epoch_times)


RUNNERS: dict[str, Callable[[SplitNN, DataLoader, int, torch.device], Run]] = {
    "hand": hand_run,
    "lightning": lightning_run,
}


def time_fits(
    make_model: Callable[[], SplitNN],
    split: Split,
    warmup: Split,
    epochs: int,
    repeats: int,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[dict[str, list[Run]], dict[str, Run]]:
    """Alternating Lightning and hand-loop runs from the same seed, and the one-epoch warm-up run of each on ``warmup``.

    The warm-up runs are the first of their kind in the process, so their start-up
    includes one-off costs (e.g. Lightning's first set-up); they are not in the medians.
    """

    def one(name: str, data: Split, epochs: int) -> Run:
        L.seed_everything(args.seed, verbose=False)
        return RUNNERS[name](make_model(), data.loader(args.batch_size, shuffle=True, seed=args.seed), epochs, device)

    first = {name: one(name, warmup, 1) for name in RUNNERS}
    runs: dict[str, list[Run]] = {name: [] for name in RUNNERS}
    for repeat in range(repeats):
        for name in ("hand", "lightning") if repeat % 2 == 0 else ("lightning", "hand"):
            print(f"  run {repeat + 1}/{repeats}: {name}", flush=True)
            runs[name].append(one(name, split, epochs))
    return runs, first


def random_images(count: int, seed: int) -> Split:
    """``count`` random CIFAR-size images in [0, 1] with random labels, from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, *RESNET_SHAPE, generator=generator)
    return Split(images, torch.randint(0, RESNET_CLASSES, (count,), generator=generator))


def pick_device(name: str) -> torch.device:
    """The device of ``--device``; for ``cpu`` the GPUs are hidden so that Lightning's ``auto`` uses the CPU too."""
    if name == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything queries CUDA
        if torch.cuda.is_available():
            sys.exit("error: --device cpu: CUDA was initialised before the GPUs could be hidden")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA GPU is available")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_note(device: torch.device) -> str:
    """The device the figures were measured on, in words."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--batch-size", type=positive, default=128)
    parser.add_argument("--nopeek-weight", type=float, default=0.5)
    parser.add_argument("--steps", type=positive, default=60, help="timed steps per variant (part step)")
    parser.add_argument("--step-warmup", type=non_negative, default=5, help="untimed steps per variant first")
    parser.add_argument("--train-size", type=positive, default=4096, help="training images (part fit)")
    parser.add_argument("--epochs", type=positive, default=2, help="epochs per run (part fit)")
    parser.add_argument("--fit-repeats", type=positive, default=3, help="timed runs per trainer (part fit)")
    cpu, cuda = RESNET_DEFAULTS["cpu"], RESNET_DEFAULTS["cuda"]
    parser.add_argument(
        "--resnet-steps",
        type=positive,
        default=None,
        help=f"training steps per timed run (part resnet18; default {cpu[0]} on a CPU, {cuda[0]} on a GPU)",
    )
    parser.add_argument(
        "--resnet-warmup",
        type=positive,
        default=None,
        help=f"steps of the untimed first run of each trainer (default {cpu[1]} on a CPU, {cuda[1]} on a GPU)",
    )
    parser.add_argument(
        "--resnet-repeats",
        type=positive,
        default=None,
        help=f"timed runs per trainer (part resnet18; default {cpu[2]} on a CPU, {cuda[2]} on a GPU)",
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train (auto: a GPU if available)"
    )
    parser.add_argument("--seed", type=int, default=0)
    add_machine_arguments(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_training.csv")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    pinned = apply_machine_arguments(args)
    print(f"SplitNN training at batch {args.batch_size} on {device_note(device)}. {machine_note(pinned)}")
    monitor = CpuMonitor()
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
                "device": device.type,
            }
        )

    def report_fits(part: str, runs: dict[str, list[Run]], first: dict[str, Run], images: int) -> tuple[float, float]:
        """Print and record Lightning against the hand loop; return the ratios excluding and including start-up."""
        within = {name: Summary.of([images / sum(r.epochs) for r in rs]) for name, rs in runs.items()}
        overall = {name: Summary.of([images / r.total for r in rs]) for name, rs in runs.items()}
        startup = {name: Summary.of([r.total - sum(r.epochs) for r in rs]) for name, rs in runs.items()}
        rows = []
        for name in ("hand", "lightning"):
            within_ratio, overall_ratio = ratio(within[name], within["hand"]), ratio(overall[name], overall["hand"])
            record(part, name, "images_per_s_excl_startup", within[name], "hand", within_ratio)
            record(part, name, "images_per_s_incl_startup", overall[name], "hand", overall_ratio)
            record(part, name, "startup_s", startup[name], "", (math.nan, math.nan))
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
                part, name, "first_run_startup_s", Summary.of([run.total - sum(run.epochs)]), "", (math.nan, math.nan)
            )
        print(
            "Start-up of the first (untimed) run of each in this process: "
            + ", ".join(f"{name} {run.total - sum(run.epochs):.3f} s" for name, run in first.items())
        )
        return ratio(within["lightning"], within["hand"])[0], ratio(overall["lightning"], overall["hand"])[0]

    if "step" in args.parts or "fit" in args.parts:
        split = make_splits("fashion-mnist", seed=args.seed, train_size=args.train_size).train

    if "step" in args.parts:
        print(f"step: {args.steps} timed steps per variant, interleaved ...", flush=True)
        steps, faults = time_steps(args, split, device)
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
        print(f"\nfit: {len(split)} images, {args.epochs} epochs, {args.fit_repeats} runs per trainer ...", flush=True)
        runs, first = time_fits(
            lambda: SplitNN(nopeek_weight=args.nopeek_weight), split, split, args.epochs, args.fit_repeats, args, device
        )
        lightning_ratio, including = report_fits("fit", runs, first, args.epochs * len(split))
        summary_lines.append(
            f"Target: Lightning within {1 - LIGHTNING_TARGET:.0%} of the hand loop (judged excluding start-up): "
            f"{lightning_ratio:.3f}x, {verdict(lightning_ratio >= LIGHTNING_TARGET)}; "
            f"including start-up {including:.3f}x ({verdict(including >= LIGHTNING_TARGET)} on that basis)"
        )
        print(summary_lines[-1])

    if "resnet18" in args.parts:
        steps, warmup, repeats = RESNET_DEFAULTS[device.type]
        steps, warmup = args.resnet_steps or steps, args.resnet_warmup or warmup
        repeats = args.resnet_repeats or repeats
        data = random_images(steps * args.batch_size, args.seed)
        print(
            f"\nresnet18: {RESNET} on {len(data)} random {'x'.join(map(str, RESNET_SHAPE))} images "
            f"({steps} steps), {repeats} runs per trainer after a {warmup}-step warm-up of each ...",
            flush=True,
        )
        runs, first = time_fits(
            lambda: SplitNN(RESNET, input_shape=RESNET_SHAPE, num_classes=RESNET_CLASSES),
            data,
            data.subset(warmup * args.batch_size),
            1,
            repeats,
            args,
            device,
        )
        lightning_ratio, including = report_fits("resnet18", runs, first, len(data))
        summary_lines.append(
            f"ResNet-18 split ({RESNET}, {device_note(device)}): Lightning/hand {lightning_ratio:.3f}x excluding "
            f"start-up, {including:.3f}x including it (against the {1 - LIGHTNING_TARGET:.0%} bar of part fit: "
            f"{verdict(lightning_ratio >= LIGHTNING_TARGET)})"
        )
        print(summary_lines[-1])

    print("\nMedians ± bootstrap standard error; ratios ± propagated standard error.")
    print("\n".join(summary_lines))
    print(f"Written {write_csv(args.output, records)} ({machine_note(pinned)})")
    print(monitor.report())


if __name__ == "__main__":
    main()
