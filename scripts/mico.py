"""MICO, the Microsoft membership inference competition, in its own format: attack, score, zip, build, measure.

    python scripts/mico.py score --solutions mico/cifar10 --predictions mico/cifar10 --phase train
    python scripts/mico.py score --solutions ref --predictions res --n-bootstrap 1000 --seed 1
    python scripts/mico.py submit --predictions mico/cifar10 --output submission.zip
    python scripts/mico.py attack --challenge mico/cifar10 --attack membership-threshold:signal=loss --data-dir data
    python scripts/mico.py attack --challenge mico/purchase100 --attack calibrated --purchase100 data/dataset_purchase
    python scripts/mico.py build --dataset fashion-mnist --architecture reference --models 8 --epsilons inf 10 4
    python scripts/mico.py attack --challenge mico/fashion-mnist --attack calibrated --data-dir data
    python scripts/mico.py measure --challenge mico/fashion-mnist --attack calibrated --attack classifier:model=knn

``score`` scores a task's ``prediction.csv`` files against its ``solution.csv`` files as the
official scoring program does: per scenario, one ROC over all its models' challenge points, and
the ranking figure, the mean TPR at 10% FPR over the scenarios. ``--solutions`` and
``--predictions`` are a task folder (``<task>/<scenario>/{train,dev,final}/model_k``) or a folder
holding one; they may be the same tree (an attacker scoring itself on the ``train`` models). The
phases scored are those of ``--phase``, else every phase with solutions. Each score comes with a
bootstrap standard error and 95% interval over the challenge points (members and non-members
resampled apart). It prints the scores, writes the official ``scores.txt`` and ``scores.csv``
(one row per scenario and one averaging them, each score with ``_se``, ``_ci_low`` and
``_ci_high``) into ``--results-dir``, replacing those of an earlier run.

``submit`` zips the ``prediction.csv`` of every dev and final model of every scenario of a task
folder into a submission, named from the task folder down as the official scorer expects.

``attack`` runs a membership attack (:mod:`dpsnn.mico.attack`) on every published model of a task
folder (``--scenario`` and ``--phase`` restrict it), rebuilding each model's challenge points from its
seeds over the task's dataset (CIFAR-10 under ``--data-dir``; Purchase-100 from ``--purchase100``),
and writes each ``prediction.csv`` into the model folder or, with ``--output``, into a tree of the same
layout. Raw scores are mapped into ``[0, 1]`` by ``0.5 + atan(s)/π``, one increasing map for every
model, so the order across models that the official scorer uses is kept. The attacks: ``membership-
threshold`` (``signal`` = loss, confidence, entropy or modified-entropy; no shadow models), ``chance``,
``calibrated`` (LiRA with the scenario's train models as shadows, ``mode`` online or offline), and
``classifier`` (MindArmour's attack models fitted on the train models' points, ``model`` logistic, knn, mlp
or forest). When
every train model then has a prediction, ``train/`` is scored and reported as ``score`` does. A task
written by ``build`` is attacked alike: its models are dpsnn classifiers, its dataset (under
``--data-dir``) and its ``--len-training`` and ``--len-challenge`` are those of its ``build.json``.

``build`` trains a MICO task of one's own (:mod:`dpsnn.mico.build`) into ``<output>/<dataset>``: K
models (``--models``, 4 to 200; ⌈K/2⌉ train, then dev and final) for each ε of ``--epsilons``
(``inf``: no defence; a number: DP-SGD on the whole model at that ε, δ the DP defence's default) and
each ``--defence`` spec, in MICO's layout. Models of a scenario without DP-SGD or suppress are trained
in groups, together (``--strategy``); the others one by one. Rerun the same command to finish an interrupted build or to
raise ``--models``; other settings on the same tree are refused.

``measure`` runs each ``--attack`` (default: all of them, MindArmour's four attack models included) on
a task's ``dev`` and ``final`` models and scores them against the solutions a built task's
``build.json`` regenerates (or ``--solutions``): ``results/mico/<task>.csv`` (:mod:`dpsnn.mico.measure`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dpsnn.cli import ArgumentParser, checked, defence_argument, non_negative_int, positive_int, run
from dpsnn.data import DEFAULT_DATA_DIR, SYSTEM_DATA_DIR
from dpsnn.errors import DataError
from dpsnn.metrics import N_BOOTSTRAP
from dpsnn.mico.attack import (
    attack_challenge,
    attack_names,
    challenge_targets,
    load_task_dataset,
    mico_attack,
    predictions_folder,
)
from dpsnn.mico.build import (
    DEFAULT_GROUP_SIZE,
    DEFAULT_VAL_SIZE,
    BuildSettings,
    build_task,
    built_dataset,
    is_built_task,
    scenarios_for,
)
from dpsnn.mico.challenge import LEN_CHALLENGE
from dpsnn.mico.folders import AVERAGE, ROW_COLUMNS, FolderScores, score_folders, score_rows, write_scores_txt
from dpsnn.mico.layout import PHASES, PREDICTION_FILE, write_submission_zip
from dpsnn.mico.measure import DEFAULT_ATTACKS, DEFAULT_PHASES, MEASURE_COLUMNS, measure_attacks
from dpsnn.mico.scoring import RANKING_KEY, SCORE_KEYS
from dpsnn.results import RESULTS_DIR, write_table
from dpsnn.shadows import STRATEGIES
from dpsnn.training import KEEP

SCORES_CSV = "scores.csv"
DEFAULT_ATTACK = "membership-threshold:signal=loss"


# ------------------------------------------------------------------------------------------- score


def resamples(text: str) -> int:
    """``--n-bootstrap``: an integer of at least 2."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 resamples, got {value}")
    return value


