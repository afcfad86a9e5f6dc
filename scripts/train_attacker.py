"""Train a model-inversion attacker against a saved classifier.

    python scripts/train_attacker.py --model demo_05noise_01nopeek --aux-size 1000

The attacker is a curious server: it passes its own auxiliary images (a split disjoint
from everything the target trained on) through the client, records what crosses the
wire, noise included, and learns to decode it. It is scored on the target's test split
against the label-only baseline; the figures are printed and appended, with their
standard errors, to results/train_attacker.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dpsnn.checkpoints import (
    ATTACKERS_DIR,
    CLASSIFIERS_DIR,
    attacker_filename,
    load_classifier,
    resolve_checkpoint,
    save_checkpoint,
)
from dpsnn.cli import ArgumentParser, add_run_arguments, non_negative_float, positive_float, positive_int, run
from dpsnn.data import DATASETS, DEFAULT_DATA_DIR, make_splits
from dpsnn.errors import DataError
from dpsnn.evaluation import evaluate_attack
from dpsnn.results import RESULTS_DIR, append_rows, attack_table
from dpsnn.training import train_attacker


def parse_args(argv: Sequence[str] | None) -> object:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="classifier checkpoint: a path, a file name or a unique prefix")
    parser.add_argument(
        "--model-noise", type=non_negative_float, default=None, help="wire noise to attack (default: the model's own)"
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
    target_path = resolve_checkpoint(args.model, args.classifiers_dir)
    target = load_classifier(target_path, noise=args.model_noise)
    dataset, data_seed = target.hparams["dataset"], int(target.hparams["seed"])
    aux_dataset = args.aux_dataset or dataset
    seed = data_seed if args.seed is None else args.seed

    # Same dataset and seed as the target: the auxiliary split is disjoint from its training data.
    splits = make_splits(dataset, seed=data_seed, test_size=args.test_size, root=args.data_dir)
    aux_source = splits if aux_dataset == dataset else make_splits(aux_dataset, seed=data_seed, root=args.data_dir)
    aux_size = args.aux_size or len(aux_source.aux)
    if aux_size > len(aux_source.aux):
        raise DataError(
            f"--aux-size {aux_size} is larger than the auxiliary split of '{aux_dataset}' "
            f"({len(aux_source.aux)} images)"
        )
    aux = aux_source.aux.subset(aux_size)
    noise = target.wire.scale

    attacker = train_attacker(
        target,
        aux.images,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_epochs=args.max_epochs,
        seed=seed,
        progress=not args.no_progress,
        log_dir=args.log_dir,
        target_model=target_path.name,
        dataset=dataset,
        noise_scale=noise,
        aux_dataset=aux_dataset,
        aux_size=aux_size,
        data_seed=data_seed,
    )
    # The label-only baseline needs the target's classes: its own dataset's auxiliary split.
    measured = evaluate_attack(target, attacker, splits.test, splits.aux.subset(aux_size), seed=seed)
    epoch = args.max_epochs - 1
    name = args.saveas or attacker_filename(target_path.stem.split("_epoch=")[0], noise, aux_dataset, aux_size, epoch)
    path = save_checkpoint(attacker, args.models_dir / Path(name).name, "attacker", epoch)
    row = {
        "attacker": path.name,
        "target": target_path.name,
        "dataset": dataset,
        "noise_scale": noise,
        "nopeek_weight": target.hparams["nopeek_weight"],
        "aux_dataset": aux_dataset,
        "aux_size": aux_size,
        "seed": seed,
        **measured,
    }
    append_rows(args.results_dir / "train_attacker.csv", [row])
    print(f"saved {path}")
    print(f"scored on {measured['n_test']} test images")
    print(attack_table(row, ("mse", "psnr", "ssim", "dcor")))
    return 0


if __name__ == "__main__":
    run(main)
