"""Train an inversion attack against a saved classifier, score it, and save it under models/attackers/.

    python scripts/train_attacker.py --model demo_05noise_01nopeek --aux-size 1000
    python scripts/train_attacker.py --model demo_0noise_01nopeek --wire laplace:scale=1   # noise added after training
    python scripts/train_attacker.py --from-recording recordings/split

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

``--from-recording DIR`` attacks a two-party run from what its server recorded
(:mod:`dpsnn.transport.recording`) instead of a checkpoint: a decoder attack trains on
the server's own queries of auxiliary images through the client (the ``queries`` phase)
and is scored on the client's inference queries (the ``inference`` phase), against the
first test images of the run's dataset, rebuilt from the recording's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from torch import Tensor, nn

from dpsnn.attacks import Attack, AttackTraining, Observation, Reconstructions, attack_from, registered_attacks
from dpsnn.attacks.baseline import LabelOnlyBaseline
from dpsnn.checkpoints import (
    ATTACKERS_DIR,
    CLASSIFIERS_DIR,
    SUFFIX,
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
    shape_text,
    split_sizes,
    wire_argument,
    wire_from,
    wire_key,
)
from dpsnn.data import DATASETS, DEFAULT_DATA_DIR, Split, make_splits
from dpsnn.defences import Defence, canonical, label, parse_canonical
from dpsnn.defences.base import param_of
from dpsnn.errors import ConfigError, DataError, DpsnnError
from dpsnn.evaluation import evaluate_attack, score
from dpsnn.results import RESULTS_DIR, append_rows, attack_table, check_columns
from dpsnn.transport.recording import Recording

RECORDED_DIR = "recorded"  # the sub-folder of the default models folder for attackers trained on a recording
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
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="classifier checkpoint: a path, a file name or a unique prefix")
    source.add_argument(
        "--from-recording",
        type=Path,
        default=None,
        metavar="DIR",
        help="attack what the server of a two-party run recorded (split.py server --record DIR) instead",
    )
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
    parser.add_argument("--classifiers-dir", type=Path, default=None, help=f"default: {CLASSIFIERS_DIR}")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=ATTACKERS_DIR,
        help=f"where the attacker is saved (default: {ATTACKERS_DIR}; a recording's in {ATTACKERS_DIR / RECORDED_DIR})",
    )
    add_run_arguments(parser, DEFAULT_DATA_DIR, RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_recording is not None:
        return main_from_recording(args)
    if args.model is None:
        raise ConfigError("--model (a classifier checkpoint) or --from-recording (a server's recording) is required")
    wire = wire_from(args.model_noise, args.wire, "--model-noise")
    target_path = resolve_checkpoint(args.model, args.classifiers_dir or CLASSIFIERS_DIR)
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
    attacker = args.attack.fit(
        target,
        aux,
        attack_training(args),
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
    report(table, row, path, args.attack, (label(target.defences), label(wire_specs)))
    return 0


def attack_training(args: Any) -> AttackTraining:
    """The attack's training budget from the command line."""
    return AttackTraining(
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_epochs=args.max_epochs,
        progress=not args.no_progress,
        log_dir=None if args.log_dir is None else str(args.log_dir),
    )


def report(table: Path, row: dict[str, Any], path: Path | None, attack: Attack, labels: tuple[str, str]) -> None:
    """Append ``row`` to ``table`` and print it; ``labels``: the target's defences and the wire, as words."""
    append_rows(table, [row], {LEGACY_COLUMNS: upgrade_legacy_row}, key_columns=COLUMNS)
    print(f"saved {path}" if path else f"attack '{attack.name}' has no weights of its own: scored, not saved")
    print(f"attack: {attack.label()}; target trained with {labels[0]}; wire: {labels[1]}")
    print(f"scored on {row['n_test']} test images")
    print(attack_table(row, ("mse", "psnr", "ssim", "dcor")))


# --- --from-recording: what the server of a two-party run recorded -----------------------------

#: Flags that choose a wire or data the server did not have; a recording holds what it received.
NOT_WITH_RECORDING = {
    "--wire": "wire",
    "--model-noise": "model_noise",
    "--aux-dataset": "aux_dataset",
    "--classifiers-dir": "classifiers_dir",
}
METADATA_KEYS = ("dataset", "seed", "num_classes", "input_shape", "val_size", "aux_split_size", "defences", "wire")
#: The tensors of each phase an attack reads, and when the server records them.
RECORDED = {
    "queries": (
        ("images", "labels", "activation", "predicted"),
        "when it queries the client with images of its own (split.py server --queries N)",
    ),
    "inference": (("activation", "predicted"), "when the client queries it after training"),
}


