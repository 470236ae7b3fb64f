"""Figures shared by training and reports: training curves from a run's history, the
comparison's curves of several models, and the grid of sample predictions.

Figures are drawn with matplotlib's object API (``Figure``, no ``pyplot``), so no GUI backend or
global figure state is involved and plotting is safe in any process.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import atomic_write_bytes

#: Colours of the sample grid; the report's caption names them, so change both together.
MASK_COLOUR, MASK_COLOUR_NAME = "#e41a1c", "red"
TRUTH_COLOUR, TRUTH_COLOUR_NAME = "cyan", "cyan"

#: Columns of ``history.csv``, in order.
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "train_acc",
    "val_acc",
    "val_dice",
    "lr",
    "seconds",
)


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Read a run's ``history.csv`` (one row per epoch; ``epoch`` as int, the rest as float)."""
    path = Path(path)
    if not path.is_file():
        raise LungsegError("history file not found", path)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    try:
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items()} for row in rows]
    except (TypeError, ValueError) as exc:
        raise LungsegError(f"malformed history ({exc})", path) from None


def history_csv(history: Sequence[dict[str, Any]]) -> str:
    """``history`` as CSV text with the :data:`HISTORY_COLUMNS` header."""
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(HISTORY_COLUMNS), lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    for row in history:
        writer.writerow({k: _format(row[k]) for k in HISTORY_COLUMNS})
    return buf.getvalue()


def _format(value: Any) -> str:
    # repr keeps every digit of a float, so the CSV round-trips exactly.
    return repr(float(value)) if isinstance(value, float) else str(value)


def training_curves(
    history: Sequence[dict[str, Any]], title: str = "", best_epoch: int | None = None
):
    """Loss, pixel accuracy and validation Dice per epoch, as in the study's figures.

    Args:
        history: rows with the :data:`HISTORY_COLUMNS` keys.
        title: figure title (e.g. the model name).
        best_epoch: the epoch to mark; default: the lowest validation loss.

    Returns:
        A matplotlib ``Figure`` with three panels: train/val loss, train/val accuracy, val Dice,
        with the best epoch marked on each.
    """
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        ("loss", [("train_loss", "train"), ("val_loss", "validation")]),
        ("pixel accuracy", [("train_acc", "train"), ("val_acc", "validation")]),
        ("validation Dice", [("val_dice", "validation")]),
    ]
    best = best_epoch
    finite = [r for r in history if math.isfinite(r["val_loss"])]
    if best is None and finite:
        best = min(finite, key=lambda r: r["val_loss"])["epoch"]
    for ax, (name, series) in zip(axes, panels, strict=True):
        for key, label in series:
            ax.plot(
                epochs,
                [row[key] for row in history],
                marker="." if len(epochs) < 30 else "",
                label=label,
            )
        if best is not None:
            ax.axvline(best, color="grey", linestyle=":", linewidth=1, label=f"best (epoch {best})")
        _epoch_axis(ax)
        ax.set_ylabel(name)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def save_training_curves(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    title: str = "",
    best_epoch: int | None = None,
    dpi: int = 100,
) -> None:
    """Draw :func:`training_curves` and write it to ``path`` (PNG) atomically."""
    atomic_write_bytes(Path(path), png_bytes(training_curves(history, title, best_epoch), dpi))


def comparison_curves(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]]):
    """Loss, pixel accuracy and validation Dice per epoch of several models, one colour each
    (train dashed, validation solid).

    Args:
        runs: ``(label, history)`` per model; ``history`` rows have the :data:`HISTORY_COLUMNS`
            keys. A model without a history (an ensemble) is left out of the figure and its
            legends, and keeps its colour, so the others' colours do not depend on it.

    Returns:
        A matplotlib ``Figure`` with three panels.
    """
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [("loss", "Loss (BCE)"), ("acc", "Pixel accuracy"), ("val_dice", "Validation Dice")]
    for i, (label, history) in enumerate(runs):
        if not history:
            continue
        colour = colours[i % len(colours)]
        epochs = [row["epoch"] for row in history]
        for ax, (key, title) in zip(axes, panels, strict=True):
            if key == "val_dice":
                ax.plot(epochs, [r.get("val_dice") for r in history], color=colour, label=label)
            else:
                ax.plot(epochs, [r.get(f"train_{key}") for r in history], color=colour,
                        linestyle="--", alpha=0.7, label=f"{label} train")  # fmt: skip
                ax.plot(epochs, [r.get(f"val_{key}") for r in history], color=colour,
                        label=f"{label} val")  # fmt: skip
            ax.set_title(title)
            _epoch_axis(ax)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def sample_grid(rows: Sequence[tuple[str, Any, Any, Sequence[tuple[str, Any]]]]):
    """Images with masks filled in :data:`MASK_COLOUR` and the ground truth outlined in
    :data:`TRUTH_COLOUR`, one image per row.

    Args:
        rows: ``(label, image, truth, panels)`` per row: the row's label, the image
            ``uint8[H, W]``, the ground truth ``bool[H, W]``, and per column ``(title, mask)``
            with ``mask`` ``bool[H, W]``, or ``None`` for the bare image. Titles are shown on
            the first row, and on every row from the third column on (the models' scores).

    Returns:
        A matplotlib ``Figure``.
    """
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    fill = ListedColormap([MASK_COLOUR])
    cols = max(len(panels) for *_, panels in rows)
    fig = Figure(figsize=(2.6 * cols, 2.7 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (label, image, truth, panels) in enumerate(rows):
        for c, (title, mask) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            if mask is not None:
                ax.imshow(np.ma.masked_where(~mask, mask), cmap=fill, vmin=0, vmax=1, alpha=0.45)
                ax.contour(truth, levels=[0.5], colors=TRUTH_COLOUR, linewidths=0.6)
            ax.set_title(title if r == 0 or c >= 2 else "", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=7)
    fig.tight_layout()
    return fig


def png_bytes(fig, dpi: int = 100) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _epoch_axis(ax) -> None:
    """Whole epochs on the x axis, a light grid."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
