"""Cost of the privacy defences: a DP-SGD step against a plain one; suppress-privacy training against plain training.

Part ``step``: one training step of the reference :class:`SplitNN` on 1x28x28 images at
batch 128, with DP-SGD on the client part against the same step without it. Four models
with the same initial weights take turns on the same Fashion-MNIST batches (the order
rotates every round) and each step is timed on its own:

* ``plain``: Adam on the whole model, ``loss.backward()``;
* ``dp ghost``: ``dp`` with its default grad-sample mode, Opacus's ghost clipping
  (per-sample gradient *norms* from the layers' activations and output gradients, then a
  second, reweighted backward pass into the client: no per-sample gradient is stored);
* ``dp hooks``: ``dp:grad_sample=hooks``, Opacus's per-sample gradients materialised by
  its hooks (the reference client's 9216x500 layer makes that ~2.4 GB per step at batch
  128), clipped and summed;
* ``dp adaptive``: ghost clipping with adaptive clipping (the clipping norm follows a
  quantile of the unclipped norms).

Each DP model is made private as training does (``make_private(spec, model.client,
optimizer, loader, epochs)``: DP-SGD on the client, plain Adam on the server) and steps
as ``SplitNN`` does: forward, ``privacy.backward(per_sample_loss)`` in ghost mode or
``loss.backward()`` with hooks, ``optimizer.step()`` (clipping, noise, accounting).
The batches are fixed at 128 images, not Poisson-sampled, so every variant sees the
same work. Target: the default DP step at most 2x the plain step.

Part ``fit``: the wall time of ``dpsnn.training.train_classifier`` on the first
``--train-size`` Fashion-MNIST training images (validation on the 5000-image val split
each epoch, as every run does), ``--epochs`` epochs, with ``--suppress`` against the same
call without it. Runs alternate (plain, suppress, suppress, plain, ...) after an untimed
one-epoch warm-up of each on a tenth of the data. Target: suppress at most 1.1x plain.

Run: ``.venv/bin/python benchmarks/bench_privacy.py`` (see ``--help``); the conditions the
figures depend on (an idle machine, threads, memory allocation) are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
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
    ratio,
    verdict,
    with_error,
    write_csv,
)
from bench_training import device_note, non_negative, pick_device, positive, synchronize, to_device
from torch import Tensor

from dpsnn.data import Split, Splits, make_splits
from dpsnn.defences import parse_defence
from dpsnn.defences.dp import DPSGD, make_private
from dpsnn.models import SplitNN
from dpsnn.training import train_classifier

DP_TARGET = 2.0  # the default DP step at most this multiple of the plain step
SUPPRESS_TARGET = 1.1  # suppress-privacy training at most this multiple of plain training's wall time
PARTS = ("step", "fit")
#: The step variants: None is the plain step; the others are ``dp`` specs (noise σ = 1, C = 1).
VARIANTS: dict[str, DPSGD | None] = {
    "plain": None,
    "dp ghost": DPSGD(noise_multiplier=1.0),
    "dp hooks": DPSGD(noise_multiplier=1.0, grad_sample="hooks"),
    "dp adaptive": DPSGD(noise_multiplier=1.0, clipping="adaptive"),
}
DEFAULT_DP = "dp ghost"
SHARED_CPU_NOTE = (
    "The CPUs may be shared with other work: compare the ratios (measured side by side, interleaved), "
    "not the absolute times."
)

warnings.filterwarnings("ignore", message=r".*Secure RNG turned off.*")  # Opacus, about its (slow) secure mode
warnings.filterwarnings("ignore", message=r".*Using a non-full backward hook.*")
# Opacus's hooks on the client's first layer, whose input (the images) needs no gradient.
warnings.filterwarnings("ignore", message=r".*Full backward hook is firing when gradients are computed.*")

Batch = tuple[Tensor, Tensor]
Step = Callable[[Batch], None]


def make_step(name: str, model: SplitNN, loader: torch.utils.data.DataLoader, epochs: int) -> Step:
    """One training step of ``model`` as variant ``name`` trains it."""
    optimizer = torch.optim.Adam(model.parameters(), lr=model.hparams.learning_rate)
    spec = VARIANTS[name]
    if spec is None:

        def plain(batch: Batch) -> None:
            optimizer.zero_grad(set_to_none=True)
            model._step(batch)["loss"].backward()
            optimizer.step()

        return plain
    private, _, privacy = make_private(spec, model.client, optimizer, loader, epochs)

    def dp(batch: Batch) -> None:
        private.zero_grad(set_to_none=True)
        loss = model._step(batch)["loss"]
        if privacy.ghost:
            privacy.backward(model._per_sample_loss)
        else:
            loss.backward()
        private.step()

    return dp


def time_dp_steps(args: argparse.Namespace, split: Split, device: torch.device) -> dict[str, Summary]:
    """Seconds per step of each variant, the variants taking turns on the same batches."""
    L.seed_everything(args.seed, verbose=False)
    models = {name: SplitNN() for name in VARIANTS}
    first = models["plain"].state_dict()
    loader = split.loader(args.batch_size, shuffle=True, seed=args.seed)
    steps = {}
    for name, model in models.items():
        model.load_state_dict(first)
        model.to(device).train()
        steps[name] = make_step(name, model, loader, epochs=1)
    batches = [to_device(b, device) for b in loader if len(b[1]) == args.batch_size]
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(args.step_warmup + args.steps):
        batch = batches[step % len(batches)]
        for name in names[step % len(names) :] + names[: step % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            steps[name](batch)
            synchronize(device)
            if step >= args.step_warmup:
                times[name].append(time.perf_counter() - start)
        if step == args.step_warmup - 1 or (step >= args.step_warmup and (step - args.step_warmup + 1) % 5 == 0):
            print(f"  {step + 1 - args.step_warmup}/{args.steps} rounds", flush=True)
    return {name: Summary.of(values) for name, values in times.items()}


def fit_seconds(splits: Splits, defences: list[str], epochs: int, seed: int) -> tuple[float, dict[str, float]]:
    """Wall time of ``train_classifier`` and the defences' measures of the model it returns."""
    L.seed_everything(seed, verbose=False)
    start = time.perf_counter()
    model, _ = train_classifier(splits, defences=defences, max_epochs=epochs, seed=seed, progress=False)
    elapsed = time.perf_counter() - start
    return elapsed, {k: v for spec in model.defences for k, v in spec.measures(model).items()}


