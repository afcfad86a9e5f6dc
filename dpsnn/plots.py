"""Matplotlib figures, written as PNG files.

Example::

    from dpsnn.plots import reconstruction_grid

    reconstruction_grid({"original": images, "attack": recon}, "results/figures/grid.png")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no screen is needed

import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from dpsnn.files import atomic_path  # noqa: E402


def reconstruction_grid(rows: Mapping[str, Tensor], path: str | Path, title: str | None = None) -> Path:
    """One row of images per entry of ``rows`` (each ``(n, 1, H, W)`` in [0, 1]), labelled on the left."""
    if not rows:
        raise ValueError("reconstruction_grid needs at least one row of images")
    n_columns = max(len(images) for images in rows.values())
    figure, axes = plt.subplots(
        len(rows), n_columns, figsize=(1.1 * n_columns + 2.2, 1.15 * len(rows) + 0.4), squeeze=False
    )
    for row_axes, (label, images) in zip(axes, rows.items(), strict=True):
        for column, axis in enumerate(row_axes):
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(images):
                axis.imshow(images[column].detach().cpu().squeeze(0).numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axis.axis("off")
        row_axes[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    try:
        with atomic_path(path) as partial:
            figure.savefig(partial, dpi=120, format="png")
    finally:
        plt.close(figure)
    return Path(path)
