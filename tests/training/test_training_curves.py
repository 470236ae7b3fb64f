"""The training-curve figure and the history file it is drawn from."""

from __future__ import annotations

import pytest

from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import atomic_write_text
from lungseg.evaluation.plots import (
    HISTORY_COLUMNS,
    comparison_curves,
    history_csv,
    read_history,
    save_training_curves,
)


def _history(n: int = 4) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.1 / e + 0.01 * e,
            "train_acc": 1 - 0.1 / e,
            "val_acc": 1 - 0.12 / e,
            "val_dice": 0.9 - 0.2 / e,
            "lr": 1e-3,
            "seconds": 1.5,
        }
        for e in range(1, n + 1)
    ]


def test_history_csv_round_trips_exactly(tmp_path):
    history = _history()
    path = tmp_path / "history.csv"
    atomic_write_text(path, history_csv(history))
    assert path.read_text().splitlines()[0] == ",".join(HISTORY_COLUMNS)
    assert read_history(path) == history


def test_curves_are_written_as_png(tmp_path):
    path = tmp_path / "curves.png"
    save_training_curves(_history(), path, title="unet", best_epoch=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_training_curves(_history(1), path)  # one epoch, best from the validation loss


def test_comparison_curves_leave_out_a_model_without_history():
    from matplotlib.colors import to_hex

    fig = comparison_curves([("unet", _history()), ("ensemble", []), ("fcn", _history(3))])
    loss, _, dice = fig.axes
    assert [t.get_text() for t in loss.get_legend().get_texts()] == [
        "unet train", "unet val", "fcn train", "fcn val"
    ]  # fmt: skip
    assert [t.get_text() for t in dice.get_legend().get_texts()] == ["unet", "fcn"]
    # fcn keeps the colour of the third model, as if the ensemble had drawn its curves.
    colours = [to_hex(line.get_color()) for line in dice.get_lines()]
    assert colours == [to_hex(f"C{i}") for i in (0, 2)]


def test_bad_history_files(tmp_path):
    with pytest.raises(LungsegError, match="history file not found"):
        read_history(tmp_path / "missing.csv")
    bad = tmp_path / "history.csv"
    bad.write_text("epoch,train_loss\n1,abc\n")
    with pytest.raises(LungsegError, match="malformed history"):
        read_history(bad)
