"""Tables over seeds: the mean and standard error of every measure, per setting.

``runs.csv`` has one row per run and seed; here those rows become one row per setting
(every configuration column but the seed: :data:`~dpsnn.experiments.store.SETTING_COLUMNS`),
with the mean over seeds and its standard error (``std / sqrt(n_seeds)``) of every
metric the runs name, the list of suites the setting belongs to and its ``label`` (the
defence specs' own labels, and how its attacker differs from the default one). A suite's
table adds the columns of what the suite varies (``noise_scale`` for ``noise``), read off
each setting by the suite's axes. Example::

    from dpsnn.experiments.summary import best_within, summarise, suite_table
    from dpsnn.experiments.store import read_runs

    summary = summarise(read_runs("results/experiments"))
    noise = suite_table(summary, "noise")                  # rows with a noise_scale column
    best = best_within(summary, max_accuracy_drop=0.01)    # the most private setting that keeps utility,
                                                           # scored by the strongest attack tried on it
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from dpsnn.experiments.store import SETTING_COLUMNS, metrics_of
from dpsnn.experiments.suites import (
    DEFAULT_ATTACK,
    FULL,
    QUICK,
    SUITES,
    UNDEFENDED,
    RunConfig,
    setting_label,
    suites_of,
)
from dpsnn.metrics import mean_and_se

# The columns of a summary row before its measures.
SUMMARY_FIELDS = (
    "label",
    *SETTING_COLUMNS,
    "budget",
    "suites",
    "n_seeds",
    "n_diverged",
    "n_test",
    "n_aux",
)


def measures_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The measures named by any of ``rows`` (run or summary rows), in the order first seen."""
    columns: list[str] = []
    for row in rows:
        columns.extend(column for column in row if column not in columns)
    return [c for c in metrics_of(columns) if c not in SUMMARY_FIELDS]


def config_of(row: Mapping[str, Any], seed: int = 0) -> RunConfig:
    """The configuration of a summary (or run) row, at ``seed``."""
    return RunConfig.from_row(row, seed=seed)


