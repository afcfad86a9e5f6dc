"""Train an inversion attack against a saved classifier, score it, and save it under models/attackers/.

    python scripts/train_attacker.py --model demo_05noise_01nopeek --aux-size 1000
    python scripts/train_attacker.py --model demo_0noise_01nopeek --wire laplace:scale=1   # noise added after training

The attacker is a curious server: it passes its own auxiliary images (a split disjoint
from everything the target trained on) through the client, records what crosses the
wire, noise included, and learns from it (the ``decoder`` attack learns to decode it).
It is scored on the target's test split beside its baseline (for reconstructions, the
label-only baseline); the figures are printed and appended, with their standard errors,
to results/train_attacker.csv. An attack with no weights of its own (``whitebox``, which
optimises images through the client's weights; ``best-of``) is run and scored the same
way but not saved: ``--test-size`` keeps white-box inversion, 100 optimiser steps per
image, affordable on a CPU.

``--wire`` replaces the defences on the model's wire by those given (``--model-noise S``
is ``--wire laplace:scale=S``); without either, the wire the model was trained with is
attacked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import get_type_hints

from torch import nn

from dpsnn.attacks import Attack, AttackTraining, Reconstructions, attack_from, registered_attacks
from dpsnn.checkpoints import (
    ATTACKERS_DIR,
    CLASSIFIERS_DIR,
    attacker_filename,
    load_classifier,
    resolve_checkpoint,
    save_checkpoint,
)
from dpsnn.cli import (
    ArgumentParser,
    add_run_arguments,
    check_images,
    checked,
    non_negative_float,
    positive_float,
    positive_int,
    run,
    split_sizes,
    wire_argument,
    wire_from,
    wire_key,
)
from dpsnn.data import DATASETS, DEFAULT_DATA_DIR, make_splits
from dpsnn.defences import canonical, label
from dpsnn.defences.base import param_of
from dpsnn.errors import ConfigError, DataError
from dpsnn.evaluation import evaluate_attack
from dpsnn.results import RESULTS_DIR, append_rows, attack_table, check_columns

COLUMNS = (
    "attacker",
    "target",
    "dataset",
    "architecture",
    "defences",
    "wire",
    "attack",
    "noise_scale",
    "nopeek_weight",
    "aux_dataset",
    "aux_size",
    "seed",
)
# The table before defence and attack specs: the wire's noise scale and the target's NoPeek weight only.
LEGACY_COLUMNS = ("attacker", "target", "dataset", "noise_scale", "nopeek_weight", "aux_dataset", "aux_size", "seed")


def upgrade_legacy_row(row: dict[str, str]) -> dict[str, str]:
    """A row of the table's first schema with today's columns (the target's defences were not recorded)."""
    wire = canonical([f"laplace:scale={float(row['noise_scale'] or 0)}"])
    new = {"architecture": "reference", "defences": "", "wire": wire, "attack": "decoder"}
    upgraded = {**row, **new}
    return {column: upgraded[column] for column in (*COLUMNS, *(c for c in row if c not in COLUMNS))}


def saves_weights(attack: type[Attack]) -> bool:
    """Whether fitting ``attack`` gives a module with weights to save (the decoders; not white-box inversion)."""
    try:
        fitted = get_type_hints(attack.fit).get("return")
    except Exception:  # an annotation that cannot be resolved: the fitted attack is checked after fitting
        return True
    return isinstance(fitted, type) and issubclass(fitted, nn.Module)


def runnable_attacks() -> list[str]:
    """The registered inversion attacks but the baseline: each is fitted, scored and, if it has weights, saved."""
    attacks = registered_attacks().items()
    return sorted(
        name for name, attack in attacks if attack.result is Reconstructions and name != Reconstructions.baseline
    )


def trainable_attacks() -> list[str]:
    """The runnable attacks whose fitted form is a checkpoint."""
    attacks = registered_attacks()
    return [name for name in runnable_attacks() if saves_weights(attacks[name])]


def _attack(text: str) -> Attack:
    attack = attack_from(text)
    if type(attack).result is not Reconstructions:
        raise ConfigError(
            f"attack '{attack.name}' is a membership attack: run it with membership_inference.py; "
            f"choose from {', '.join(runnable_attacks())}"
        )
    if attack.name == Reconstructions.baseline:
        raise ConfigError(
            f"attack '{attack.name}' has nothing to train or save (evaluate_attackers.py scores it beside every "
            f"attacker); choose from {', '.join(runnable_attacks())}"
        )
    return attack


def parse_args(argv: Sequence[str] | None) -> object:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="classifier checkpoint: a path, a file name or a unique prefix")
    parser.add_argument(
        "--attack",
        type=checked(_attack),
        default="decoder",
        metavar="NAME[:key=value,...]",
        help=f"the attack to run: {', '.join(runnable_attacks())} (saved: {', '.join(trainable_attacks())})",
    )
    parser.add_argument(
        "--model-noise",
        type=non_negative_float,
        default=None,
        help="Laplace scale on the wire to attack (--wire laplace:scale=S); default: the model's own",
    )
    parser.add_argument(
        "--wire",
        type=wire_argument,
        action="append",
        default=None,
        metavar="NAME:key=value,...",
        help="a defence on the wire to attack instead of the model's own, repeatable (e.g. laplace:scale=1)",
    )
    parser.add_argument("--aux-dataset", default=None, help=f"one of {', '.join(DATASETS)} (default: the model's)")
    parser.add_argument("--aux-size", type=positive_int, default=None, help="auxiliary images (default: all 5000)")
    parser.add_argument("--test-size", type=positive_int, default=None, help="score on the first N test images")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)
    parser.add_argument("--max-epochs", type=positive_int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="default: the seed the model was trained with")
    parser.add_argument("--saveas", default=None, help="checkpoint file name (default: derived from the model)")
    parser.add_argument("--classifiers-dir", type=Path, default=CLASSIFIERS_DIR)
    parser.add_argument("--models-dir", type=Path, default=ATTACKERS_DIR, help="where the attacker is saved")
    add_run_arguments(parser, DEFAULT_DATA_DIR, RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wire = wire_from(args.model_noise, args.wire, "--model-noise")
    target_path = resolve_checkpoint(args.model, args.classifiers_dir)
    target = load_classifier(target_path, wire=wire)
    dataset, data_seed = target.hparams["dataset"], int(target.hparams["seed"])
    input_shape = tuple(target.hparams["input_shape"])
    aux_dataset = args.aux_dataset or dataset
    check_images(target_path.name, input_shape, dataset)
    check_images(target_path.name, input_shape, aux_dataset, "--aux-dataset")
    seed = data_seed if args.seed is None else args.seed
    table = args.results_dir / "train_attacker.csv"
    check_columns(table, COLUMNS, {LEGACY_COLUMNS: upgrade_legacy_row})

    # The target's dataset, seed and split sizes: the auxiliary split is disjoint from its training data.
    sizes = split_sizes(target.hparams)
    splits = make_splits(dataset, seed=data_seed, test_size=args.test_size, root=args.data_dir, **sizes)
    aux_source = splits if aux_dataset == dataset else make_splits(aux_dataset, seed=data_seed, root=args.data_dir)
    aux_size = args.aux_size or len(aux_source.aux)
    if aux_size > len(aux_source.aux):
        raise DataError(
            f"--aux-size {aux_size} is larger than the auxiliary split of '{aux_dataset}' "
            f"({len(aux_source.aux)} images)"
        )
    aux = aux_source.aux.subset(aux_size)
    wire_specs = target.wire_defences
    training = AttackTraining(
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_epochs=args.max_epochs,
        progress=not args.no_progress,
        log_dir=None if args.log_dir is None else str(args.log_dir),
    )
    attacker = args.attack.fit(
        target,
        aux,
        training,
        seed=seed,
        attack=args.attack.spec(),
        target_model=target_path.name,
        dataset=dataset,
        wire=canonical(wire_specs),
        noise_scale=param_of(wire_specs, "laplace"),
        aux_dataset=aux_dataset,
        aux_size=aux_size,
        data_seed=data_seed,
    )
    # The label-only baseline needs the target's classes: its own dataset's auxiliary split.
    measured = evaluate_attack(target, attacker, splits.test, splits.aux.subset(aux_size), seed=seed)
    epoch = args.max_epochs - 1
    path = None
    if isinstance(attacker, nn.Module):  # white-box inversion and best-of have no weights of their own
        stem = target_path.stem.split("_epoch=")[0]
        name = args.saveas or attacker_filename(stem, wire_key(wire_specs), aux_dataset, aux_size, epoch)
        path = save_checkpoint(attacker, args.models_dir / Path(name).name, "attacker", epoch)
    row = {
        "attacker": path.name if path else "",
        "target": target_path.name,
        "dataset": dataset,
        "architecture": target.hparams["architecture"],
        "defences": target.trained_with(),
        "wire": canonical(wire_specs),
        "attack": args.attack.spec(),
        "noise_scale": param_of(wire_specs, "laplace"),
        "nopeek_weight": param_of(target.defences, "nopeek"),
        "aux_dataset": aux_dataset,
        "aux_size": aux_size,
        "seed": seed,
        **measured,
    }
    append_rows(table, [row], {LEGACY_COLUMNS: upgrade_legacy_row}, key_columns=COLUMNS)
    print(f"saved {path}" if path else f"attack '{args.attack.name}' has no weights of its own: scored, not saved")
    print(f"attack: {args.attack.label()}; target trained with {label(target.defences)}; wire: {label(wire_specs)}")
    print(f"scored on {measured['n_test']} test images")
    print(attack_table(row, ("mse", "psnr", "ssim", "dcor")))
    return 0


if __name__ == "__main__":
    run(main)
