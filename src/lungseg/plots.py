"""Figures shared by training and reports: training curves from a run's history.

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

from lungseg.errors import LungsegError
from lungseg.io_utils import atomic_write_bytes

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
    from matplotlib.ticker import MaxNLocator

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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
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
    fig = training_curves(history, title, best_epoch)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(Path(path), buf.getvalue())