def summarise(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: ``<measure>`` (mean over seeds) and ``<measure>_se`` (SE over seeds).

    Diverged seeds are counted (``n_diverged``) and left out of the means.
    """
    rows = list(rows)
    measures = measures_of(rows)
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in SETTING_COLUMNS) + (row["budget"],), []).append(row)
    summary = []
    for (*setting, budget_name), members in groups.items():
        ok = [row for row in members if row["status"] == "ok"]
        out: dict[str, Any] = {"label": ""} | dict(zip(SETTING_COLUMNS, setting, strict=True))
        out |= {
            "budget": budget_name,
            "suites": _suites(members, budget_name),
            "n_seeds": len(members),
            "n_diverged": len(members) - len(ok),
            "n_test": members[0].get("n_test", math.nan),
            "n_aux": _mean([row.get("n_aux", math.nan) for row in ok])[0] if ok else math.nan,
        }
        for measure in measures:
            out[measure], out[f"{measure}_se"] = _mean([row.get(measure, math.nan) for row in ok])
        summary.append(out)
    # A setting's label names how its attacker differs from the undefended setting's, if it does.
    defaults = {(row["dataset"], row["budget"]): config_of(row) for row in summary if _in(row, UNDEFENDED)}
    for row in summary:
        row["label"] = setting_label(config_of(row), defaults.get((row["dataset"], row["budget"])))
    return summary


def _suites(members: Sequence[Mapping[str, Any]], budget_name: str) -> str:
    """The suites a setting belongs to: those its runs recorded, and those registered since (on a known budget).

    A run recorded before a suite existed does not name it; for the standard budgets the
    membership is worked out again from the configuration, so an old undefended run is
    also the new suites' reference point.
    """
    names = {name for row in members for name in row["suites"].split()}
    budget = {budget.name: budget for budget in (FULL, QUICK)}.get(budget_name)
    if budget is not None:
        names |= set(suites_of(config_of(members[0]), budget))
    return " ".join(name for name in SUITES if name in names)


def _mean(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return math.nan, math.nan
    return mean_and_se(torch.tensor(values, dtype=torch.float64))


def _in(row: Mapping[str, Any], suite: str) -> bool:
    return suite in row["suites"].split()


def undefended(summary: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The summary row of the undefended model under its default attacker."""
    return next((row for row in summary if _in(row, UNDEFENDED)), None)


def suite_table(summary: Sequence[Mapping[str, Any]], suite: str) -> list[dict[str, Any]]:
    """The rows of ``suite``, each with the columns of what the suite varies, sorted by them."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}")
    entry = SUITES[suite]
    rows = []
    for row in summary:
        if _in(row, suite):
            values = entry.values(config_of(row))
            rows.append({**row, **{axis.column: value for axis, value in zip(entry.axes, values, strict=True)}})
    return sorted(rows, key=lambda row: tuple(row[axis.column] for axis in entry.axes))


def pareto_front(points: Sequence[Mapping[str, Any]], x: str = "gap_ssim", y: str = "accuracy") -> list[dict]:
    """The points no other point beats on both counts (lower ``x`` and higher ``y``), by ``x``."""
    usable = [dict(p) for p in points if not (math.isnan(p[x]) or math.isnan(p[y]))]
    front = [
        p for p in usable if not any(q[x] <= p[x] and q[y] >= p[y] and (q[x] < p[x] or q[y] > p[y]) for q in usable)
    ]
    return sorted(front, key=lambda p: p[x])


def frontier_suites() -> list[str]:
    """The undefended suite and every suite whose settings trade accuracy for privacy."""
    return [name for name, suite in SUITES.items() if name == UNDEFENDED or suite.frontier]


def frontier_points(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every defended setting (and the undefended one) attacked with the default attacker."""
    wanted = set(frontier_suites())
    return [dict(row) for row in summary if set(row["suites"].split()) & wanted]


def family(row: Mapping[str, Any]) -> str:
    """The legend group of a frontier point: the title of the first suite, in registry order, that holds it."""
    suites = row["suites"].split()
    return next((suite.title for name, suite in SUITES.items() if name in suites), "other")


def under_strongest_attack(
    summary: Sequence[Mapping[str, Any]], point: Mapping[str, Any], measure: str = "gap_ssim"
) -> dict[str, Any]:
    """``point`` as the strongest attack tried on its model scores it.

    Among ``point`` and every row of another attack on the same model, scored on the same
    test images, the one with the highest mean ``measure``: a defence is judged by the
    attack it does not fool. The auxiliary-set size an attack is given of its own
    (``best-of`` holds some out) does not make it another setting; an attacker given
    fewer images (``data-volume``) is the same attack, not a stronger one.
    """
    return _strongest(_attacks_by_model(summary, measure), point, measure)


def _attacks_by_model(summary: Sequence[Mapping[str, Any]], measure: str) -> dict[Any, list[dict[str, Any]]]:
    """The rows with ``measure``, grouped by everything but their attack and auxiliary-set size (parsed once)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in summary:
        if math.isfinite(row.get(measure, math.nan)):
            groups.setdefault(_model_scope(row), []).append(dict(row))
    return groups


def _model_scope(row: Mapping[str, Any]) -> tuple[str, RunConfig]:
    config = config_of(row)
    return row["budget"], replace(config, attack=DEFAULT_ATTACK, aux_size=1)  # any one value


def _strongest(groups: Mapping[Any, list[dict[str, Any]]], point: Mapping[str, Any], measure: str) -> dict[str, Any]:
    attack = config_of(point).attack
    tried = [dict(point)] + [row for row in groups.get(_model_scope(point), []) if config_of(row).attack != attack]

    def strength(row: Mapping[str, Any]) -> float:
        value = row.get(measure, math.nan)
        return value if math.isfinite(value) else -math.inf  # point itself may lack the measure

    return max(tried, key=strength)


def best_within(
    summary: Sequence[Mapping[str, Any]], max_accuracy_drop: float = 0.01, suite: str | None = None
) -> dict[str, Any] | None:
    """The defended setting with the smallest SSIM gap whose accuracy is within ``max_accuracy_drop``.

    Each setting's gap is that of the strongest attack tried on its model
    (:func:`under_strongest_attack`); the row returned is that attack's, its ``label``
    naming the attack. Accuracy is compared as means over seeds with the undefended
    model's; ``suite`` limits the search to one suite. Returns None when no defended
    setting keeps the accuracy.
    """
    plain = undefended(summary)
    if plain is None:
        return None
    candidates = suite_table(summary, suite) if suite else frontier_points(summary)
    groups = _attacks_by_model(summary, "gap_ssim")
    keeping = [
        _strongest(groups, row, "gap_ssim")
        for row in candidates
        if config_of(row).defended and row["accuracy"] >= plain["accuracy"] - max_accuracy_drop
    ]
    return min(keeping, key=lambda row: row["gap_ssim"]) if keeping else None
