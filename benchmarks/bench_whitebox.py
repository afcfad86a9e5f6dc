"""White-box inversion of 256 images: one batched optimisation against one image at a time.

The ``whitebox`` attack (:mod:`dpsnn.attacks.whitebox`) inverts what the server saw of
``--images`` (256) Fashion-MNIST test images, with the same settings and the same
``--steps`` per image both ways:

* **batched**: ``batch_size=256``, every image's loss summed into one optimisation
  problem (one forward and backward pass of the client per step for all of them);
* **single**: ``batch_size=1``, one optimisation per image, one after another, as
  MindArmour's ``ImageInversionAttack.generate`` loops. Timing all 256 this way is slow,
  so ``--single-images`` of them (default 32) are timed and the time is scaled by
  ``256 / single-images``; every image costs the same, so the scaling is linear. Such
  figures are marked ``*`` (extrapolated).

Runs alternate (batched, single, single, batched, ...) after an untimed warm-up of each.
Reported per client (``--clients``): ``reference``, the reference split's client (two
convolutions, a linear map to 500, tanh; random weights, seeded: the cost does not
depend on them), and ``mlp``, a one-layer client (784 → 256, tanh) whose steps are cheap
enough for the fixed cost of each step to dominate. Columns: seconds for 256 images,
their ratio to the batched time, and the largest difference between the batched and the
one-at-a-time reconstructions of the same images (a correctness check: each image's
result does not depend on its batch). Target: batched at least 20x faster than one at a
time, for the reference client.

Run: ``.venv/bin/python benchmarks/bench_whitebox.py`` (see ``--help``); the conditions the
figures depend on (an idle machine, threads, memory allocation) are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
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
    time_calls,
    verdict,
    with_error,
    write_csv,
)
from bench_training import device_note, pick_device, positive, synchronize
from torch import Tensor, nn

from dpsnn.attacks import Observation, make_attack, observe
from dpsnn.attacks.whitebox import WhiteBoxInverter
from dpsnn.data import load_images
from dpsnn.models import SplitNN

BATCHED_TARGET = 20.0  # batched at least this many times faster than one image at a time
SHAPE = (1, 28, 28)
CLIENTS = ("reference", "mlp")


def make_target(client: str, device: torch.device, seed: int) -> SplitNN:
    """The split network whose client is inverted, in eval mode on ``device``."""
    torch.manual_seed(seed)
    if client == "reference":
        model = SplitNN("reference", input_shape=SHAPE)
    else:
        mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.Tanh())
        model = SplitNN(client=mlp, server=nn.Linear(256, 10), input_shape=SHAPE)
    return model.to(device).eval()


def inverter(target: SplitNN, steps: int, batch_size: int, seed: int) -> WhiteBoxInverter:
    """The fitted ``whitebox`` attack with MindArmour's defaults but ``steps`` and ``batch_size``."""
    return make_attack("whitebox", {"steps": steps, "batch_size": batch_size}).fit(target, None, seed=seed)


def time_client(client: str, images: Tensor, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """Seconds for all images batched and (extrapolated) one at a time; the largest difference between the two."""
    target = make_target(client, device, args.seed)
    observation = observe(target, images, seed=args.seed)
    few = Observation(observation.seen[: args.single_images], observation.predicted[: args.single_images])
    batched, single = inverter(target, args.steps, len(images), args.seed), inverter(target, args.steps, 1, args.seed)
    results: dict[str, Tensor] = {}

    def run(name: str, attack: WhiteBoxInverter, seen: Observation) -> None:
        results[name] = attack.run(seen).images
        synchronize(device)

    runs = {"batched": lambda: run("batched", batched, observation), "single": lambda: run("single", single, few)}
    scale = {"batched": 1.0, "single": len(images) / len(few.seen)}
    for name in runs:  # untimed warm-up of each
        time_calls(runs[name], repeats=0, warmup=1)
    times: dict[str, list[float]] = {"batched": [], "single": []}
    for repeat in range(args.repeats):
        for name in ("batched", "single") if repeat % 2 == 0 else ("single", "batched"):
            print(f"  {client} run {repeat + 1}/{args.repeats}: {name}", flush=True)
            times[name] += [t * scale[name] for t in time_calls(runs[name], repeats=1, warmup=0)]
    difference = (results["batched"][: len(few.seen)] - results["single"]).abs().max().item()
    return {"times": {name: Summary.of(values) for name, values in times.items()}, "difference": difference}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument("--images", type=positive, default=256, help="images inverted in one batch")
    parser.add_argument("--single-images", type=positive, default=32, help="images timed one at a time")
    parser.add_argument("--steps", type=positive, default=100, help="optimisation steps per image (MindArmour's 100)")
    parser.add_argument("--repeats", type=positive, default=3, help="timed runs of each way")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: a GPU if available")
    parser.add_argument("--seed", type=int, default=0)
    add_machine_arguments(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_whitebox.csv")
    args = parser.parse_args()
    if args.single_images > args.images:
        parser.error(f"--single-images ({args.single_images}) cannot exceed --images ({args.images})")
    return args


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    pinned = apply_machine_arguments(args)
    images = load_images("fashion-mnist", train=False)[0][: args.images]
    print(
        f"White-box inversion of {len(images)} images, {args.steps} steps each, on {device_note(device)}. "
        f"{machine_note(pinned)}"
    )
    monitor = CpuMonitor()
    records: list[dict[str, object]] = []
    rows, summary_lines = [], []
    for client in args.clients:
        measured = time_client(client, images, args, device)
        times = measured["times"]
        speedup = ratio(times["single"], times["batched"])
        for name in ("batched", "single"):
            value = ratio(times[name], times["batched"])
            records.append(
                {
                    "client": client,
                    "variant": name,
                    "metric": f"seconds_per_{len(images)}_images",
                    "median": times[name].median,
                    "stderr": times[name].stderr,
                    "iqr": times[name].iqr,
                    "n": times[name].n,
                    "ratio_to": "batched",
                    "ratio": value[0],
                    "ratio_stderr": value[1],
                    "extrapolated_from": args.single_images if name == "single" else len(images),
                    "steps": args.steps,
                    "max_abs_difference": measured["difference"],
                    "device": device.type,
                }
            )
            star = "*" if name == "single" and args.single_images < len(images) else ""
            rows.append(
                [
                    client,
                    name,
                    with_error(times[name].median, times[name].stderr) + star,
                    with_error(*value),
                    f"{measured['difference']:.1e}",
                    str(times[name].n),
                ]
            )
        line = f"{client}: batched {with_error(*speedup)}x faster than one image at a time"
        if client == "reference":
            line += f"; target >= {BATCHED_TARGET:g}x: {verdict(speedup[0] >= BATCHED_TARGET)}"
        summary_lines.append(line)
    print()
    print(format_table(["client", "way", f"s / {len(images)} images", "ratio", "max |diff|", "runs"], rows))
    print(f"* timed on {args.single_images} images one at a time, scaled to {len(images)}.")
    print("Medians ± bootstrap standard error; ratios ± propagated standard error.")
    print("\n".join(summary_lines))
    print(f"Written {write_csv(args.output, records)} ({machine_note(pinned)})")
    print(monitor.report())


if __name__ == "__main__":
    main()
