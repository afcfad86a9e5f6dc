"""Tables, figures and report sections made from a results folder's ``runs.csv``.

Everything here is derived from the recorded runs, so the tables, the figures, the
notebooks and the numbers in ``results/REPORT.md`` cannot disagree. Example::

    from dpsnn.experiments.report import draw_figures, update_report, write_tables

    summary = write_tables("results/experiments")      # summary.csv and one CSV per suite
    draw_figures("results/experiments", summary)       # results/experiments/figures/*.png
    update_report("results/REPORT.md", summary)        # the generated blocks of the report
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dpsnn import plots
from dpsnn.experiments.store import load_samples, read_runs
from dpsnn.experiments.suites import (
    INVERSION_ATTACKS,
    MEMBERSHIP_ATTACKS,
    SUITES,
    UNDEFENDED,
    attack_column,
)
from dpsnn.experiments.summary import (
    SUMMARY_FIELDS,
    best_within,
    config_of,
    family,
    frontier_points,
    measures_of,
    pareto_front,
    suite_table,
    summarise,
    undefended,
    under_strongest_attack,
)
from dpsnn.results import fill_blocks, format_measure, write_table
from dpsnn.results import generated_blocks as generated_blocks  # the report's blocks, read back

TABLES_DIR = "tables"
FIGURES_DIR = "figures"
SUMMARY_FILE = "summary.csv"


def summary_columns(summary: Sequence[Mapping[str, Any]], axes: Sequence[str] = ()) -> list[str]:
    """The columns of ``summary.csv`` (with ``axes``, of a suite's table): the setting, then mean and SE per measure."""
    label, *rest = SUMMARY_FIELDS
    measures = measures_of(summary)
    return [label, *axes, *rest, *(c for m in measures for c in (m, f"{m}_se"))]


def write_tables(results_dir: str | Path) -> list[dict[str, Any]]:
    """Write ``summary.csv`` and ``tables/<suite>.csv`` (mean and SE over seeds); return the summary."""
    results_dir = Path(results_dir)
    summary = summarise(read_runs(results_dir))
    write_table(results_dir / SUMMARY_FILE, summary, summary_columns(summary))
    for name, suite in SUITES.items():
        rows = suite_table(summary, name)
        if rows:
            columns = summary_columns(summary, [axis.column for axis in suite.axes])
            write_table(results_dir / TABLES_DIR / f"{name}.csv", rows, columns)
    return summary


def draw_figures(results_dir: str | Path, summary: Sequence[Mapping[str, Any]]) -> list[Path]:
    """The frontier, the curves against each defence's strength and one reconstruction grid per suite."""
    results_dir = Path(results_dir)
    figures = results_dir / FIGURES_DIR
    drawn: list[Path] = []
    points = frontier_points(summary)
    plain = undefended(summary)
    if points:
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for row in points:
            groups.setdefault(family(row), []).append(row)
        drawn.append(
            plots.privacy_utility_frontier(
                groups,
                pareto_front(points),
                figures / "frontier.png",
                reference_accuracy=plain["accuracy"] if plain else None,
                title="Privacy-utility frontier (mean ± SE over seeds)",
            )
        )
    for name, suite in SUITES.items():
        if suite.curves:
            path = curve_figure(summary, name, figures / f"{name}_curves.png")
            if path:
                drawn.append(path)
    for family_name, (measure, title, chance) in ATTACK_FAMILIES.items():
        panels = attack_panels(summary, measure)
        if panels:
            drawn.append(
                plots.panels_per_attack(
                    panels,
                    figures / f"attacks_{family_name}.png",
                    measure,
                    title,
                    chance=chance,
                    title=f"Every defence against each {family_name} attack (mean ± SE over seeds)",
                )
            )
    for name in SUITES:
        grid = _grid_rows(results_dir, suite_table(summary, name), name)
        if grid:
            drawn.append(plots.reconstruction_grid(grid, figures / f"grid_{name}.png", title=f"{name}: seed 0"))
    return drawn


def curve_figure(
    summary: Sequence[Mapping[str, Any]], suite: str, path: str | Path, panels: Sequence[Any] | None = None
) -> Path | None:
    """Measures of ``suite`` against what it varies (mean ± SE over seeds); None if it has under two settings.

    ``panels`` defaults to the suite's curves; the x axis is the suite's first axis.
    """
    entry = SUITES[suite]
    if not entry.axes:
        raise ValueError(f"suite {suite!r} varies nothing to draw curves against")
    axis = entry.axes[0]
    rows = suite_table(summary, suite)
    if len(rows) < 2:
        return None
    return plots.measure_curves(rows, axis.column, panels or entry.curves, path, axis.label, axis.log, title=suite)


def _grid_rows(results_dir: Path, rows: Sequence[Mapping[str, Any]], suite: str) -> dict[str, Any]:
    axes = SUITES[suite].axes
    grid: dict[str, Any] = {}
    if suite == ATTACKS_SUITE:  # a row per attack on the undefended model and on the noise that stops the decoder
        rows = [row for row in rows if row["defence_setting"] in GRID_SETTINGS]
    for row in rows:
        samples = load_samples(results_dir, config_of(row, seed=0).key)
        if samples is None:
            continue
        if not grid:
            grid["original"] = samples["originals"]
        label = ", ".join(axis.text(row[axis.column]) for axis in axes)
        grid[label or "attack"] = samples["attack"]
        if suite == UNDEFENDED:
            grid["label-only baseline"] = samples["baseline"]
    return grid


# -- report ---------------------------------------------------------------------------


def _cell(row: Mapping[str, Any], measure: str, digits: int) -> str:
    value = row.get(measure, math.nan)
    return "–" if isinstance(value, float) and math.isnan(value) else format_measure(row, measure, digits)


REPORT_COLUMNS = (
    ("test accuracy", "accuracy", 4),
    ("dCor(x, h̃)", "dcor", 3),
    ("attack SSIM", "attack_ssim", 3),
    ("baseline SSIM", "baseline_ssim", 3),
    ("SSIM gap", "gap_ssim", 3),
    ("attack PSNR", "attack_psnr", 2),
    ("dCor(x, x̂)", "attack_dcor", 3),
    ("Validator acc. on x̂", "attack_validator_acc", 3),
    ("on baseline", "baseline_validator_acc", 3),
)


def markdown_table(rows: Sequence[Mapping[str, Any]], label: str = "defence") -> str:
    """A Markdown table of summary rows: each setting's label, the report's measures (mean ± SE), the seeds."""
    header = [label, *(title for title, _, _ in REPORT_COLUMNS), "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"]]
        cells += [_cell(row, measure, digits) for _, measure, digits in REPORT_COLUMNS]
        diverged = f" ({row['n_diverged']} diverged)" if row["n_diverged"] else ""
        cells.append(f"{row['n_seeds']}{diverged}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The 2021 reference's table for its noise + NoPeek combinations (MNIST; its attacker
# was trained on the clean intermediate tensor, not on what the server saw).
REFERENCE_SUITE = "combo"
REFERENCE = {
    "accuracy": "96.8–98.2%",
    "dcor": "0.41–0.67",
    "attack_validator_acc": "93–97%",
    "baseline_validator_acc": "not measured",
    "gap_ssim": "not measured",
}


def _span(rows: Sequence[Mapping[str, Any]], measure: str, percent: bool = False) -> str:
    values = [row[measure] for row in rows if not math.isnan(row.get(measure, math.nan))]
    if not values:
        return "–"
    low, high = min(values), max(values)
    return f"{100 * low:.1f}–{100 * high:.1f}%" if percent else f"{low:.2f}–{high:.2f}"


def reference_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The 2021 reference's ranges beside this toolkit's, over the settings with both defences on."""
    axes = [axis.column for axis in SUITES[REFERENCE_SUITE].axes]
    both = [row for row in suite_table(summary, REFERENCE_SUITE) if all(row[column] > 0 for column in axes)]
    if not both:
        return not_measured(REFERENCE_SUITE)
    lines = [
        f"| over the noise + NoPeek settings | 2021 reference | dpsnn ({len(both)} settings, means over seeds) |",
        "|---|---|---|",
    ]
    for title, measure, percent in (
        ("test accuracy", "accuracy", True),
        ("dCor(x, what the server sees)", "dcor", False),
        ("reconstructions classified correctly", "attack_validator_acc", True),
        ("label-only guesses classified correctly", "baseline_validator_acc", True),
        ("SSIM gap, attack minus label-only baseline", "gap_ssim", False),
    ):
        lines.append(f"| {title} | {REFERENCE[measure]} | {_span(both, measure, percent)} |")
    return "\n".join(lines)


def _gap_text(row: Mapping[str, Any]) -> str:
    return f"accuracy {_cell(row, 'accuracy', 4)}, SSIM gap {_cell(row, 'gap_ssim', 3)}"


def _above_zero(row: Mapping[str, Any]) -> bool:
    """Whether the SSIM gap is more than two standard errors above zero (the attack beats the label)."""
    return row["gap_ssim"] - 2 * row["gap_ssim_se"] > 0


def _change(row: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    """How ``row``'s SSIM gap compares with ``reference``'s: narrower, wider, or within two combined SEs."""
    difference = row["gap_ssim"] - reference["gap_ssim"]
    error = math.hypot(row["gap_ssim_se"], reference["gap_ssim_se"])
    if difference < -2 * error:
        return f"is narrower than the undefended one by {-difference:.3f}"
    if difference > 2 * error:
        return f"is even wider than the undefended one, by {difference:.3f}"
    return "is the undefended one's within two standard errors"


def text_or_wait(row: Mapping[str, Any], reason: str) -> str:
    """A verdict that cannot be given, with the reason and the row's figures."""
    return f"No verdict: {reason} ({_gap_text(row)})."


def dp_verdict(summary: Sequence[Mapping[str, Any]]) -> str:
    """The 2021 split-learning paper's claim, checked on the ``dp`` suite: DP-SGD on the client stops no inversion."""
    rows = [row for row in suite_table(summary, "dp") if math.isfinite(row["target_epsilon"])]
    plain = undefended(summary)
    if not rows or plain is None:
        return "The dp suite has not been run yet."
    strongest = min(rows, key=lambda row: row["target_epsilon"])
    spent = strongest.get("dp_epsilon", math.nan)  # what the monitor counted
    if not _above_zero(plain):
        return text_or_wait(
            plain, "the undefended model's gap is not above zero here: there is no leak for DP-SGD to stop"
        )
    if any(row["n_seeds"] < 2 for row in rows):
        seeds = ", ".join(f"ε {row['target_epsilon']:g}: {row['n_seeds']}" for row in rows)
        return (
            f"Measured so far on too few seeds for a verdict ({seeds}; two or more give a standard error). "
            + f"At ε = {strongest['target_epsilon']:g}: {_gap_text(strongest)}; undefended: {_gap_text(plain)}."
        )
    holding = [row for row in rows if _above_zero(row)]
    text = (
        f"At the strongest budget measured, ε = {strongest['target_epsilon']:g}"
        + (f" (ε spent {spent:.3g})" if isinstance(spent, float) and math.isfinite(spent) else "")
        + f", DP-SGD on the client leaves {_gap_text(strongest)}, against the undefended {_gap_text(plain)}. "
    )
    budgets = ", ".join(f"{row['target_epsilon']:g}" for row in rows)
    if len(holding) == len(rows):
        return text + (
            f"At every ε measured ({budgets}) the attack still beats the "
            "label-only baseline by more than two standard errors: **the 2021 paper's claim holds here — DP-SGD "
            f"does not defend what the server sees against inversion**; at ε = {strongest['target_epsilon']:g} the "
            f"gap {_change(strongest, plain)}."
        )
    closed = ", ".join(f"{row['target_epsilon']:g}" for row in rows if row not in holding)
    return text + (
        f"At ε = {closed} the gap is within two standard errors of zero: **the 2021 paper's claim does not hold "
        "there** — but only at the accuracy shown, which the frontier weighs against the other defences."
    )


def suppress_verdict(summary: Sequence[Mapping[str, Any]]) -> str:
    """MindArmour's claim, checked: suppress-privacy balances accuracy and privacy better than DP-SGD."""
    suppress = [row for row in suite_table(summary, "suppress") if row["sparse_end"] > 0]
    dp_rows = suite_table(summary, "dp") + suite_table(summary, "dp-adaptive")
    # A setting in both suites (ε 4, constant σ) counts once.
    dp = list({row["defences"]: row for row in dp_rows if row["defences"] != "none"}.values())
    plain = undefended(summary)
    if not suppress or plain is None:
        return "The suppress suite has not been run yet."
    sparsest = max(suppress, key=lambda row: row["sparse_end"])
    if any(row["n_seeds"] < 2 for row in suppress + dp):
        return (
            "Measured so far on too few seeds for a verdict (two or more give a standard error); "
            + f"at sparsity {sparsest['sparse_end']:g}: {_gap_text(sparsest)}; undefended: {_gap_text(plain)}."
        )
    text = (
        f"At sparsity {sparsest['sparse_end']:g} suppress-privacy leaves {_gap_text(sparsest)}; the Validator "
        f"recognises {_cell(sparsest, 'attack_validator_acc', 3)} of its reconstructions (undefended: "
        f"{_cell(plain, 'attack_validator_acc', 3)}; MindArmour reports 0.955 → 0.558 for the confidence of its "
        "independent classifier). "
    )
    if not dp:
        return text + "No DP-SGD run is recorded to compare it with."
    front = pareto_front(suppress + dp)
    ours = [row for row in front if "suppress" in row["defences"]]
    dominated = [
        row
        for row in dp
        if any(s["accuracy"] >= row["accuracy"] and s["gap_ssim"] <= row["gap_ssim"] for s in suppress)
    ]
    text += (
        f"On the joint accuracy / SSIM-gap front of the DP-SGD and suppress-privacy settings, {len(ours)} of "
        f"{len(front)} points are suppress-privacy, and {len(dominated)} of {len(dp)} DP-SGD settings are beaten on "
        "both counts by some suppress setting. "
    )
    if ours and len(ours) == len(front):
        return text + "**MindArmour's claim holds here: suppress-privacy gives the better balance.**"
    if not ours:
        return text + "**MindArmour's claim does not hold here: DP-SGD gives the better balance.**"
    theirs = [row for row in front if "suppress" not in row["defences"]]
    close = [row for row in theirs if _matched_by_suppress(row, suppress)]
    if len(close) == len(theirs):
        names = "; ".join(f"{row['label']} ({_gap_text(row)})" for row in theirs)
        return text + (
            f"The DP-SGD point(s) on the front ({names}) are there by SSIM gaps within two standard errors of a "
            "suppress setting that keeps at least as much accuracy: **MindArmour's claim holds here within the "
            "standard errors.**"
        )
    return text + "**MindArmour's claim holds only in part: each family wins part of the trade-off.**"


def _matched_by_suppress(row: Mapping[str, Any], suppress: Sequence[Mapping[str, Any]]) -> bool:
    """Whether some suppress setting has at least ``row``'s accuracy and a gap within two combined SEs of its gap."""
    return any(
        s["accuracy"] >= row["accuracy"]
        and s["gap_ssim"] - row["gap_ssim"] <= 2 * math.hypot(s["gap_ssim_se"], row["gap_ssim_se"])
        for s in suppress
    )


def not_measured(suite: str) -> str:
    """What the report says where a suite has no run recorded."""
    return f"Not measured yet: `python scripts/run_experiments.py {suite} --seeds 3` measures it."


def suite_block(summary: Sequence[Mapping[str, Any]], suite: str) -> str:
    """The report's table of ``suite``, or a line saying it has not been measured.

    The undefended run is in every suite as its reference; alone it does not make a suite measured.
    """
    rows = suite_table(summary, suite)
    own = rows if suite == UNDEFENDED else [row for row in rows if UNDEFENDED not in row["suites"].split()]
    return markdown_table(rows) if own else not_measured(suite)


# -- every defence against every attack ----------------------------------------------

ATTACKS_SUITE = "attacks"
GRID_SETTINGS = ("none", "noise 3")
#: Each attack family's measure in the attacks suite, its name, and its value when nothing leaks.
ATTACK_FAMILIES: dict[str, tuple[str, str, float]] = {
    "inversion": ("gap_ssim", "SSIM gap (attack − label-only baseline)", 0.0),
    "membership": ("attack_auc", "membership ROC AUC", 0.5),
}


def _attack_order(names: Sequence[str]) -> list[str]:
    """``names`` in the suite's order of attacks (any other after them, sorted)."""
    from dpsnn.attacks.base import attack_from  # builds the attacks: here, not when the notebooks import this

    order = [attack_column(attack_from(spec)) for spec in (*INVERSION_ATTACKS, *MEMBERSHIP_ATTACKS)]
    known = [name for name in order if name in names]
    return known + sorted(set(names) - set(known))


def attack_cells(summary: Sequence[Mapping[str, Any]], measure: str) -> dict[str, dict[str, Mapping[str, Any]]]:
    """The attacks suite's rows with ``measure``, by setting (undefended first, then by accuracy), then attack.

    Empty until the suite has a run of its own: the decoder runs it shares with other suites
    alone do not make it measured.
    """
    table = suite_table(summary, ATTACKS_SUITE)
    if not any(row["suites"].split() == [ATTACKS_SUITE] for row in table):
        return {}
    cells: dict[str, dict[str, Mapping[str, Any]]] = {}
    rows = [row for row in table if math.isfinite(row.get(measure, math.nan))]
    rows.sort(key=lambda row: (row["defence_setting"] != "none", -row["accuracy"]))
    for row in rows:
        cells.setdefault(row["defence_setting"], {})[row["attack_name"]] = row
    return cells


def attack_panels(summary: Sequence[Mapping[str, Any]], measure: str) -> dict[str, list[Mapping[str, Any]]]:
    """Per attack, every defence setting's row (labelled by the setting): the panels of one family's figure."""
    panels: dict[str, list[Mapping[str, Any]]] = {}
    for setting, attacks in attack_cells(summary, measure).items():
        for attack, row in attacks.items():
            panels.setdefault(attack, []).append({**row, "label": setting})
    return {name: panels[name] for name in _attack_order(list(panels))}


def strongest(attacks: Mapping[str, Mapping[str, Any]], measure: str) -> tuple[str, Mapping[str, Any]]:
    """The attack with the highest mean ``measure`` and its row."""
    name = max(attacks, key=lambda attack: attacks[attack][measure])
    return name, attacks[name]


def defence_attack_table(summary: Sequence[Mapping[str, Any]], family_name: str) -> str:
    """The defence × attack table of one family: ``measure`` (mean ± SE) per cell, and each defence's strongest."""
    measure, title, _ = ATTACK_FAMILIES[family_name]
    cells = attack_cells(summary, measure)
    if not cells:
        return f"Not measured yet: `python scripts/run_experiments.py {ATTACKS_SUITE} --seeds 3` measures it."
    names = _attack_order(sorted({name for attacks in cells.values() for name in attacks}))
    header = ["defence", "test accuracy", *names, "strongest", "seeds"]
    lines = [
        f"{title}, mean ± SE over seeds; – : not measured.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for setting, attacks in cells.items():
        any_row = max(attacks.values(), key=lambda row: row["n_seeds"])  # every attack's model is the same
        best, row = strongest(attacks, measure)
        values = [_cell(attacks[name], measure, 3) if name in attacks else "–" for name in names]
        seeds = min(r["n_seeds"] for r in attacks.values())
        lines.append(
            "| "
            + " | ".join(
                [setting, _cell(any_row, "accuracy", 4), *values, f"**{best}** {_cell(row, measure, 3)}", str(seeds)]
            )
            + " |"
        )
    return "\n".join(lines)


def _above(row: Mapping[str, Any], measure: str, level: float) -> bool:
    """Whether ``measure`` is more than two standard errors above ``level``."""
    se = row.get(f"{measure}_se", math.nan)
    return math.isfinite(se) and row[measure] - 2 * se > level


def _settings(names: Sequence[str]) -> str:
    return "; ".join(names)  # labels may hold commas ("DP-SGD ε 1, C 1")


def attacks_verdict(summary: Sequence[Mapping[str, Any]]) -> str:
    """What the strongest attacks change: the defences the default decoder under-rates, and those nothing beats."""
    inversion = attack_cells(summary, "gap_ssim")
    membership = attack_cells(summary, "attack_auc")
    if not inversion and not membership:
        return "The attacks suite has not been run yet."
    seeds = [row["n_seeds"] for c in (inversion, membership) for attacks in c.values() for row in attacks.values()]
    if min(seeds) < 2:
        return "Measured so far on too few seeds for a verdict (two or more give a standard error)."
    sentences = []
    underrated, holding = [], []
    for setting, attacks in inversion.items():
        name, best = strongest(attacks, "gap_ssim")
        decoder = attacks.get("decoder")
        if decoder is not None and name != "decoder":
            difference = best["gap_ssim"] - decoder["gap_ssim"]
            if difference > 2 * math.hypot(best["gap_ssim_se"], decoder["gap_ssim_se"]):
                underrated.append(f"{setting} ({name}: +{difference:.3f})")
        if setting != "none" and not any(_above(row, "gap_ssim", 0.0) for row in attacks.values()):
            holding.append(setting)
    defended = [setting for setting in inversion if setting != "none"]
    sentences.append(
        f"Of {len(inversion)} setting(s), the strongest inversion attack beats the default decoder's SSIM gap by "
        f"more than two standard errors on {len(underrated)}" + (f": {_settings(underrated)}." if underrated else ".")
    )
    if holding:
        sentences.append(
            f"No inversion attack tried beats the label-only baseline by more than two standard errors on "
            f"{_settings(holding)}: **there the defence holds against every inversion attack tried.**"
        )
    elif defended:
        sentences.append("**Some inversion attack beats the label-only baseline on every defended setting.**")
    leaking = [
        setting
        for setting, attacks in membership.items()
        if any(_above(row, "attack_auc", 0.5) for row in attacks.values())
    ]
    if membership:
        sentences.append(
            f"Membership: some attack's ROC AUC is more than two standard errors above chance (0.5) on "
            f"{len(leaking)} of {len(membership)} setting(s)" + (f" ({_settings(leaking)})." if leaking else ".")
        )
    return " ".join(sentences)


def _judged(row: Mapping[str, Any]) -> str:
    """``'class-collapse 3 + smoothing 0.1 under best-of'``: a setting and the attack that scored it."""
    config = config_of(row)
    return f"{config.label()} under {attack_column(config.attack)}"


def report_blocks(summary: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The generated sections of the report, by name: one table per suite and the verdict."""
    blocks = {suite: suite_block(summary, suite) for suite in SUITES}
    blocks[ATTACKS_SUITE] = defence_attack_table(summary, "inversion")
    blocks["attacks-membership"] = defence_attack_table(summary, "membership")
    blocks["verdict-attacks"] = attacks_verdict(summary)
    front = pareto_front(frontier_points(summary))
    blocks["frontier"] = markdown_table(front) if front else "Not measured yet: no suite has a run recorded."
    blocks["reference"] = reference_table(summary)
    blocks["verdict-dp"] = dp_verdict(summary)
    blocks["verdict-suppress"] = suppress_verdict(summary)
    best = best_within(summary, 0.01)
    plain = undefended(summary)
    if plain is None:
        blocks["verdict"] = "No undefended run is recorded yet."
    elif best is None:
        blocks["verdict"] = (
            f"No defended setting keeps test accuracy within 1 point of the undefended {plain['accuracy']:.4f}."
        )
    else:
        attacked = under_strongest_attack(summary, plain)
        blocks["verdict"] = (
            f"Within 1 point of the undefended accuracy ({plain['accuracy']:.4f}), the smallest SSIM gap, each "
            f"setting scored by the strongest attack tried on it, is **{_judged(best)}**: accuracy "
            f"{_cell(best, 'accuracy', 4)}, SSIM gap {_cell(best, 'gap_ssim', 3)} (undefended: "
            f"{_cell(attacked, 'gap_ssim', 3)} under {attack_column(config_of(attacked).attack)}). "
            + _floor_verdict(best)
        )
    return blocks


#: How close to the label-only baseline a defence must bring its strongest attack to close the leak.
CLOSE_TO_FLOOR = 0.05


def _floor_verdict(best: Mapping[str, Any]) -> str:
    """Whether ``best``'s gap is within ``CLOSE_TO_FLOOR`` of the label-only baseline, two standard errors apart."""
    if best["n_seeds"] < 2:
        return f"It is measured on {best['n_seeds']} seed so far: no standard error yet, and no verdict."
    gap, se = best["gap_ssim"], best["gap_ssim_se"]
    if gap - 2 * se <= 0:
        return "Its gap is within two standard errors of zero: the attack is no better than the label."
    if gap + 2 * se <= CLOSE_TO_FLOOR:
        return (
            f"Its gap is more than two standard errors below {CLOSE_TO_FLOOR}: **this setting brings the strongest "
            f"attack tried within {CLOSE_TO_FLOOR} SSIM of the label-only baseline for at most one point of "
            "accuracy.**"
        )
    if gap - 2 * se > CLOSE_TO_FLOOR:
        return (
            f"Its gap is more than two standard errors above {CLOSE_TO_FLOOR}: **no setting measured so far that "
            f"keeps the accuracy brings the strongest attack within {CLOSE_TO_FLOOR} SSIM of the label-only "
            f"baseline**; this one comes closest, {gap - CLOSE_TO_FLOOR:.3f} short."
        )
    return f"Its gap is within two standard errors of {CLOSE_TO_FLOOR}: these seeds do not decide whether it is below."


def update_report(path: str | Path, summary: Sequence[Mapping[str, Any]]) -> bool:
    """Rewrite the generated blocks of the report at ``path``; return whether anything changed.

    A block is ``<!-- generated:NAME -->`` ... ``<!-- end:NAME -->``; the prose around
    the blocks is left as it is. A missing report is left missing.
    """
    return fill_blocks(path, report_blocks(summary))