def _score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solutions", type=Path, required=True, help="a task folder with the solution.csv files")
    parser.add_argument("--predictions", type=Path, required=True, help="a task folder with the prediction.csv files")
    parser.add_argument(
        "--phase",
        choices=PHASES,
        action="append",
        default=None,
        help="a phase to score, repeatable (default: every phase with solutions)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR / "mico")
    parser.add_argument(
        "--n-bootstrap", type=resamples, default=N_BOOTSTRAP, help=f"bootstrap resamples (default {N_BOOTSTRAP})"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the bootstrap's seed")


def _cell(value: float, se: float) -> str:
    return f"{value:.4f} ± {se:.4f}"


def print_scores(result: FolderScores, rows: Sequence[dict[str, Any]]) -> None:
    """The rows of scores.csv as a table: a column per scenario and their average, a row per official score."""
    width = max(17, *(len(row["scenario"]) for row in rows))
    phases = f"phase{'s' if len(result.phases) > 1 else ''} {', '.join(result.phases)}"
    print(
        f"task {result.task}, {phases}: {len(result.scenarios)} scenarios, "
        f"{result.n_bootstrap} bootstrap resamples (seed {result.seed}); value ± SE"
    )
    print(f"  {'':<13}" + "".join(f"  {row['scenario']:>{width}}" for row in rows))
    for name in ("models", "points"):
        print(f"  {name:<13}" + "".join(f"  {row[name]:>{width}}" for row in rows))
    for key in SCORE_KEYS:
        print(f"  {key:<13}" + "".join(f"  {_cell(row[key], row[key + '_se']):>{width}}" for row in rows))
    ranking = result.ranking
    print(
        f"ranking figure ({AVERAGE} {RANKING_KEY}): {_cell(ranking.value, ranking.se)}, "
        f"95% interval [{ranking.ci_low:.4f}, {ranking.ci_high:.4f}]"
    )


def report_scores(result: FolderScores, results_dir: Path) -> None:
    """Print the scores and write ``scores.txt`` and ``scores.csv`` into ``results_dir``."""
    rows = score_rows(result)
    print_scores(result, rows)
    text = write_scores_txt(result, results_dir)
    table = write_table(results_dir / SCORES_CSV, rows, list(ROW_COLUMNS))
    print(f"wrote {text} and {table}")


def score(args: argparse.Namespace) -> int:
    result = score_folders(args.solutions, args.predictions, args.phase, n_bootstrap=args.n_bootstrap, seed=args.seed)
    report_scores(result, args.results_dir)
    return 0


# ------------------------------------------------------------------------------------------ submit


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", type=Path, required=True, help="the task folder (e.g. mico/cifar10)")
    parser.add_argument("--output", type=Path, required=True, help="the zip to write (e.g. submission.zip)")


def submit(args: argparse.Namespace) -> int:
    names = write_submission_zip(args.predictions, args.output)
    print(f"wrote {len(names)} predictions to {args.output}")
    return 0


# ------------------------------------------------------------------------------------------ attack


def _attack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--challenge", type=Path, required=True, help="the task folder (e.g. mico/cifar10)")
    parser.add_argument(
        "--attack",
        type=checked(mico_attack),
        default=DEFAULT_ATTACK,
        metavar="NAME[:key=value,...]",
        help=f"the membership attack (default {DEFAULT_ATTACK}); one of {', '.join(attack_names())}",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where CIFAR-10 or a built task's dataset is (or goes)"
    )
    parser.add_argument("--system-dir", type=Path, default=SYSTEM_DATA_DIR, help=argparse.SUPPRESS)
    parser.add_argument(
        "--purchase100",
        type=Path,
        default=None,
        help="Purchase-100's dataset_purchase or its folder (default: --data-dir)",
    )
    parser.add_argument(
        "--scenario", action="append", default=None, help="a scenario to attack, repeatable (default: all)"
    )
    parser.add_argument(
        "--phase", choices=PHASES, action="append", default=None, help="a phase to attack, repeatable (default: all)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="a folder to write the predictions into, as <task>/<scenario>/... (default: each model folder)",
    )
    parser.add_argument(
        "--len-training", type=positive_int, default=None, help="n of every split (default: MICO's, or the build's)"
    )
    parser.add_argument(
        "--len-challenge",
        type=positive_int,
        default=None,
        help=f"m, members per model (default: MICO's {LEN_CHALLENGE}, or the build's)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR / "mico")
    parser.add_argument(
        "--n-bootstrap", type=resamples, default=N_BOOTSTRAP, help=f"bootstrap resamples (default {N_BOOTSTRAP})"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the bootstrap's seed, and chance's")


def attack(args: argparse.Namespace) -> int:
    task, targets = challenge_targets(args.challenge, args.scenario, args.phase)
    if is_built_task(task):
        dataset = built_dataset(task, args.data_dir, args.system_dir)
    else:
        dataset = load_task_dataset(targets[0].scenario, args.data_dir, args.purchase100)
    written = attack_challenge(
        task,
        dataset,
        args.attack,
        scenarios=args.scenario,
        phases=args.phase,
        output=args.output,
        len_training=args.len_training,
        len_challenge=args.len_challenge,
        seed=args.seed,
    )
    predictions = task if args.output is None else args.output
    print(f"{args.attack.spec()}: wrote {len(written)} predictions under {predictions}")
    if not _train_predicted(task, args.output):
        print("train/ not scored: some train models have no prediction.csv (attack every scenario's train phase)")
        return 0
    result = score_folders(task, predictions, ["train"], n_bootstrap=args.n_bootstrap, seed=args.seed)
    report_scores(result, args.results_dir)
    return 0


def _train_predicted(task: Path, output: Path | None) -> bool:
    """Whether every train model of ``task`` has a ``prediction.csv`` (in its folder, or mirrored under ``output``)."""
    try:
        _, targets = challenge_targets(task, phases=["train"])
    except DataError:  # no train models at all
        return False
    return all((predictions_folder(target, task, output) / PREDICTION_FILE).is_file() for target in targets)


# ------------------------------------------------------------------------------------------- build


def epsilon_argument(text: str) -> float:
    """``--epsilons``: ``inf`` or a positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an epsilon is inf or a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"an epsilon is inf or a positive number, got {text!r}")
    return value


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist", help="a registered dataset (default fashion-mnist)")
    parser.add_argument("--architecture", default="reference", help="a registered architecture (default reference)")
    parser.add_argument("--models", type=positive_int, default=200, help="models per scenario, 4 to 200 (default 200)")
    parser.add_argument(
        "--epsilons",
        type=epsilon_argument,
        nargs="*",
        default=[float("inf")],
        metavar="EPS",
        help="a scenario per ε: inf (no DP) or DP-SGD at that ε (default: inf)",
    )
    parser.add_argument(
        "--defence",
        type=defence_argument,
        action="append",
        default=[],
        metavar="NAME[:key=value,...]",
        help="one more scenario trained with this defence, repeatable (e.g. laplace:scale=0.5)",
    )
    parser.add_argument("--epochs", type=positive_int, default=10, help="epochs per model (default 10)")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--len-training", type=positive_int, default=None, help="n, points per model (default: half the pool)"
    )
    parser.add_argument("--len-challenge", type=positive_int, default=LEN_CHALLENGE, help="m, members per model")
    parser.add_argument(
        "--val-size",
        type=positive_int,
        default=DEFAULT_VAL_SIZE,
        help=f"evaluation points that pick each model's best epoch with --keep best (default {DEFAULT_VAL_SIZE})",
    )
    parser.add_argument(
        "--keep",
        choices=KEEP,
        default="last",
        help="each model's last epoch, as MICO's (default), or its best on the evaluation points",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the seed every split derives from")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="how a scenario without DP-SGD or suppress trains its models: all together (one vmapped step), "
        "one by one, or auto (together unless the network is convolutional and on the CPU); the models are the same",
    )
    parser.add_argument(
        "--group-size",
        type=positive_int,
        default=DEFAULT_GROUP_SIZE,
        help=f"models trained together at most (default {DEFAULT_GROUP_SIZE}); an interrupted group is redone",
    )
    parser.add_argument("--output", type=Path, default=Path("mico"), help="the task goes into OUTPUT/<dataset>")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--system-dir", type=Path, default=SYSTEM_DATA_DIR, help=argparse.SUPPRESS)


def build(args: argparse.Namespace) -> int:
    settings = BuildSettings(
        dataset=args.dataset,
        architecture=args.architecture,
        epochs=args.epochs,
        len_training=args.len_training,
        len_challenge=args.len_challenge,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        val_size=args.val_size,
        seed=args.seed,
        keep=args.keep,
    )
    scenarios = scenarios_for(args.dataset, args.epsilons, args.defence)
    report = build_task(
        args.output,
        settings,
        scenarios,
        args.models,
        args.data_dir,
        args.system_dir,
        strategy=args.strategy,
        group_size=args.group_size,
    )
    names = ", ".join(scenario.name for scenario in scenarios)
    print(f"{report.task}: trained {len(report.built)} models, {len(report.skipped)} already there ({names})")
    return 0


# ----------------------------------------------------------------------------------------- measure


def _measure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--challenge", type=Path, required=True, help="the task folder (e.g. mico/fashion-mnist)")
    parser.add_argument(
        "--attack",
        type=checked(mico_attack),
        action="append",
        default=None,
        metavar="NAME[:key=value,...]",
        help="an attack to measure, repeatable (default: every attack on the models alone, calibrated, classifier)",
    )
    parser.add_argument(
        "--phase",
        choices=PHASES,
        action="append",
        default=None,
        help=f"a phase to score, repeatable (default: {' and '.join(DEFAULT_PHASES)})",
    )
    parser.add_argument(
        "--solutions",
        type=Path,
        default=None,
        help="the reference solutions of those phases (default: regenerated from a built task's build.json)",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--system-dir", type=Path, default=SYSTEM_DATA_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--purchase100", type=Path, default=None, help="Purchase-100's dataset_purchase or its folder")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR / "mico")
    parser.add_argument(
        "--n-bootstrap", type=resamples, default=N_BOOTSTRAP, help=f"bootstrap resamples (default {N_BOOTSTRAP})"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the bootstrap's seed, and chance's")


def print_measured(rows: Sequence[dict[str, Any]]) -> None:
    """TPR at 10% FPR ± SE, attack by scenario, and each attack's average over the scenarios."""
    scenarios = list(dict.fromkeys(row["scenario"] for row in rows))
    attacks = list(dict.fromkeys(row["label"] for row in rows))
    cells = {(row["label"], row["scenario"]): _cell(row[RANKING_KEY], row[RANKING_KEY + "_se"]) for row in rows}
    width = max(17, *(len(name) for name in scenarios))
    first = max(len(name) for name in attacks)
    print(f"{RANKING_KEY} (TPR at 10% FPR) ± SE, {rows[0]['phases']}")
    print(f"  {'':<{first}}" + "".join(f"  {name:>{width}}" for name in scenarios))
    for attack in attacks:
        print(f"  {attack:<{first}}" + "".join(f"  {cells.get((attack, s), '–'):>{width}}" for s in scenarios))


def measure(args: argparse.Namespace) -> int:
    task, targets = challenge_targets(args.challenge)
    if is_built_task(task):
        dataset = built_dataset(task, args.data_dir, args.system_dir)
    else:
        dataset = load_task_dataset(targets[0].scenario, args.data_dir, args.purchase100)
    rows = measure_attacks(
        task,
        dataset,
        DEFAULT_ATTACKS if args.attack is None else args.attack,
        DEFAULT_PHASES if args.phase is None else args.phase,
        args.solutions,
        args.n_bootstrap,
        args.seed,
    )
    print_measured(rows)
    table = write_table(args.results_dir / f"{task.name}.csv", rows, list(MEASURE_COLUMNS))
    print(f"wrote {table}")
    return 0


# ---------------------------------------------------------------------------------------- commands

#: command -> (its help, what adds its arguments, what runs it); a new command is one more entry.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "score": ("score predictions against solutions as the official scorer does", _score_arguments, score),
    "submit": ("zip the dev and final predictions of a task into a submission", _submit_arguments, submit),
    "attack": ("attack the models of a task, write their predictions, score train/", _attack_arguments, attack),
    "build": ("train a MICO task of one's own: K models per scenario, resumably", _build_arguments, build),
    "measure": ("score every attack on a task's dev and final models: the results table", _measure_arguments, measure),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (summary, add_arguments, _) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=summary, description=summary))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    run(main)