def recorded_attacks() -> list[str]:
    """The attacks that train on recorded pairs alone (the decoders)."""
    attacks = registered_attacks()
    return [name for name in trainable_attacks() if hasattr(attacks[name], "fit_pairs")]


def check_recording_args(args: Any) -> None:
    """:class:`ConfigError` for an attack or a flag that needs more than what the server received."""
    if not hasattr(args.attack, "fit_pairs"):
        raise ConfigError(
            f"attack '{args.attack.name}' cannot run on a recording: a recording holds only what the server received "
            f"(white-box inversion needs the client's weights); choose from {', '.join(recorded_attacks())}"
        )
    for flag, name in NOT_WITH_RECORDING.items():
        if getattr(args, name) is not None:
            raise ConfigError(f"{flag} cannot be used with --from-recording: a recording says what the server received")


def recorded_phase(recording: Recording, phase: str) -> dict[str, Tensor]:
    """The tensors of ``phase`` an attack reads; :class:`DataError`, saying when it is recorded, if it is missing."""
    names, when = RECORDED[phase]
    if recording.metadata.get("ushaped") == "1":
        raise DataError(
            f"{recording.folder} is the recording of a U-shaped run: its server never computed a class, which the "
            "label-only baseline needs; attack a vanilla run's recording"
        )
    if not recording.has(phase):
        there = ", ".join(recording.phases())
        raise DataError(f"{recording.folder} has no {phase} phase (it has: {there}); the server records it {when}")
    tensors = recording.read(phase)
    missing = [name for name in names if name not in tensors]
    if missing:
        raise DataError(f"the {phase} phase of {recording.folder} lacks {', '.join(missing)}: not a complete recording")
    return tensors


def recording_metadata(recording: Recording) -> dict[str, str]:
    """The run's metadata, checked: every key an attack on it needs is there, the numbers are numbers."""
    meta = recording.metadata
    missing = [key for key in METADATA_KEYS if key not in meta]
    if missing:
        raise DataError(f"the metadata of {recording.folder} lacks {', '.join(missing)}: not a complete recording")
    numbers = [meta[key] for key in ("seed", "num_classes", "val_size", "aux_split_size")]
    if not all(text.strip().lstrip("-").isdigit() for text in [*numbers, *meta["input_shape"].split(",")]):
        raise DataError(f"the metadata of {recording.folder} has a malformed number: {meta}")
    return meta


def check_shapes(recording: Recording, pairs: dict[str, Tensor], victims: dict[str, Tensor]) -> None:
    """:class:`DataError` unless the queries are images of the run and both phases received alike tensors."""
    shape = tuple(int(size) for size in recording.metadata["input_shape"].split(","))
    if tuple(pairs["images"].shape[1:]) != shape:
        raise DataError(
            f"the queries of {recording.folder} are images of {shape_text(pairs['images'].shape[1:])}, "
            f"but its metadata says the run takes {shape_text(shape)}"
        )
    if pairs["activation"].shape[1:] != victims["activation"].shape[1:]:
        raise DataError(
            f"{recording.folder} recorded queries of {shape_text(pairs['activation'].shape[1:])} and inference "
            f"queries of {shape_text(victims['activation'].shape[1:])}: not one run's intermediates"
        )


@dataclass
class Recorded:
    """What an attack on a recording is given and scored against, every input checked."""

    name: str  # the recording folder's name: the target
    meta: dict[str, str]
    defences: tuple[Defence, ...]  # those the run trained with
    wire: tuple[Defence, ...]  # those on its wire
    pairs: dict[str, Tensor]  # the server's queries: images, labels, activation, predicted
    victims: Observation  # the client's inference queries
    test: Split  # the images behind them


