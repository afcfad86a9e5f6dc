"""Speed of the NoPeek loss: dpsnn's vectorised dCor against a pairwise-loop reference and the ``dcor`` package.

For each batch size B the inputs are random images ``(B, 1, 28, 28)`` in [0, 1],
intermediates ``(B, 500)`` that require grad, logits ``(B, 10)`` that require grad and
random labels, all float32. Three things are timed:

* ``dpsnn``: ``NoPeekLoss(weight)`` forward and backward (gradients of the
  intermediates and logits);
* ``loop``: the same loss with the distance matrices built by a Python double loop over
  pairs of samples, with squared Euclidean distances, written element by element into a
  preallocated matrix (the style of the original NoPeek code), then double centring and
  dCor; forward and backward in torch. It is very slow, so it runs only a few times; above
  ``--loop-full-max`` samples only the first ``--loop-rows`` rows of each distance matrix
  are filled and the time is scaled by ``B / rows`` (reported as extrapolated);
* ``dcor``: ``dcor.distance_correlation`` on float64 numpy arrays, forward only.

The reference uses squared distances, so its dCor value differs from dpsnn's (which uses
Euclidean distances, as ``dcor`` does); its cost is what is compared. dpsnn and ``dcor``
are also checked to agree in float64.

Run: ``.venv/bin/python benchmarks/bench_nopeek.py`` (see ``--help``); the conditions the
figures depend on (an idle machine, threads, memory allocation) are in ``benchmarks/README.md``.
Target: dpsnn at least 1000 times faster than the loop at batch 128.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import dcor
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
from torch import Tensor

from dpsnn.architectures import INTERMEDIATE_SIZE  # the reference network's intermediate vector
from dpsnn.defences.nopeek import NoPeekLoss
from dpsnn.stats import distance_correlation

NUM_CLASSES = 10
TARGET_BATCH = 128
TARGET_SPEED_UP = 1000.0


def loop_distance_matrix(data: Tensor, rows: int | None = None) -> Tensor:
    """Squared Euclidean distances between the rows of ``data`` ``(N, D)``, one pair at a time.

    With ``rows`` only the first ``rows`` rows are filled (the rest stay 0); used to time a
    fraction of the work.
    """
    n = data.size(0)
    matrix = torch.zeros((n, n))
    for i in range(n if rows is None else rows):
        for j in range(n):
            difference = data[i] - data[j]
            matrix[i, j] = (difference**2).sum()
    return matrix


def _double_centred(distances: Tensor) -> Tensor:
    row_mean = distances.mean(dim=0, keepdim=True)
    column_mean = distances.mean(dim=1, keepdim=True)
    return distances - row_mean - column_mean + distances.mean()


def loop_distance_correlation(x: Tensor, y: Tensor, rows: int | None = None) -> Tensor:
    """dCor from loop-built (squared) distance matrices, in the reference's formulation."""
    n = x.size(0)
    a = _double_centred(loop_distance_matrix(x.reshape(n, -1), rows))
    b = _double_centred(loop_distance_matrix(y.reshape(n, -1), rows))
    dcov = (a * b).sum().sqrt() / n
    dvar_x = (a * a).sum().sqrt() / n
    dvar_y = (b * b).sum().sqrt() / n
    return dcov / (dvar_x * dvar_y).sqrt()


def loop_nopeek_loss(
    inputs: Tensor, intermediates: Tensor, logits: Tensor, targets: Tensor, weight: float, rows: int | None = None
) -> Tensor:
    return F.cross_entropy(logits, targets) + weight * loop_distance_correlation(inputs, intermediates, rows)


@dataclass
class Inputs:
    images: Tensor
    intermediates: Tensor
    logits: Tensor
    targets: Tensor


def make_inputs(batch_size: int, seed: int) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    return Inputs(
        images=torch.rand(batch_size, 1, 28, 28, generator=generator),
        intermediates=torch.randn(batch_size, INTERMEDIATE_SIZE, generator=generator).requires_grad_(),
        logits=torch.randn(batch_size, NUM_CLASSES, generator=generator).requires_grad_(),
        targets=torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator),
    )


def time_dpsnn(data: Inputs, weight: float, repeats: int, warmup: int) -> Summary:
    loss_fn = NoPeekLoss(weight)

    def step() -> None:
        loss = loss_fn(data.images, data.intermediates, data.logits, data.targets)
        torch.autograd.grad(loss, (data.intermediates, data.logits))

    return Summary.of(time_calls(step, repeats, warmup))


def time_loop(data: Inputs, weight: float, repeats: int, rows: int | None) -> Summary:
    """Time the loop reference; with ``rows`` the times are scaled up to the full matrix."""

    def step() -> None:
        loss = loop_nopeek_loss(data.images, data.intermediates, data.logits, data.targets, weight, rows)
        torch.autograd.grad(loss, (data.intermediates, data.logits))

    scale = 1.0 if rows is None else data.targets.numel() / rows
    return Summary.of([t * scale for t in time_calls(step, repeats, warmup=0)])


