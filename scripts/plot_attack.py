"""Draw originals, each attacker's reconstructions and the label-only baseline as a PNG grid.

    python scripts/plot_attack.py                      # every attacker in models/attackers
    python scripts/plot_attack.py --attackers NAME ... --n-images 10

The images are the first test images of the attackers' dataset; every attacker decodes
what its target's server sees of them, noise included.
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
from dpsnn.cli import ArgumentParser, positive_int, run
from dpsnn.data import DEFAULT_DATA_DIR, make_splits
from dpsnn.errors import DataError
from dpsnn.evaluation import reconstruct
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    paths = checkpoints_in(args.attackers_dir, args.attackers)
    attackers = [load_attacker(path) for path in paths]
    datasets = {(a.hparams["dataset"], int(a.hparams["data_seed"])) for a in attackers}
    if len(datasets) > 1:
        raise DataError(f"the attackers target different datasets or seeds {sorted(datasets)}; plot them one at a time")
    ((dataset, seed),) = datasets
    splits = make_splits(dataset, seed=seed, test_size=args.n_images, root=args.data_dir)
    baseline = LabelOnlyBaseline.fit(splits.aux.images, splits.aux.labels, splits.num_classes)
    rows = {"original": splits.test.images}
    baseline_guesses = None
    for attacker in attackers:
        hp = attacker.hparams
        target = load_classifier(resolve_checkpoint(hp["target_model"], args.classifiers_dir), noise=hp["noise_scale"])
        reconstructions, guesses = reconstruct(target, attacker, splits.test.images, baseline, seed=hp["seed"])
        label = f"noise {hp['noise_scale']:g}, nopeek {target.hparams['nopeek_weight']:g}\naux {hp['aux_size']}"
        rows[label if label not in rows else f"{label} ({len(rows)})"] = reconstructions
        if baseline_guesses is None:  # the class means the first target's server predicts
            baseline_guesses = guesses
    rows["label-only\nbaseline"] = baseline_guesses
    path = reconstruction_grid(rows, args.output, title=f"{dataset}: test images and what an attacker recovers")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run(main)