def time_fits(args: argparse.Namespace, splits: Splits) -> tuple[dict[str, Summary], dict[str, float]]:
    """Alternating plain and suppress runs of ``train_classifier``, after a short warm-up of each."""
    variants = {"plain": [], "suppress": [args.suppress]}
    small = Splits(
        splits.name, splits.seed, splits.num_classes, splits.train.subset(len(splits.train) // 10), *_rest(splits)
    )
    warm = parse_defence(args.suppress)
    warm_spec = f"suppress:sparse_end={warm.sparse_end:g},end_epoch=1,mask_times={warm.mask_times}"
    for defences in ([], [warm_spec]):
        fit_seconds(small, defences, 1, args.seed)
    times: dict[str, list[float]] = {name: [] for name in variants}
    measures: dict[str, float] = {}
    for repeat in range(args.fit_repeats):
        for name in ("plain", "suppress") if repeat % 2 == 0 else ("suppress", "plain"):
            seconds, measured = fit_seconds(splits, variants[name], args.epochs, args.seed)
            print(f"  run {repeat + 1}/{args.fit_repeats}: {name} {seconds:.1f} s", flush=True)
            times[name].append(seconds)
            measures |= measured
    return {name: Summary.of(values) for name, values in times.items()}, measures


def _rest(splits: Splits) -> tuple[Split, Split, Split]:
    return splits.val, splits.test, splits.aux


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--batch-size", type=positive, default=128)
    parser.add_argument("--steps", type=positive, default=20, help="timed rounds of steps, one per variant each")
    parser.add_argument("--step-warmup", type=non_negative, default=2, help="untimed rounds first")
    parser.add_argument("--train-size", type=positive, default=5000, help="training images (part fit)")
    parser.add_argument("--epochs", type=positive, default=2, help="epochs per run (part fit)")
    parser.add_argument("--fit-repeats", type=positive, default=3, help="timed runs per variant (part fit)")
    parser.add_argument(
        "--suppress",
        default="suppress:sparse_end=0.9,end_epoch=1,mask_times=10",
        help="the suppress defence of part fit (default: %(default)s)",
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train (auto: a GPU if available)"
    )
    parser.add_argument("--seed", type=int, default=0)
    add_machine_arguments(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_privacy.csv")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    pinned = apply_machine_arguments(args)
    print(f"Privacy defences' cost on {device_note(device)}. {machine_note(pinned)}")
    print(SHARED_CPU_NOTE)
    monitor = CpuMonitor()
    records: list[dict[str, object]] = []
    summary_lines = []

    def record(part: str, variant: str, metric: str, summary: Summary, value: tuple[float, float]) -> None:
        records.append(
            {
                "part": part,
                "variant": variant,
                "metric": metric,
                "median": summary.median,
                "stderr": summary.stderr,
                "iqr": summary.iqr,
                "n": summary.n,
                "ratio_to": "plain",
                "ratio": value[0],
                "ratio_stderr": value[1],
                "device": device.type,
            }
        )

    splits = make_splits("fashion-mnist", seed=args.seed, train_size=args.train_size)
    if "step" in args.parts:
        print(f"\nstep: {args.steps} timed rounds of {len(VARIANTS)} variants, interleaved ...", flush=True)
        steps = time_dp_steps(args, splits.train, device)
        rows = []
        for name, spec in VARIANTS.items():
            value = ratio(steps[name], steps["plain"])
            record("step", name, "step_s", steps[name], value)
            mode = "-" if spec is None else f"{spec.grad_sample}, {spec.clipping} clipping"
            rows.append(
                [
                    name,
                    mode,
                    with_error(steps[name].median, steps[name].stderr),
                    format_number(steps[name].iqr),
                    with_error(*value),
                    str(steps[name].n),
                ]
            )
        print()
        print(format_table(["variant", "grad sample", "s/step", "IQR s", "ratio to plain", "steps"], rows))
        dp_ratio = ratio(steps[DEFAULT_DP], steps["plain"])
        summary_lines.append(
            f"Target: DP-SGD step ({DEFAULT_DP}, the default) <= {DP_TARGET:g}x the plain step: "
            f"{dp_ratio[0]:.2f}x ± {dp_ratio[1]:.2f}, {verdict(dp_ratio[0] <= DP_TARGET)} "
            f"(hooks {ratio(steps['dp hooks'], steps['plain'])[0]:.2f}x, "
            f"adaptive {ratio(steps['dp adaptive'], steps['plain'])[0]:.2f}x)"
        )
        print(summary_lines[-1])

    if "fit" in args.parts:
        print(
            f"\nfit: train_classifier on {len(splits.train)} images, {args.epochs} epochs, {args.fit_repeats} runs "
            f"each, plain against {args.suppress} ...",
            flush=True,
        )
        fits, measures = time_fits(args, splits)
        rows = []
        for name in ("plain", "suppress"):
            value = ratio(fits[name], fits["plain"])
            record("fit", name, "wall_s", fits[name], value)
            rows.append([name, with_error(fits[name].median, fits[name].stderr), with_error(*value), str(fits[name].n)])
        print()
        print(format_table(["variant", "wall s", "ratio to plain", "runs"], rows))
        sparsity = ", ".join(f"{k.removeprefix('sparsity').lstrip('_') or 'all'} {v:.3f}" for k, v in measures.items())
        print(f"Sparsity of the suppress model kept: {sparsity}")
        fit_ratio = ratio(fits["suppress"], fits["plain"])
        summary_lines.append(
            f"Target: suppress-privacy training <= {SUPPRESS_TARGET:g}x plain training's wall time: "
            f"{fit_ratio[0]:.3f}x ± {fit_ratio[1]:.3f}, {verdict(fit_ratio[0] <= SUPPRESS_TARGET)}"
        )
        print(summary_lines[-1])

    print("\nMedians ± bootstrap standard error; ratios ± propagated standard error.")
    print("\n".join(summary_lines))
    print(SHARED_CPU_NOTE)
    print(f"Written {write_csv(args.output, records)} ({machine_note(pinned)})")
    print(monitor.report())


if __name__ == "__main__":
    main()