def load_recording(args: Any) -> Recorded:
    """Read and check the recording and rebuild the test images behind its inference queries."""
    recording = Recording(args.from_recording)
    meta = recording_metadata(recording)
    name, dataset = recording.folder.resolve().name, meta["dataset"]
    check_images(name, [int(size) for size in meta["input_shape"].split(",")], dataset)
    try:
        defences, wire = parse_canonical(meta["defences"]), parse_canonical(meta["wire"])
    except DpsnnError as error:
        raise DataError(f"the metadata of {recording.folder} names defences this dpsnn cannot read: {error}") from None
    pairs, victims = recorded_phase(recording, "queries"), recorded_phase(recording, "inference")
    check_shapes(recording, pairs, victims)
    aux_size = args.aux_size or len(pairs["images"])
    if aux_size > len(pairs["images"]):
        raise DataError(f"--aux-size {aux_size} is larger than the recorded queries ({len(pairs['images'])} images)")
    n = min(len(victims["activation"]), args.test_size or len(victims["activation"]))
    sizes = {"val_size": int(meta["val_size"]), "aux_size": int(meta["aux_split_size"])}
    test = make_splits(dataset, seed=int(meta["seed"]), test_size=n, root=args.data_dir, **sizes).test
    seen = Observation(victims["activation"][:n].float(), victims["predicted"][:n].long())
    aux = {key: tensor[:aux_size] for key, tensor in pairs.items()}
    return Recorded(name, meta, defences, wire, aux, seen, test)


def fit_recorded(args: Any, recorded: Recorded, seed: int) -> nn.Module:
    """The attack trained on the recorded ``(activation, image)`` query pairs."""
    pairs, meta = recorded.pairs, recorded.meta
    return args.attack.fit_pairs(
        pairs["activation"],
        pairs["images"],
        attack_training(args),
        seed=seed,
        predicted=pairs["predicted"].long(),
        num_classes=int(meta["num_classes"]),
        attack=args.attack.spec(),
        target_model=recorded.name,
        recording=str(args.from_recording),
        dataset=meta["dataset"],
        wire=canonical(recorded.wire),
        noise_scale=param_of(recorded.wire, "laplace"),
        aux_dataset=meta["dataset"],
        aux_size=len(pairs["images"]),
        data_seed=int(meta["seed"]),
    )


def score_recorded(attacker: nn.Module, recorded: Recorded) -> dict[str, Any]:
    """The attack on the client's inference queries beside the label-only baseline of the server's queries."""
    pairs = recorded.pairs
    baseline = LabelOnlyBaseline.fit(pairs["images"].float(), pairs["labels"].long(), int(recorded.meta["num_classes"]))
    result = attacker.run(recorded.victims)
    row: dict[str, Any] = {"n_test": len(recorded.test), "n_aux_baseline": len(pairs["images"])}
    return row | score(result, baseline.run(recorded.victims), recorded.test)


def main_from_recording(args: Any) -> int:
    """Train a decoder on the recorded queries, score it on the recorded inference queries, save and report it."""
    check_recording_args(args)
    recorded = load_recording(args)
    table = args.results_dir / "train_attacker.csv"
    check_columns(table, COLUMNS, {LEGACY_COLUMNS: upgrade_legacy_row})
    seed = int(recorded.meta["seed"]) if args.seed is None else args.seed
    attacker = fit_recorded(args, recorded, seed)
    measured = score_recorded(attacker, recorded)
    epoch, aux_size = args.max_epochs - 1, len(recorded.pairs["images"])
    default = f"{recorded.name}_recorded_attacker_{args.attack.key()}_{aux_size}aux_epoch={epoch:02d}{SUFFIX}"
    # Beside the classifiers' attackers, not among them: evaluate_attackers.py reloads each one's target classifier.
    folder = args.models_dir / RECORDED_DIR if args.models_dir == ATTACKERS_DIR else args.models_dir
    path = save_checkpoint(attacker, folder / Path(args.saveas or default).name, "attacker", epoch)
    row = {
        "attacker": path.name,
        "target": recorded.name,
        "dataset": recorded.meta["dataset"],
        "architecture": recorded.meta.get("architecture", ""),
        "defences": canonical(recorded.defences),
        "wire": canonical(recorded.wire),
        "attack": args.attack.spec(),
        "noise_scale": param_of(recorded.wire, "laplace"),
        "nopeek_weight": param_of(recorded.defences, "nopeek"),
        "aux_dataset": recorded.meta["dataset"],
        "aux_size": aux_size,
        "seed": seed,
        **measured,
    }
    report(table, row, path, args.attack, (label(recorded.defences), label(recorded.wire)))
    return 0


if __name__ == "__main__":
    run(main)
