"""Building a MICO task's models: stacked together, one by one, and one Lightning fit per model.

``--models`` K models of one scenario without defence (``<dataset>_inf``) of a MICO task
(``dpsnn.mico.build``) are built on ``--dataset``'s official training set (real data,
``dpsnn.data.load_images``, never downloaded), ``BuildSettings(dataset, architecture, epochs,
len_training, batch_size, val_size=1000, seed=0)``, in three ways:

- ``together``: ``build_task(..., strategy="together")``: the stacked trainer, the K models'
  parameters stacked and one vmapped forward, backward and Adam step per batch for the group;
- ``one-by-one``: ``build_task(..., strategy="one-by-one")``: the same arithmetic (the same
  initial weights, batch orders and kept epochs; the tests check both give the same
  weights) in a plain Python loop over the models;
- ``lightning``: the models trained one at a time by ``dpsnn.training.train_classifier``, as the
  build trains its DP-SGD scenarios and trained every scenario before the stacked trainer existed:
  for each of the first ``--lightning-models`` models of the same plan, its split
  ``challenge_split(N, len_training, draw_seeds(seed, index), len_challenge)``, then
  ``dpsnn.mico.build._train_model`` with the model's torch seed, then its folder written (seeds,
  ``solution.csv`` for a ``train`` model) and its checkpoint saved as the build saves it.

What is timed is what a user waits for: for ``together`` and ``one-by-one`` the whole
``build_task`` call into a fresh temporary folder (``progress=False``): loading the pool, the lock
and ``build.json``, drawing the splits, staging each model folder, training, keeping each model's
last epoch (the build's default), saving the checkpoints and renaming the folders into
place. For ``lightning``, loading the pool and the loop above, also into a fresh temporary folder.
Removing the temporary folder afterwards is not timed.
Lightning is slow, so it builds fewer models; every figure is models per hour, so they compare.

After an untimed warm-up of each way (``lightning`` with one model), ``--repeats`` timed runs of
each alternate in order (together, one-by-one, lightning, then the reverse, ...). Figures are
medians over the runs with a bootstrap standard error, and ratios to one-by-one. Target: together
at least 4x one-by-one on the CPU; the together/lightning ratio is reported, with no target.

CPU only: ``build_task`` loads the pool on the CPU and trains there (it takes no device), so
``--device cuda`` is refused, and ``auto`` hides any GPU so that Lightning (which picks an
accelerator itself) trains on the CPU as well.

Run: ``.venv/bin/python benchmarks/bench_mico_build.py`` (see ``--help``); the conditions the
figures depend on (an idle machine, threads, memory allocation) are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
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

from dpsnn.checkpoints import save_checkpoint
from dpsnn.data import DEFAULT_DATA_DIR, SYSTEM_DATA_DIR, load_images
from dpsnn.mico.build import (
    BuildSettings,
    Scenario,
    _torch_seed,
    _train_model,
    build_task,
    planned_models,
    scenarios_for,
)
from dpsnn.mico.challenge import challenge_split, draw_seeds
from dpsnn.mico.layout import model_weights_path, write_model_folder

TARGET = 4.0
WAYS = ("together", "one-by-one", "lightning")
ARCHITECTURES = ("mlp", "reference")


def build_stacked(
    root: str, args: argparse.Namespace, settings: BuildSettings, scenario: Scenario, strategy: str
) -> int:
    """Build the K models with ``build_task`` into ``root`` (a fresh folder); the number of models built."""
    report = build_task(
        root,
        settings,
        [scenario],
        args.models,
        data_dir=args.data_dir,
        system_dir=args.system_dir,
        download=False,
        progress=False,
        strategy=strategy,
    )
    return len(report.built)


def build_lightning(
    root: str, args: argparse.Namespace, settings: BuildSettings, scenario: Scenario, models: int
) -> int:
    """The first ``models`` models of the plan, one ``train_classifier`` fit each, written as the build writes them."""
    images, labels = load_images(settings.dataset, True, args.data_dir, args.system_dir, download=False)
    settings = settings.resolved(len(labels))
    folder = Path(root) / settings.dataset / scenario.name
    for phase, index in planned_models(args.models)[:models]:
        seeds = draw_seeds(settings.seed, index)
        split = challenge_split(len(labels), settings.len_training, seeds, settings.len_challenge)
        model, epoch = _train_model(settings, scenario, split, images, labels, _torch_seed(settings.seed, index))
        written = write_model_folder(folder, phase, index, seeds, split.solution if phase == "train" else None)
        extra = {"mico_scenario": scenario.name, "mico_phase": phase, "mico_index": index}
        save_checkpoint(model, model_weights_path(written), "classifier", epoch, extra)
    return models


def time_ways(args: argparse.Namespace, settings: BuildSettings, scenario: Scenario) -> dict[str, list[float]]:
    """Seconds per run of each way, alternating the order, after one untimed run of each."""
    builds: dict[str, Callable[[str, int], int]] = {
        "together": lambda root, _: build_stacked(root, args, settings, scenario, "together"),
        "one-by-one": lambda root, _: build_stacked(root, args, settings, scenario, "one-by-one"),
        "lightning": lambda root, models: build_lightning(root, args, settings, scenario, models),
    }
    expected = {"together": args.models, "one-by-one": args.models, "lightning": args.lightning_models}

    def run(name: str, models: int) -> float:
        with tempfile.TemporaryDirectory(prefix="bench_mico_build_") as root:
            start = time.perf_counter()  # the folder's removal afterwards is not timed
            built = builds[name](root, models)
            elapsed = time.perf_counter() - start
        if built != models:
            sys.exit(f"error: {name} built {built} models, not {models}")
        return elapsed

    print("warm-up (untimed) ...", flush=True)
    for name in WAYS:
        run(name, 1 if name == "lightning" else expected[name])
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    for repeat in range(args.repeats):
        order = list(WAYS) if repeat % 2 == 0 else list(reversed(WAYS))
        for name in order:
            print(f"  run {repeat + 1}/{args.repeats}: {name}", flush=True)
            times[name].append(run(name, expected[name]))
    return times


def pick_device(name: str) -> torch.device:
    """The CPU: ``build_task`` trains where it loads the pool, on the CPU; a GPU is hidden from Lightning too."""
    if name == "cuda":
        sys.exit("error: --device cuda: build_task takes no device and trains on the CPU; use --device cpu")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return torch.device("cpu")


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist", help="a dataset installed locally (no download)")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="mlp")
    parser.add_argument("--models", type=int, default=16, help="models built by together and one-by-one (at least 4)")
    parser.add_argument(
        "--lightning-models", type=positive, default=4, help="models built by lightning (the first of the plan)"
    )
    parser.add_argument("--len-training", type=positive, default=10_000, help="training points of each model")
    parser.add_argument("--epochs", type=positive, default=2)
    parser.add_argument("--batch-size", type=positive, default=128)
    parser.add_argument("--repeats", type=positive, default=3, help="timed runs per way")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="the CPU only (see above)")
    parser.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
    parser.add_argument("--system-dir", type=Path, default=Path(SYSTEM_DATA_DIR))
    add_machine_arguments(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_mico_build.csv")
    args = parser.parse_args()
    if args.models < 4:
        parser.error(f"--models must be at least 4 (build_task's minimum), got {args.models}")
    if args.lightning_models > args.models:
        parser.error(f"--lightning-models ({args.lightning_models}) cannot exceed --models ({args.models})")
    return args


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    pinned = apply_machine_arguments(args)
    settings = BuildSettings(
        dataset=args.dataset,
        architecture=args.architecture,
        epochs=args.epochs,
        len_training=args.len_training,
        batch_size=args.batch_size,
        val_size=1000,
        seed=0,
    )
    scenario = scenarios_for(args.dataset, [float("inf")])[0]
    print(
        f"{scenario.name}: {args.models} models ({args.lightning_models} by lightning) of {args.architecture}, "
        f"{args.epochs} epochs on {args.len_training} points, batch {args.batch_size}, on the CPU. "
        f"{machine_note(pinned)}"
    )
    monitor = CpuMonitor()
    times = time_ways(args, settings, scenario)
    counts = {"together": args.models, "one-by-one": args.models, "lightning": args.lightning_models}
    rates = {name: Summary.of([counts[name] * 3600 / t for t in ts]) for name, ts in times.items()}
    rows, records = [], []
    for name in WAYS:
        speedup = ratio(rates[name], rates["one-by-one"])
        seconds = Summary.of(times[name])
        rows.append(
            [
                name,
                str(counts[name]),
                with_error(seconds.median, seconds.stderr),
                with_error(rates[name].median, rates[name].stderr),
                with_error(*speedup),
                str(seconds.n),
            ]
        )
        records.append(
            {
                "variant": name,
                "metric": "models_per_hour",
                "median": rates[name].median,
                "stderr": rates[name].stderr,
                "iqr": rates[name].iqr,
                "n": rates[name].n,
                "ratio_to": "one-by-one",
                "ratio": speedup[0],
                "ratio_stderr": speedup[1],
                "models": counts[name],
                "dataset": args.dataset,
                "architecture": args.architecture,
                "len_training": args.len_training,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "device": device.type,
            }
        )
    print(format_table(["way", "models", "s per run", "models/hour", "vs one-by-one", "runs"], rows))
    speedup = ratio(rates["together"], rates["one-by-one"])[0]
    against_lightning = ratio(rates["together"], rates["lightning"])
    print("\nMedians ± bootstrap standard error; ratios ± propagated standard error.")
    print(
        f"Target ({args.architecture}, CPU): together >= {TARGET:g}x one-by-one: {speedup:.2f}x, "
        f"{verdict(speedup >= TARGET)}"
    )
    print(f"Together against lightning (reported, no target): {with_error(*against_lightning)}x")
    print(f"Written {write_csv(args.output, records)} ({machine_note(pinned)})")
    print(monitor.report())


if __name__ == "__main__":
    main()