def time_dcor(data: Inputs, repeats: int, warmup: int) -> tuple[Summary, float]:
    """Time ``dcor.distance_correlation``; also return its difference from dpsnn's value in float64."""
    x = data.images.reshape(len(data.targets), -1).double().numpy()
    y = data.intermediates.detach().double().numpy()
    summary = Summary.of(time_calls(lambda: dcor.distance_correlation(x, y), repeats, warmup))
    reference = float(dcor.distance_correlation(x, y))
    ours = float(distance_correlation(torch.from_numpy(x), torch.from_numpy(y)))
    return summary, abs(ours - reference)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--repeats", type=int, default=200, help="timed dpsnn calls per batch size")
    parser.add_argument("--warmup", type=int, default=10, help="untimed dpsnn and dcor calls first")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed loop calls per batch size")
    parser.add_argument(
        "--loop-full-max",
        type=int,
        default=128,
        help="largest batch for which the loop runs in full; above it the time is extrapolated",
    )
    parser.add_argument("--loop-rows", type=int, default=8, help="rows filled when the loop time is extrapolated")
    parser.add_argument("--dcor-repeats", type=int, default=10, help="timed dcor calls per batch size")
    parser.add_argument("--weight", type=float, default=0.5, help="NoPeek weight")
    parser.add_argument("--seed", type=int, default=0)
    add_machine_arguments(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_nopeek.csv")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    pinned = apply_machine_arguments(args)
    print(f"NoPeek loss, forward + backward (dcor: forward only). {machine_note(pinned)}")
    monitor = CpuMonitor()
    table, records, speed_ups = [], [], {}
    for batch_size in args.batch_sizes:
        data = make_inputs(batch_size, args.seed)
        rows = None if batch_size <= args.loop_full_max else min(args.loop_rows, batch_size)
        print(f"batch {batch_size}: timing dpsnn, dcor and the loop ...", flush=True)
        ours = time_dpsnn(data, args.weight, args.repeats, args.warmup).scaled(1e3)
        reference, difference = time_dcor(data, args.dcor_repeats, min(args.warmup, 2))
        reference = reference.scaled(1e3)
        loop = time_loop(data, args.weight, args.loop_repeats, rows).scaled(1e3)
        loop_note = "measured" if rows is None else f"extrapolated from {rows}/{batch_size} rows"
        loop_ratio, dcor_ratio = ratio(loop, ours), ratio(reference, ours)
        speed_ups[batch_size] = loop_ratio[0]
        table.append(
            [
                str(batch_size),
                with_error(ours.median, ours.stderr),
                with_error(loop.median, loop.stderr) + ("*" if rows is not None else ""),
                with_error(*loop_ratio),
                with_error(reference.median, reference.stderr),
                with_error(*dcor_ratio),
                f"{difference:.1e}",
            ]
        )
        for method, summary, (speed_up, speed_up_err), note in (
            ("dpsnn", ours, (1.0, 0.0), "forward+backward"),
            ("loop", loop, loop_ratio, f"forward+backward, {loop_note}"),
            ("dcor", reference, dcor_ratio, f"forward only, float64; |dpsnn - dcor| = {difference:.1e}"),
        ):
            records.append(
                {
                    "batch_size": batch_size,
                    "method": method,
                    "median_ms": summary.median,
                    "stderr_ms": summary.stderr,
                    "iqr_ms": summary.iqr,
                    "repeats": summary.n,
                    "ratio_to_dpsnn": speed_up,
                    "ratio_stderr": speed_up_err,
                    "note": note,
                }
            )

    headers = ["batch", "dpsnn ms", "loop ms", "loop/dpsnn", "dcor ms", "dcor/dpsnn", "|dCor diff|"]
    print()
    print(format_table(headers, table))
    print("Medians ± bootstrap standard error; ratios ± propagated standard error.")
    if any(b > args.loop_full_max for b in args.batch_sizes):
        print(f"* extrapolated: {args.loop_rows} rows of each distance matrix filled, time scaled by batch/rows.")
    print("|dCor diff|: dpsnn's dCor minus dcor's, both float64 (the loop uses squared distances, another quantity).")
    if TARGET_BATCH in speed_ups and math.isfinite(speed_ups[TARGET_BATCH]):
        met = speed_ups[TARGET_BATCH] >= TARGET_SPEED_UP
        print(
            f"Target: dpsnn >= {TARGET_SPEED_UP:g}x faster than the loop at batch {TARGET_BATCH}: "
            f"{speed_ups[TARGET_BATCH]:,.0f}x, {verdict(met)}"
        )
    else:
        print(f"Target not evaluated: batch {TARGET_BATCH} was not run.")
    print(f"Written {write_csv(args.output, records)} ({machine_note(pinned)})")
    print(monitor.report())


if __name__ == "__main__":
    main()
