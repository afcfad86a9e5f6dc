"""Tables over seeds: the mean and standard error of every measure, per configuration.

``runs.csv`` has one row per run and seed; here those rows become one row per setting
(every configuration field but the seed), with the mean over seeds and its standard
error (``std / sqrt(n_seeds)``), and the list of suites the setting belongs to. Example::

    from dpsnn.experiments.summary import best_within, summarise, suite_table
    from dpsnn.experiments.store import read_runs

    summary = summarise(read_runs("results/experiments"))
    noise = suite_table(summary, "noise")
    best = best_within(summary, max_accuracy_drop=0.01)   # the most private setting that keeps utility
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from dpsnn.experiments.store import ATTACK_COLUMNS, CONFIG_COLUMNS, MODEL_METRICS
from dpsnn.experiments.suites import SUITES
from dpsnn.metrics import mean_and_se

MEASURES = (*MODEL_METRICS, *ATTACK_COLUMNS)
SETTING_COLUMNS = tuple(c for c in CONFIG_COLUMNS if c != "seed")
# The settings that trade accuracy for privacy, and so belong on the frontier.
DEFENCE_SUITES = ("noise", "nopeek", "combo", "post-noise")
# What each suite varies, for its table and figures.
SUITE_PARAMETERS = {
    "plain": (),
    "noise": ("noise_scale",),
    "nopeek": ("nopeek_weight",),
    "combo": ("noise_scale", "nopeek_weight"),
    "post-noise": ("wire_noise",),
    "data-volume": ("aux_size",),
    "aux-shift": ("aux_source",),
}


def summarise(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: ``<measure>`` (mean over seeds) and ``<measure>_se`` (SE over seeds).

    Diverged seeds are counted (``n_diverged``) and left out of the means.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in SETTING_COLUMNS) + (row["budget"],), []).append(row)
    summary = []
    for (*setting, budget_name), members in groups.items():
        ok = [row for row in members if row["status"] == "ok"]
        out: dict[str, Any] = dict(zip(SETTING_COLUMNS, setting, strict=True))
        out |= {
            "budget": budget_name,
            "suites": members[0]["suites"],
            "n_seeds": len(members),
            "n_diverged": len(members) - len(ok),
            "n_test": members[0]["n_test"],
            "n_aux": _mean([row["n_aux"] for row in ok])[0] if ok else math.nan,
        }
        for measure in MEASURES:
            out[measure], out[f"{measure}_se"] = _mean([row[measure] for row in ok])
        summary.append(out)
    return summary


def _mean(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return math.nan, math.nan
    return mean_and_se(torch.tensor(values, dtype=torch.float64))


def undefended(summary: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The summary row of the undefended model under its default attacker."""
    return next((row for row in summary if "plain" in row["suites"].split()), None)


def suite_table(summary: Sequence[Mapping[str, Any]], suite: str) -> list[dict[str, Any]]:
    """The rows of ``suite``, sorted by what the suite varies."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}")
    rows = [dict(row) for row in summary if suite in row["suites"].split()]
    parameters = SUITE_PARAMETERS[suite]
    return sorted(rows, key=lambda row: tuple(str(row[p]) if p == "aux_source" else row[p] for p in parameters))


def pareto_front(points: Sequence[Mapping[str, Any]], x: str = "gap_ssim", y: str = "accuracy") -> list[dict]:
    """The points no other point beats on both counts (lower ``x`` and higher ``y``), by ``x``."""
    usable = [dict(p) for p in points if not (math.isnan(p[x]) or math.isnan(p[y]))]
    front = [
        p for p in usable if not any(q[x] <= p[x] and q[y] >= p[y] and (q[x] < p[x] or q[y] > p[y]) for q in usable)
    ]
    return sorted(front, key=lambda p: p[x])


def frontier_points(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every defended setting (and the undefended one) attacked with the default attacker."""
    return [dict(row) for row in summary if set(row["suites"].split()) & {"plain", *DEFENCE_SUITES}]


def defence_label(row: Mapping[str, Any]) -> str:
    """``'noise 0.5 + NoPeek 0.25'``, ``'post-noise 1'``, ``'none'``."""
    parts = []
    if row["noise_scale"] > 0:
        parts.append(f"noise {row['noise_scale']:g}")
    if row["nopeek_weight"] > 0:
        parts.append(f"NoPeek {row['nopeek_weight']:g}")
    if row["wire_noise"] != row["noise_scale"]:
        parts.append(f"post-noise {row['wire_noise']:g}")
    return " + ".join(parts) or "none"


def best_within(
    summary: Sequence[Mapping[str, Any]], max_accuracy_drop: float = 0.01, suite: str | None = None
) -> dict[str, Any] | None:
    """The defended setting with the smallest SSIM gap whose accuracy is within ``max_accuracy_drop``.

    Accuracy is compared as means over seeds with the undefended model's; ``suite``
    limits the search to one suite. Returns None when no defended setting keeps the accuracy.
    """
    plain = undefended(summary)
    if plain is None:
        return None
    candidates = suite_table(summary, suite) if suite else frontier_points(summary)
    keeping = [
        row
        for row in candidates
        if defence_label(row) != "none" and row["accuracy"] >= plain["accuracy"] - max_accuracy_drop
    ]
    return dict(min(keeping, key=lambda row: row["gap_ssim"])) if keeping else None
