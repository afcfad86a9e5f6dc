"""Run membership-inference attacks on a saved classifier: was each candidate in its training set?

    python scripts/membership_inference.py --model demo_0noise_0nopeek
    python scripts/membership_inference.py --model demo --attack membership-threshold:signal=entropy \\
        --attack lira:mode=offline,shadow_models=8 --candidates 1000 --fpr 0.001 --fpr 0.01

The candidates are N examples of the model's own training split (members) and N of its
test split (non-members), drawn with the seed; the model's splits are rebuilt from the
dataset, seed and sizes it recorded, so the attacker's auxiliary split (its shadow data)
is disjoint from both. Each attack (default: the global loss threshold and online LiRA)
is fitted on the auxiliary split, run on the model's answers to the candidates, and scored
by ROC AUC, the TPR at each FPR level (ROC points with FPR strictly below the level) and
the advantage max(TPR − FPR), each with a bootstrap standard error and 95% interval,
beside chance (AUC 0.5, TPR = FPR, advantage 0). The figures are printed and appended to
results/membership.csv.

Shadow models dominate the cost: online LiRA's 16 shadows train 10 epochs each on half of
the auxiliary split and the candidates, together (one vmapped model), on the GPU when there
is one. On a CPU, ``--aux-size`` and ``lira:shadow_models=...,epochs=...`` make it smaller.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dpsnn.attacks import Attack, AttackTraining, MembershipScores, make_attack, query, registered_attacks
from dpsnn.attacks.membership import membership_candidates
from dpsnn.checkpoints import CLASSIFIERS_DIR, load_classifier, resolve_checkpoint
from dpsnn.cli import ArgumentParser, check_images, checked, positive_int, run, split_sizes
from dpsnn.data import DEFAULT_DATA_DIR, make_splits
from dpsnn.defences import canonical, label
from dpsnn.defences.base import parse_spec_text
from dpsnn.errors import ConfigError, DataError
from dpsnn.metrics import FPR_LEVELS, check_fpr_levels, fpr_key, membership_metrics
from dpsnn.results import RESULTS_DIR, append_rows, check_columns

DEFAULT_ATTACKS = ("membership-threshold:signal=loss", "lira:mode=online")
DEFAULT_CANDIDATES = 500
COLUMNS = (
    "model",
    "dataset",
    "architecture",
    "defences",
    "wire",
    "attack",
    "threat_model",
    "n_members",
    "n_non_members",
    "aux_size",
    "seed",
)
INTERVAL = ("", "_se", "_ci_low", "_ci_high")


def membership_attacks() -> list[str]:
    """The registered attacks whose result is membership scores."""
    return sorted(name for name, attack in registered_attacks().items() if attack.result is MembershipScores)


def membership_attack(text: str) -> Attack:
    """``NAME[:key=value,...]`` as a membership attack spec; :class:`ConfigError` for any other name."""
    name, params = parse_spec_text(text, "attack")
    known = membership_attacks()
    if name not in known:
        what = "is not a membership attack" if name in registered_attacks() else "is not a known attack"
        raise ConfigError(f"'{name}' {what}; choose from {', '.join(known)}")
    return make_attack(name, params)


def fpr_level(text: str) -> float:
    """One ``--fpr`` level, a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--fpr must be a number strictly between 0 and 1, got '{text}'") from None
    return check_fpr_levels((value,))[0]


def metric_names(levels: Sequence[float]) -> list[str]:
    return ["auc", *(fpr_key(level) for level in levels), "advantage"]


def chance(metric: str, levels: Sequence[float]) -> float:
    """What scores without information give, in expectation."""
    by_level = {fpr_key(level): level for level in levels}
    return {"auc": 0.5, "advantage": 0.0}.get(metric, by_level.get(metric, float("nan")))


