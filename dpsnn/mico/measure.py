"""Every MICO attack on one task, scored on the phases asked for: the table ``results/mico/<dataset>.csv``.

The organisers of MICO held the ``dev`` and ``final`` solutions; an attacker scores itself on
``train``. A task built here (:mod:`dpsnn.mico.build`) can be scored like the organisers did,
since its ``build.json`` regenerates every solution (:func:`~dpsnn.mico.build.write_reference_solutions`).
:func:`measure_attacks` runs each attack of a list on the task (:func:`~dpsnn.mico.attack.attack_challenge`,
its predictions into a working folder, the task left untouched), scores each with
:func:`~dpsnn.mico.folders.score_folders` (the official scorer with bootstrap intervals; the same
resamples for every attack, so attacks are compared on the same draws) and returns one row per
attack and scenario, and per attack the average over scenarios (the ranking figure's row).

Scoring ``dev`` and ``final`` (the default) is fair to every attack: the ``calibrated`` attack uses
the ``train`` models as its shadows, so its ``train`` predictions are leave-one-out and those of
the other phases use every ``train`` model. Example::

    from dpsnn.mico.build import built_dataset
    from dpsnn.mico.measure import DEFAULT_ATTACKS, measure_attacks

    rows = measure_attacks("models/mico/fashion-mnist", built_dataset("models/mico/fashion-mnist"), DEFAULT_ATTACKS)
    for row in rows:
        print(row["attack"], row["scenario"], row["TPR_FPR_1000"], row["TPR_FPR_1000_ci_low"])

and ``python scripts/mico.py measure --challenge models/mico/fashion-mnist``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dpsnn.errors import ConfigError
from dpsnn.metrics import N_BOOTSTRAP
from dpsnn.mico.attack import Calibrated, MicoAttack, ShadowClassifier, attack_challenge, mico_attack
from dpsnn.mico.build import is_built_task, write_reference_solutions
from dpsnn.mico.folders import ROW_COLUMNS, FolderScores, score_folders, score_rows
from dpsnn.mico.official import MicoDataset

__all__ = ["DEFAULT_ATTACKS", "DEFAULT_PHASES", "MEASURE_COLUMNS", "attack_label", "measure_attacks"]

#: Every attack on a model alone, the winners' calibration, and MindArmour's four attack models: a row each.
DEFAULT_ATTACKS = (
    "chance",
    "membership-threshold:signal=loss",
    "membership-threshold:signal=confidence",
    "membership-threshold:signal=entropy",
    "membership-threshold:signal=modified-entropy",
    "calibrated:mode=offline",
    "calibrated:mode=online",
    *(f"classifier:model={model}" for model in ("logistic", "knn", "mlp", "forest")),
)
DEFAULT_PHASES = ("dev", "final")
MEASURE_COLUMNS = ("attack", "label", *ROW_COLUMNS)


def measure_attacks(
    task: str | Path,
    dataset: MicoDataset,
    attacks: Sequence[str | MicoAttack] = DEFAULT_ATTACKS,
    phases: Sequence[str] = DEFAULT_PHASES,
    solutions: str | Path | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Rows of :data:`MEASURE_COLUMNS`: each attack's score per scenario of ``task`` on ``phases``, then the average.

    ``solutions``: a reference tree holding the ``solution.csv`` of ``phases`` (MICO's published
    reference data, for an official task); by default, for a task built here, one regenerated from
    its ``build.json`` into a temporary folder.
    """
    chosen = [mico_attack(attack) for attack in attacks]
    if not chosen:
        raise ConfigError("no attacks to measure")
    task = Path(task)
    if solutions is None and not is_built_task(task):
        raise ConfigError(f"{task} was not built here: give the reference solutions of {', '.join(phases)}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dpsnn-mico-") as work:
        if solutions is None:
            solutions = Path(work) / "reference"
            write_reference_solutions(task, solutions, len(dataset))
        for attack in tqdm(chosen, desc="MICO attacks", unit="attack", disable=None if progress else True):
            predictions = Path(work) / "predictions" / _folder_name(attack.spec())
            attack_challenge(task, dataset, attack, phases=phases, output=predictions, seed=seed, progress=False)
            result: FolderScores = score_folders(solutions, predictions, phases, n_bootstrap=n_bootstrap, seed=seed)
            rows += [{"attack": attack.spec(), "label": attack_label(attack), **row} for row in score_rows(result)]
    return rows


def attack_label(attack: MicoAttack) -> str:
    """A short name for tables: ``threshold (loss)``, ``calibrated (online)``, ``chance``."""
    if isinstance(attack, Calibrated):
        return f"calibrated ({attack.mode})"
    if isinstance(attack, ShadowClassifier):
        return f"{attack.model} on train models"
    if attack.name == "membership-threshold":
        return f"threshold ({attack.params()['signal']})"
    return attack.name


def _folder_name(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in spec)
