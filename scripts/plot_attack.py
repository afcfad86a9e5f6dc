"""Draw originals, each attacker's reconstructions and the label-only baseline as a PNG grid.

    python scripts/plot_attack.py                      # every attacker in models/attackers
    python scripts/plot_attack.py --attackers NAME ... --n-images 10

The images are the first test images of the attackers' dataset (grey or colour); every
attacker decodes what its target's server sees of them through the wire it was trained
on, noise included. Each row is labelled by the target's defences, the wire attacked
when it differs from the one trained with, and the auxiliary images the attacker had.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dpsnn.attacks.baseline import LabelOnlyBaseline
from dpsnn.checkpoints import (
    ATTACKERS_DIR,
    CLASSIFIERS_DIR,
    checkpoints_in,
    load_attacker,
    load_classifier,
    resolve_checkpoint,
)
from dpsnn.cli import ArgumentParser, attacked_wire, check_images, positive_int, run, split_sizes
from dpsnn.data import DEFAULT_DATA_DIR, make_splits
from dpsnn.defences import Defence, canonical, label
from dpsnn.errors import DataError
from dpsnn.evaluation import reconstruct
from dpsnn.models import SplitNN
from dpsnn.plots import reconstruction_grid
from dpsnn.results import FIGURES_DIR


def parse_args(argv: Sequence[str] | None) -> object:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attackers", nargs="+", default=None, help="attacker checkpoint names (default: all)")
    parser.add_argument("--n-images", type=positive_int, default=8)
    parser.add_argument("--attackers-dir", type=Path, default=ATTACKERS_DIR)
    parser.add_argument("--classifiers-dir", type=Path, default=CLASSIFIERS_DIR)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--output", type=Path, default=FIGURES_DIR / "attack_grid.png")
    return parser.parse_args(argv)


def row_label(target: SplitNN, wire: Sequence[Defence], aux_size: int) -> str:
    """A grid row's label: ``noise 0.5 + NoPeek 0.1`` or ``no defence``, and the auxiliary images (``aux N``).

    When the wire attacked is not the one the target was trained with, it follows: ``, wire: noise 1``.
    """
    text = label(target.defences) if target.defences else "no defence"
    trained_wire = [d for d in target.defences if d.wire() is not None]
    if canonical(wire) != canonical(trained_wire):
        text += f", wire: {label(wire)}"
    architecture = target.hparams["architecture"]
    if architecture != "reference":
        text = f"{architecture}: {text}"
    return f"{text}\naux {aux_size}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    paths = checkpoints_in(args.attackers_dir, args.attackers)
    attackers = [load_attacker(path) for path in paths]
    datasets = {(a.hparams["dataset"], int(a.hparams["data_seed"])) for a in attackers}
    if len(datasets) > 1:
        raise DataError(f"the attackers target different datasets or seeds {sorted(datasets)}; plot them one at a time")
    ((dataset, seed),) = datasets
    targets = []
    for path, attacker in zip(paths, attackers, strict=True):
        target_path = resolve_checkpoint(attacker.hparams["target_model"], args.classifiers_dir)
        target = load_classifier(target_path, wire=attacked_wire(attacker.hparams))
        check_images(target_path.name, target.hparams["input_shape"], dataset)
        check_images(path.name, attacker.hparams["image_shape"], dataset)
        targets.append(target)
    # The first target's split sizes: its auxiliary split gives the baseline's class means.
    splits = make_splits(
        dataset, seed=seed, test_size=args.n_images, root=args.data_dir, **split_sizes(targets[0].hparams)
    )
    baseline = LabelOnlyBaseline.fit(splits.aux.images, splits.aux.labels, splits.num_classes)
    rows = {"original": splits.test.images}
    baseline_guesses = None
    for attacker, target in zip(attackers, targets, strict=True):
        hp = attacker.hparams
        reconstructions, guesses = reconstruct(target, attacker, splits.test.images, baseline, seed=hp["seed"])
        text = row_label(target, target.wire_defences, hp["aux_size"])
        rows[text if text not in rows else f"{text} ({len(rows)})"] = reconstructions
        if baseline_guesses is None:  # the class means the first target's server predicts
            baseline_guesses = guesses
    rows["label-only\nbaseline"] = baseline_guesses
    path = reconstruction_grid(rows, args.output, title=f"{dataset}: test images and what an attacker recovers")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run(main)
