"""Reading the unlearnable-data results: one row per setting, over seeds, with its standard error.

``scripts/unlearnable.py train`` appends one row per (dataset, architecture, recipe, seed) to
``results/unlearnable/train.csv``; :func:`summarise` groups the seeds of each setting. The
standard error is that of the mean over seeds (``std / √n``) when there are two or more, and
the binomial one of the single run's test accuracy otherwise. Reading results runs no
training code. Example::

    from dpsnn.results import read_table
    from dpsnn.unlearnable.report import markdown_table, summarise

    _, rows = read_table("results/unlearnable/train.csv")
    print(markdown_table(summarise(rows)))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["METHOD_ORDER", "SETTING", "markdown_table", "summarise"]

#: The columns that say what a setting is; a summary row has one per distinct combination.
SETTING = ("dataset", "method", "epsilon", "architecture", "recipe", "epochs", "train_size", "obeys_rules")


def _mean_and_se(rows: list[Mapping[str, str]]) -> tuple[float, float]:
    values = [float(row["test_acc"]) for row in rows]
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, float(rows[0]["test_acc_se"])
    variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


#: The order of the training data in a summary: clean, then the controls, then the attack.
METHOD_ORDER = ("clean", "random", "error-min", "ntga")


def _order(setting: Mapping[str, str]) -> tuple[int, bool, bool]:
    """Clean data first, then random and error-minimising noise, then NTGA; plain first; outside the rules last."""
    method = setting["method"]
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, setting["recipe"] != "plain", setting["obeys_rules"] != "True"


def summarise(rows: Iterable[Mapping[str, str]]) -> list[dict[str, Any]]:
    """One row per setting: the mean clean test accuracy over seeds, its SE and the seeds.

    Settings come clean data first, then random noise, error-minimising noise and NTGA
    (:data:`METHOD_ORDER`); within each, plain training first and the recipes outside the
    competition's rules last; otherwise in the order ``rows`` first name them.
    """
    groups: dict[tuple[str, ...], list[Mapping[str, str]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(column, "") for column in SETTING), []).append(row)
    summary = []
    for key, members in groups.items():
        mean, se = _mean_and_se(members)
        setting = dict(zip(SETTING, key, strict=True))
        summary.append({**setting, "test_acc": mean, "test_acc_se": se, "seeds": len(members)})
    return sorted(summary, key=_order)  # a stable sort: first-seen order within equal keys


def markdown_table(summary: Iterable[Mapping[str, Any]]) -> str:
    """The summary as a Markdown table: data, architecture, recipe, clean test accuracy ± SE, seeds."""
    lines = [
        "| training data | architecture | recipe | within the rules | clean test accuracy | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary:
        data = row["dataset"] if row["method"] == "clean" else f"{row['dataset']} (ε = {float(row['epsilon']):.3g})"
        rules = "yes" if row["obeys_rules"] == "True" else "no (uses clean data)"
        accuracy = f"{row['test_acc']:.4f} ± {row['test_acc_se']:.4f}"
        lines.append(f"| {data} | {row['architecture']} | {row['recipe']} | {rules} | {accuracy} | {row['seeds']} |")
    return "\n".join(lines)
