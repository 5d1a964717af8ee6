"""Pictures people judge a colorizer by: learning curves and bw | predicted | actual grids (matplotlib).

Both write PNGs atomically (temporary name, then rename) without pyplot, so they work on servers, in CI
and in notebooks alike.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from koalarization.files import atomic_path

GRID_COLUMNS = ("bw", "predicted", "actual")
GRID_INCHES = (3.7, 3.2)  # width of a column, height of a row of plot_grid


def _figure(rows: int, cols: int, size: tuple[float, float]):
    # A bare Figure saves through the Agg canvas without pyplot: no global backend switch (a notebook keeps
    # its inline backend), no global figure state (safe in threads), no display needed.
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


def _decorate(ax, legend: bool = True) -> None:
    """The look every curve shares: a light grid, and the legend where there are several lines."""
    if legend:
        ax.legend()
    ax.grid(alpha=0.3)


def read_log(log_csv: str | Path) -> dict[str, list[float]]:
    """CSVLogger's file -> {column: values per epoch}; empty cells become NaN."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else []
    return {c: [float(r[c]) if r.get(c) not in (None, "") else float("nan") for r in rows] for c in columns}


def plot_curves(log_csv: str | Path, out_png: str | Path) -> Path:
    """loss and val_loss (left, log scale) and the learning rate (right) per epoch."""
    log = read_log(log_csv)
    epochs = [int(e) + 1 for e in log.get("epoch", [])]
    fig, axes = _figure(1, 2, (10, 3.6))
    loss_ax, lr_ax = axes[0]
    for key, style in (("loss", "-o"), ("val_loss", "-s")):
        if key in log:
            loss_ax.plot(epochs, log[key], style, markersize=3, label=key)
    loss_ax.set(xlabel="epoch", ylabel="loss (MSE on ab, or cross-entropy over ab bins)", yscale="log", title="loss")
    _decorate(loss_ax)
    if "learning_rate" in log:
        lr_ax.plot(epochs, log["learning_rate"], "-o", markersize=3, color="tab:green")
    lr_ax.set(xlabel="epoch", ylabel="learning rate", yscale="log", title="learning rate")
    _decorate(lr_ax, legend=False)
    return _save(fig, out_png)


def plot_validation_curve(curve_csv: str | Path, out_png: str | Path, baseline: float | None = None) -> Path:
    """Validation loss against training photos seen (ValidationCurve's curve.csv: step, photos, val_loss),
    with `baseline` (e.g. the loss of predicting gray) as a dashed line when given."""
    curve = read_log(curve_csv)
    fig, axes = _figure(1, 1, (6, 3.6))
    ax = axes[0][0]
    ax.plot(curve.get("photos", []), curve.get("val_loss", []), "-o", markersize=3, label="val_loss")
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="gray", label="gray baseline")
    ax.set(xlabel="training photos seen", ylabel="validation loss", title="validation loss")
    _decorate(ax)
    return _save(fig, out_png)


def plot_grid(rows: list[dict], out_png: str | Path) -> Path:
    """One row per photo: bw | predicted | actual, captioned with the photo's name and PSNRs.

    rows: dicts with uint8 RGB images under "bw", "predicted", "actual", and "name", "psnr", "gray_psnr".
    Panels are about 350 px wide (GRID_INCHES at 100 dpi): a size at which people judge colours.
    """
    fig, axes = _figure(len(rows), 3, (3 * GRID_INCHES[0], GRID_INCHES[1] * len(rows)))
    for r, row in enumerate(rows):
        for c, column in enumerate(GRID_COLUMNS):
            ax = axes[r][c]
            ax.imshow(np.asarray(row[column]))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column)
        axes[r][0].set_ylabel(str(row["name"])[:28], fontsize=8)
        axes[r][1].set_xlabel(f"PSNR {row['psnr']:.2f} dB (gray {row['gray_psnr']:.2f} dB)", fontsize=8)
    return _save(fig, out_png)