def table_columns(levels: Sequence[float]) -> list[str]:
    return [*COLUMNS, *(f"{metric}{suffix}" for metric in metric_names(levels) for suffix in INTERVAL)]


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="classifier checkpoint: a path, a file name or a unique prefix")
    parser.add_argument(
        "--attack",
        type=checked(membership_attack),
        action="append",
        default=None,
        metavar="NAME[:key=value,...]",
        help=f"a membership attack, repeatable (default: {' and '.join(DEFAULT_ATTACKS)}); "
        f"one of {', '.join(membership_attacks())}",
    )
    parser.add_argument(
        "--candidates",
        type=positive_int,
        default=DEFAULT_CANDIDATES,
        metavar="N",
        help=f"N members from the training split and N non-members from the test split (default {DEFAULT_CANDIDATES})",
    )
    parser.add_argument(
        "--fpr",
        type=checked(fpr_level),
        action="append",
        default=None,
        metavar="LEVEL",
        help=f"a false-positive rate to report the TPR at, repeatable (default: {' '.join(map(str, FPR_LEVELS))})",
    )
    parser.add_argument("--aux-size", type=positive_int, default=None, help="shadow-data images (default: all aux)")
    parser.add_argument("--bootstrap", type=positive_int, default=200, help="bootstrap resamples for SEs and CIs")
    parser.add_argument("--seed", type=int, default=None, help="default: the seed the model was trained with")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model and the shadow models run (auto: cuda when there is one)",
    )
    parser.add_argument("--classifiers-dir", type=Path, default=CLASSIFIERS_DIR)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.attack is None:
        args.attack = [membership_attack(text) for text in DEFAULT_ATTACKS]
    args.fpr = tuple(sorted(set(args.fpr or FPR_LEVELS)))
    if args.bootstrap < 2:
        parser.error(f"argument --bootstrap: needs at least 2 resamples, got {args.bootstrap}")
    return args


def device_of(choice: str) -> torch.device:
    """The device ``--device`` names; :class:`ConfigError` for cuda on a machine without it."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this machine has no CUDA device; use --device cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def print_table(row: dict[str, Any], levels: Sequence[float]) -> None:
    print(f"{row['attack']}  (given: {row['threat_model']})")
    print(f"  {'metric':<18}  {'value':>8}  {'± SE':>8}  {'95% interval':<18}  chance")
    for metric in metric_names(levels):
        interval = f"[{row[metric + '_ci_low']:.4f}, {row[metric + '_ci_high']:.4f}]"
        print(
            f"  {metric:<18}  {row[metric]:>8.4f}  {row[metric + '_se']:>8.4f}  {interval:<18}  "
            f"{chance(metric, levels):g}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    table = args.results_dir / "membership.csv"
    check_columns(table, table_columns(args.fpr))
    target_path = resolve_checkpoint(args.model, args.classifiers_dir)
    target = load_classifier(target_path).to(device_of(args.device))
    hparams = target.hparams
    dataset, data_seed = hparams["dataset"], int(hparams["seed"])
    check_images(target_path.name, hparams["input_shape"], dataset)
    seed = data_seed if args.seed is None else args.seed

    # The model's own splits: members from its training split, non-members from its test split, shadow data from aux.
    train_size = hparams.get("train_size")
    splits = make_splits(
        dataset,
        seed=data_seed,
        train_size=None if train_size is None else int(train_size),
        root=args.data_dir,
        **split_sizes(hparams),
    )
    for split, what in ((splits.train, "training"), (splits.test, "test")):
        if args.candidates > len(split):
            raise DataError(f"--candidates {args.candidates} is more than the {what} split ({len(split)} images)")
    candidates, members = membership_candidates(splits.train, splits.test, 2 * args.candidates, seed=seed)
    aux_size = args.aux_size or len(splits.aux)
    if aux_size > len(splits.aux):
        raise DataError(f"--aux-size {aux_size} is larger than the auxiliary split of '{dataset}' ({len(splits.aux)})")
    aux = splits.aux.subset(aux_size)
    queries = query(target, candidates.images, candidates.labels, seed=seed)
    training = AttackTraining(progress=not args.no_progress)

    n = args.candidates
    print(f"{target_path.name} (trained with {label(target.defences)}): {n} members, {n} non-members, {aux_size} aux")
    rows = []
    for attack in args.attack:
        start = time.perf_counter()
        scores = attack.fit(target, aux, training, seed=seed).run(queries).scores
        measured = membership_metrics(scores, members, args.fpr, n_bootstrap=args.bootstrap, seed=seed)
        row: dict[str, Any] = {
            "model": target_path.name,
            "dataset": dataset,
            "architecture": hparams["architecture"],
            "defences": target.trained_with(),
            "wire": canonical(target.wire_defences),
            "attack": attack.spec(),
            "threat_model": type(attack).threat_model.describe(),
            "n_members": int(members.sum()),
            "n_non_members": int((~members).sum()),
            "aux_size": aux_size,
            "seed": seed,
        }
        row |= {
            f"{metric}{suffix}": measured[f"{metric}{suffix}"]
            for metric in metric_names(args.fpr)
            for suffix in INTERVAL
        }
        rows.append(row)
        print_table(row, args.fpr)
        print(f"  ({time.perf_counter() - start:.1f} s)")
    append_rows(table, rows)
    print(f"wrote {len(rows)} row{'s' if len(rows) != 1 else ''} to {table}")
    return 0


if __name__ == "__main__":
    run(main)
