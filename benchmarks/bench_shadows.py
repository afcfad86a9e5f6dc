"""Shadow models trained together against one at a time, same total work.

``--shadows`` shadow models of one architecture are trained on halves of ``--examples``
random images (``dpsnn.shadows.member_masks``), ``--epochs`` epochs at ``--batch-size``
with Adam, in two ways that do exactly the same arithmetic (the same models, batches and
optimiser; the tests check they give the same weights):

- ``together``: ``dpsnn.shadows.train_shadows``: the parameters stacked, one vmapped
  forward and backward and one Adam step per batch for all shadows;
- ``one-by-one``: ``dpsnn.shadows.train_shadows_one_by_one``: a plain Python loop over
  the models, one ordinary training loop each.

Each architecture is timed in runs that alternate (together, one-by-one, one-by-one,
together, ...) after an untimed warm-up of each; the figures are medians over runs of
shadow-model-epochs per second (the model build is included: both build the same
models) and their ratio. Target: together at least 4x faster on the CPU.

Architectures: ``reference`` (the 2021 split network, 28x28 images) and ``mlp`` (a
split network of two small linear layers, the size of the models LiRA is often run with
on tabular data), so the figure for conv-heavy and for overhead-bound models is seen
side by side.

Run: ``.venv/bin/python benchmarks/bench_shadows.py`` (see ``--help``); the conditions the
figures depend on (an idle machine, threads, memory allocation) are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _timing import (
    RESULTS_DIR,
    CpuMonitor,
    Summary,
    add_machine_arguments,
    apply_machine_arguments,
    format_table,
    machine_note,
    ratio,
    verdict,
    with_error,
    write_csv,
)
from torch import nn

from dpsnn.models import SplitNN
from dpsnn.shadows import ShadowRecipe, member_masks, train_shadows, train_shadows_one_by_one

TARGET = 4.0
ARCHITECTURES = ("reference", "mlp")
TRAINERS = {"together": functools.partial(train_shadows, strategy="together"), "one-by-one": train_shadows_one_by_one}


def model_factory(architecture: str, image_size: int, device: torch.device) -> Callable[[], nn.Module]:
    """Builds one untrained split network of ``architecture`` for 1 x size x size images, on ``device``."""
    shape = (1, image_size, image_size)
    if architecture == "reference":
        return lambda: SplitNN("reference", input_shape=shape).to(device)

    def small() -> nn.Module:
        client = nn.Sequential(nn.Flatten(), nn.Linear(image_size * image_size, 64), nn.Tanh())
        return SplitNN(client=client, server=nn.Linear(64, 10), input_shape=shape).to(device)

    return small


def time_trainers(
    make: Callable[[], nn.Module], images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace
) -> dict[str, list[float]]:
    """Seconds per run of each trainer, alternating the order, after one untimed run of each."""
    masks = member_masks(len(labels), args.shadows, seed=args.seed)
    recipe = ShadowRecipe(epochs=args.epochs, batch_size=args.batch_size)

    def run(name: str) -> float:
        if images.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        shadows = TRAINERS[name](make, images, labels, masks, recipe, seed=args.seed)
        next(iter(shadows.params.values())).sum().item()  # waits for the device
        return time.perf_counter() - start

    for name in TRAINERS:
        run(name)
    times: dict[str, list[float]] = {name: [] for name in TRAINERS}
    for repeat in range(args.repeats):
        order = list(TRAINERS) if repeat % 2 == 0 else list(reversed(TRAINERS))
        for name in order:
            print(f"  run {repeat + 1}/{args.repeats}: {name}", flush=True)
            times[name].append(run(name))
    return times


def pick_device(name: str) -> torch.device:
    if name == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA GPU is available")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architectures", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    parser.add_argument("--shadows", type=int, default=16)
    parser.add_argument("--examples", type=int, default=1024, help="images the shadows' halves are drawn from")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per trainer and architecture")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    add_machine_arguments(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_shadows.csv")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    pinned = apply_machine_arguments(args)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{args.shadows} shadow models, {args.epochs} epochs on halves of {args.examples} images "
        f"({args.image_size}x{args.image_size}), batch {args.batch_size}, on {where}. {machine_note(pinned)}"
    )
    monitor = CpuMonitor()
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.examples, 1, args.image_size, args.image_size, generator=generator).to(device)
    labels = torch.randint(0, 10, (args.examples,), generator=generator).to(device)
    records, lines = [], []
    for architecture in args.architectures:
        print(f"\n{architecture}: {args.repeats} runs per trainer ...", flush=True)
        times = time_trainers(model_factory(architecture, args.image_size, device), images, labels, args)
        work = args.shadows * args.epochs  # shadow-model-epochs per run
        rates = {name: Summary.of([work / t for t in ts]) for name, ts in times.items()}
        rows = []
        for name in TRAINERS:
            speedup = ratio(rates[name], rates["one-by-one"])
            seconds = Summary.of(times[name])
            rows.append([name, with_error(seconds.median, seconds.stderr), with_error(*speedup), str(seconds.n)])
            records.append(
                {
                    "architecture": architecture,
                    "variant": name,
                    "metric": "shadow_epochs_per_s",
                    "median": rates[name].median,
                    "stderr": rates[name].stderr,
                    "iqr": rates[name].iqr,
                    "n": rates[name].n,
                    "ratio_to": "one-by-one",
                    "ratio": speedup[0],
                    "ratio_stderr": speedup[1],
                    "shadows": args.shadows,
                    "examples": args.examples,
                    "image_size": args.image_size,
                    "batch_size": args.batch_size,
                    "device": device.type,
                }
            )
        print(format_table(["trainer", "s per run", "speed-up", "runs"], rows))
        speedup = ratio(rates["together"], rates["one-by-one"])[0]
        lines.append(
            f"Target ({architecture}, {where}): together >= {TARGET:g}x one-by-one: {speedup:.2f}x, "
            f"{verdict(speedup >= TARGET)}"
        )
        print(lines[-1])
    print("\nMedians ± bootstrap standard error; ratios ± propagated standard error.")
    print("\n".join(lines))
    print(f"Written {write_csv(args.output, records)} ({machine_note(pinned)})")
    print(monitor.report())


if __name__ == "__main__":
    main()
