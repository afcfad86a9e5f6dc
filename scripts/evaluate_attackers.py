"""Evaluate saved attackers against their targets, beside the label-only baseline.

    python scripts/evaluate_attackers.py                 # every checkpoint in models/attackers

For each attacker: MSE, PSNR, SSIM, dCor(x, x̂) and the accuracy of an independent
Validator classifier on the reconstructions, the same for the label-only baseline (the
mean auxiliary image of the class the server predicts) and the gap between the two.
Each target is attacked through the wire its attacker was trained on (noise switched on
after training included). Writes results/attack_performances.csv with a standard error
beside every figure; each row names the target's architecture, the defences it was
trained with, the wire attacked and the attack. The Validator is trained once per
dataset and seed and kept in models/validators/.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dpsnn.checkpoints import (
    ATTACKERS_DIR,
    CLASSIFIERS_DIR,
    VALIDATORS_DIR,
    checkpoints_in,
    load_attacker,
    load_classifier,
    resolve_checkpoint,
)
from dpsnn.cli import ArgumentParser, attacked_wire, check_images, positive_int, run, split_sizes
from dpsnn.data import DEFAULT_DATA_DIR, Splits, make_splits
from dpsnn.defences import canonical
from dpsnn.defences.base import param_of
from dpsnn.evaluation import evaluate_attack
from dpsnn.results import RESULTS_DIR, attack_table, write_table
from dpsnn.training import obtain_validator

METRICS = ("mse", "psnr", "ssim", "dcor", "validator_acc")


def parse_args(argv: Sequence[str] | None) -> object:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attackers", nargs="+", default=None, help="attacker checkpoint names (default: all)")
    parser.add_argument("--test-size", type=positive_int, default=None, help="score on the first N test images")
    parser.add_argument("--validator-epochs", type=positive_int, default=3)
    parser.add_argument("--validator-train-size", type=positive_int, default=None, help="default: the whole split")
    parser.add_argument("--attackers-dir", type=Path, default=ATTACKERS_DIR)
    parser.add_argument("--classifiers-dir", type=Path, default=CLASSIFIERS_DIR)
    parser.add_argument("--validators-dir", type=Path, default=VALIDATORS_DIR)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "attack_performances.csv")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    paths = checkpoints_in(args.attackers_dir, args.attackers)
    attackers = [load_attacker(path) for path in paths]  # every file is checked before any work
    targets = []
    for path, attacker in zip(paths, attackers, strict=True):
        target_path = resolve_checkpoint(attacker.hparams["target_model"], args.classifiers_dir)
        target = load_classifier(target_path, wire=attacked_wire(attacker.hparams))
        check_images(target_path.name, target.hparams["input_shape"], target.hparams["dataset"])
        check_images(path.name, attacker.hparams["image_shape"], attacker.hparams["dataset"])
        targets.append(target)
    splits_cache: dict[tuple, Splits] = {}
    rows = []
    for path, attacker, target in zip(paths, attackers, targets, strict=True):
        hp = attacker.hparams
        sizes = split_sizes(target.hparams)
        key = (hp["dataset"], int(hp["data_seed"]), *sorted(sizes.items()))
        if key not in splits_cache:
            splits_cache[key] = make_splits(
                hp["dataset"], seed=int(hp["data_seed"]), test_size=args.test_size, root=args.data_dir, **sizes
            )
        splits = splits_cache[key]
        validator = obtain_validator(
            splits,
            args.validators_dir,
            max_epochs=args.validator_epochs,
            train_size=args.validator_train_size,
            progress=not args.no_progress,
        )
        measured = evaluate_attack(
            target, attacker, splits.test, splits.aux.subset(hp["aux_size"]), validator=validator, seed=hp["seed"]
        )
        row = {
            "attacker": path.name,
            "target": hp["target_model"],
            "dataset": hp["dataset"],
            "architecture": target.hparams["architecture"],
            "defences": target.trained_with(),
            "wire": canonical(target.wire_defences),
            "attack": hp.get("attack", "decoder"),
            "noise_scale": param_of(target.wire_defences, "laplace"),
            "trained_noise_scale": param_of(target.defences, "laplace"),
            "nopeek_weight": param_of(target.defences, "nopeek"),
            "aux_dataset": hp["aux_dataset"],
            "aux_size": hp["aux_size"],
            "seed": hp["seed"],
            **measured,
        }
        rows.append(row)
        print(f"{path.name} (scored on {measured['n_test']} test images; wire: {row['wire']})")
        print(attack_table(row, METRICS))
    write_table(args.output, rows)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    run(main)
