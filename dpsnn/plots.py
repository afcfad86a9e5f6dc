"""Matplotlib figures, written as PNG files.

Figures are drawn with matplotlib's object-oriented API (:class:`matplotlib.figure.Figure`
and its ``savefig``), never through ``pyplot``: importing this module or drawing a figure
changes no process-wide state (no backend is chosen, no figure is left registered).
Example::

    from dpsnn.plots import reconstruction_grid

    reconstruction_grid({"original": images, "attack": recon}, "results/figures/grid.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor

from dpsnn.files import atomic_path


def reconstruction_grid(rows: Mapping[str, Tensor], path: str | Path, title: str | None = None) -> Path:
    """One row of images per entry of ``rows`` (each ``(n, 1 or 3, H, W)`` in [0, 1]), labelled on the left."""
    if not rows:
        raise ValueError("reconstruction_grid needs at least one row of images")
    n_columns = max(len(images) for images in rows.values())
    figure = Figure(figsize=(1.1 * n_columns + 2.2, 1.15 * len(rows) + 0.4))
    axes = figure.subplots(len(rows), n_columns, squeeze=False)
    for row_axes, (label, images) in zip(axes, rows.items(), strict=True):
        for column, axis in enumerate(row_axes):
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(images):
                image = images[column].detach().cpu().clamp(0.0, 1.0)
                if image.shape[0] == 3:  # colour: matplotlib wants (H, W, 3)
                    axis.imshow(image.permute(1, 2, 0).numpy())
                else:
                    axis.imshow(image.squeeze(0).numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axis.axis("off")
        row_axes[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def _save(figure: Figure, path: str | Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, dpi=120, format="png")
    return Path(path)


def privacy_utility_frontier(
    groups: Mapping[str, Sequence[Mapping[str, float]]],
    front: Sequence[Mapping[str, float]],
    path: str | Path,
    x: str = "gap_ssim",
    y: str = "accuracy",
    reference_accuracy: float | None = None,
    title: str | None = None,
    zoom_points: float = 0.05,
) -> Path:
    """Accuracy against leakage, one point per setting with its error bars, the Pareto front drawn.

    ``groups`` maps a legend label to rows holding ``x``, ``y`` and their ``_se``. With
    ``reference_accuracy`` a dashed line marks one point of accuracy below it, and a
    second panel zooms on the settings within ``zoom_points`` of it.
    """
    panels = 2 if reference_accuracy is not None else 1
    figure = Figure(figsize=(7.0 * panels, 5.2))
    axes = figure.subplots(1, panels, squeeze=False)
    for index, axis in enumerate(axes[0]):
        zoomed = index == 1
        for label, rows in groups.items():
            shown = [r for r in rows if not zoomed or r[y] >= reference_accuracy - zoom_points]
            if shown:
                axis.errorbar(
                    [r[x] for r in shown],
                    [r[y] for r in shown],
                    xerr=[r.get(f"{x}_se", 0.0) for r in shown],
                    yerr=[r.get(f"{y}_se", 0.0) for r in shown],
                    fmt="o",
                    markersize=4,
                    capsize=2,
                    label=label,
                    alpha=0.85,
                )
        shown_front = [p for p in front if not zoomed or p[y] >= reference_accuracy - zoom_points]
        if shown_front:
            axis.plot(
                [p[x] for p in shown_front], [p[y] for p in shown_front], "k--", linewidth=1, label="Pareto front"
            )
        if reference_accuracy is not None:
            axis.axhline(
                reference_accuracy - 0.01, color="grey", linestyle=":", linewidth=1, label="undefended - 1 point"
            )
        axis.axvline(0.0, color="grey", linewidth=0.8)
        axis.set_xlabel("attack SSIM minus label-only baseline SSIM (lower leaks less)")
        axis.set_ylabel("test accuracy")
        axis.set_title(f"within {100 * zoom_points:g} points of undefended" if zoomed else "all settings", fontsize=9)
        axis.legend(fontsize=8, loc="lower right")
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def panels_per_attack(
    panels: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | Path,
    y: str,
    ylabel: str,
    chance: float | None = None,
    title: str | None = None,
    columns: int = 3,
) -> Path:
    """One panel per attack: test accuracy against ``y`` for every defence setting, with SE bars, each labelled.

    ``panels`` maps an attack's name to its rows (each with ``label``, ``accuracy``, ``y``
    and their ``_se``). ``chance`` draws the value ``y`` takes when nothing leaks.
    """
    if not panels:
        raise ValueError("panels_per_attack needs at least one attack")
    columns = min(columns, len(panels))
    n_rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.6 * columns, 3.9 * n_rows))
    axes = figure.subplots(n_rows, columns, squeeze=False, sharex=True, sharey=True)
    for axis, (attack, rows) in zip(axes.flat, panels.items(), strict=False):
        axis.errorbar(
            [r[y] for r in rows],
            [r["accuracy"] for r in rows],
            xerr=[r.get(f"{y}_se", 0.0) for r in rows],
            yerr=[r.get("accuracy_se", 0.0) for r in rows],
            fmt="o",
            markersize=4,
            capsize=2,
        )
        for row in rows:
            axis.annotate(
                row["label"], (row[y], row["accuracy"]), fontsize=6, xytext=(3, 2), textcoords="offset points"
            )
        if chance is not None:
            axis.axvline(chance, color="grey", linewidth=0.8, linestyle=":")
        axis.set_title(attack, fontsize=9)
        axis.set_xlabel(ylabel, fontsize=8)
        axis.set_ylabel("test accuracy", fontsize=8)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def measure_curves(
    rows: Sequence[Mapping[str, float]],
    x: str,
    panels: Sequence[tuple[str, Sequence[tuple[str, str]]]],
    path: str | Path,
    xlabel: str | None = None,
    symlog: bool = False,
    title: str | None = None,
) -> Path:
    """Measures against one parameter, with standard-error bars.

    ``panels`` is a list of ``(y label, [(column, legend label), ...])``, one panel each.
    """
    figure = Figure(figsize=(5.0 * len(panels), 3.8))
    axes = figure.subplots(1, len(panels), squeeze=False)
    xs = [r[x] for r in rows]
    for axis, (ylabel, series) in zip(axes[0], panels, strict=True):
        for column, label in series:
            axis.errorbar(
                xs,
                [r[column] for r in rows],
                yerr=[r.get(f"{column}_se", 0.0) for r in rows],
                marker="o",
                markersize=4,
                capsize=2,
                label=label,
            )
        if symlog:
            axis.set_xscale("symlog", linthresh=0.1)
        axis.set_xlabel(xlabel or x)
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def heatmaps(
    rows: Sequence[Mapping[str, float]],
    x: str,
    y: str,
    measures: Sequence[tuple[str, str]],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """One annotated heat map per ``(column, label)`` in ``measures``, over the grid of ``x`` by ``y`` values."""
    xs = sorted({r[x] for r in rows})
    ys = sorted({r[y] for r in rows})
    figure = Figure(figsize=(4.6 * len(measures), 4.0))
    axes = figure.subplots(1, len(measures), squeeze=False)
    for axis, (column, label) in zip(axes[0], measures, strict=True):
        grid = [[float("nan")] * len(xs) for _ in ys]
        for r in rows:
            grid[ys.index(r[y])][xs.index(r[x])] = r[column]
        image = axis.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if value == value:  # not NaN
                    axis.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7, color="white")
        axis.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        axis.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        axis.set_xlabel(x.replace("_", " "))
        axis.set_ylabel(y.replace("_", " "))
        axis.set_title(label, fontsize=9)
        figure.colorbar(image, ax=axis, shrink=0.8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def bars(
    rows: Sequence[Mapping[str, float]],
    labels: Sequence[str],
    measures: Sequence[tuple[str, str]],
    path: str | Path,
    ylabel: str,
    title: str | None = None,
) -> Path:
    """Grouped bars with standard-error whiskers: one group per row, one bar per ``(column, label)``."""
    figure = Figure(figsize=(1.8 * len(rows) + 3.0, 3.8))
    axis = figure.subplots()
    width = 0.8 / max(1, len(measures))
    for k, (column, label) in enumerate(measures):
        positions = [i + (k - (len(measures) - 1) / 2) * width for i in range(len(rows))]
        axis.bar(
            positions,
            [r[column] for r in rows],
            width,
            yerr=[r.get(f"{column}_se", 0.0) for r in rows],
            capsize=3,
            label=label,
        )
    axis.set_xticks(range(len(rows)), labels)
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title, fontsize=10)
    return _save(figure, path)
