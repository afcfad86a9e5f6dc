"""Speed of NTGA: one projected-gradient iteration on one block, and the projected time to poison 60,000 images.

One iteration is what :func:`dpsnn.unlearnable.ntga.attack_block` repeats ``iterations``
times: the NTK of the block and between the clean target images and the block (5 ReLU
layers), the block kernel's eigendecomposition, the GP's prediction on the targets, the
cross-entropy and its gradient with respect to the block's pixels. It is timed on real
Fashion-MNIST images at the published sizes (a block of 509 images, as 60,000 images split
into 118 blocks of at most 512, and 10,000 targets) in three ways:

* ``compiled float32`` (the default of ``scripts/unlearnable.py make``): the target-by-block
  kernel compiled by ``torch.compile`` and computed in float32;
* ``eager float32``: the same, not compiled (``--no-compile``);
* ``eager float64``: not compiled, in float64 (``--precision float64 --no-compile``).

The projected time for all 60,000 images is 118 blocks × 10 iterations × the median
iteration, plus one compilation; the time of a whole real run is in
``results/unlearnable/make.csv`` (``seconds``). Run: ``.venv/bin/python benchmarks/bench_ntga.py``
(see ``--help``). Target: the 60,000 images in at most 30 minutes on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
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

from dpsnn.data import load_images
from dpsnn.unlearnable.ntga import NTGA, cross_kernel_function, gp_mean_prediction

TRAIN_IMAGES = 60_000
TARGET_MINUTES = 30.0
WAYS = {"compiled float32": ("float32", True), "eager float32": ("float32", False), "eager float64": ("float64", False)}


def iteration(attack: NTGA, kernel, block, one_hot, target, target_labels) -> None:  # noqa: ANN001
    poisoned = block.detach().double().requires_grad_(True)
    loss = F.cross_entropy(gp_mean_prediction(attack, poisoned, one_hot, target, kernel), target_labels)
    torch.autograd.grad(loss, poisoned)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target-size", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "ntga.csv")
    add_machine_arguments(parser)
    args = parser.parse_args()
    pinned = apply_machine_arguments(args)
    print(f"NTGA, one iteration on one block. {machine_note(pinned)}")
    monitor = CpuMonitor()
    images, labels = load_images("fashion-mnist", True)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    blocks = math.ceil(TRAIN_IMAGES / NTGA().block_size)
    block_size = math.ceil(TRAIN_IMAGES / blocks)
    target, target_labels = images[order[: args.target_size]], labels[order[: args.target_size]]
    block, one_hot = images[order[-block_size:]], F.one_hot(labels[order[-block_size:]], 10).double()
    summaries, compile_seconds = {}, {}
    for way, (precision, compile_kernel) in WAYS.items():
        attack = NTGA(precision=precision, target_size=args.target_size)
        kernel = cross_kernel_function(attack, compile_kernel)
        started = time.perf_counter()
        iteration(attack, kernel, block, one_hot, target.to(attack.dtype), target_labels)  # compiles, if it does
        compile_seconds[way] = time.perf_counter() - started
        samples = time_calls(
            lambda a=attack, k=kernel: iteration(a, k, block, one_hot, target.to(a.dtype), target_labels),
            args.repeats,
            warmup=0,
        )
        summaries[way] = Summary.of(samples)
        compile_seconds[way] -= summaries[way].median
    default = summaries["compiled float32"]
    rows, records = [], []
    for way, summary in summaries.items():
        minutes = (blocks * NTGA().iterations * summary.median + max(compile_seconds[way], 0.0)) / 60
        speed_up, speed_up_se = ratio(summary, default)
        rows.append(
            [
                way,
                with_error(summary.median, summary.stderr),
                f"{compile_seconds[way]:.0f}",
                with_error(speed_up, speed_up_se),
                f"{minutes:.1f}",
            ]
        )
        records.append(
            {
                "way": way,
                "block": block_size,
                "targets": args.target_size,
                "iteration_s": summary.median,
                "iteration_s_se": summary.stderr,
                "first_call_extra_s": compile_seconds[way],
                "slower_than_default": speed_up,
                "slower_than_default_se": speed_up_se,
                "projected_60k_minutes": minutes,
            }
        )
    headers = ["way", "iteration (s)", "first call extra (s)", "× default", "60,000 images (min)"]
    print(format_table(headers, rows))
    projected = records[0]["projected_60k_minutes"]
    print(
        f"Target: 60,000 images in ≤ {TARGET_MINUTES:.0f} min: {projected:.1f} min, "
        f"{verdict(projected <= TARGET_MINUTES)}"
    )
    print(monitor.report())
    print(f"Written {write_csv(args.output, records)} ({machine_note(pinned)})")


if __name__ == "__main__":
    main()
