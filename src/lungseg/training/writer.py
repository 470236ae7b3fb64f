"""The run directory's per-epoch files, written off the training thread.

At the end of an epoch the training loop hands :class:`RunWriter` a snapshot of the checkpoint
(weights and optimizer state copied to the host) and goes on with the next epoch while a
background thread writes ``best.pt`` (when the epoch improved), ``last.pt`` and ``history.csv``,
each atomically and in that order, exactly as they would be written in line. ``curves.png`` is
redrawn when the run ends and at most every :data:`CURVES_EVERY_S` seconds in between: drawing it
with matplotlib costs more than a GPU epoch of a small data set. One snapshot waits at most: a
second epoch that ends before the first is written waits for it, so memory stays bounded and a
crash loses at most the epochs not yet written, which ``--resume`` trains again to the same
weights. A write that fails (a full disk) is raised in the training thread at the next epoch or
when the run ends.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch

from lungseg.core.io_utils import atomic_write_text
from lungseg.models.checkpoint import save_checkpoint

#: Seconds between redraws of ``curves.png`` during a run.
CURVES_EVERY_S = 30.0


def host_copy(value: Any) -> Any:
    """``value`` (nested dicts/lists of tensors, e.g. an optimizer's state) with every tensor
    copied to the host, so later steps cannot change the snapshot."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: host_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(host_copy(v) for v in value)
    return value


class RunWriter:
    """Writes the epoch files of the run in ``out`` on a background thread.

    Args:
        out: the run directory.
        title: the curves' title.
    """

    def __init__(self, out: Path, title: str) -> None:
        self.out, self.title = out, title
        self._job: tuple | None = None
        self._error: BaseException | None = None
        self._drawn = time.monotonic()
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="lungseg-run-writer", daemon=True)
        self._thread.start()

    def epoch(self, ckpt: dict[str, Any], improved: bool, best_epoch: int) -> None:
        """Queue the files of an epoch (``ckpt`` must be a host snapshot)."""
        with self._lock:
            while self._job is not None and self._error is None:
                self._lock.wait()
            self._raise()
            self._job = (ckpt, improved, best_epoch)
            self._lock.notify_all()

    def close(self, draw: bool = True) -> None:
        """Write what is queued, draw the final curves (``draw``) and stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join()
        self._raise()
        if draw and self._last is not None:
            self._curves(*self._last)

    _last: tuple | None = None

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._job is None and not self._closed:
                    self._lock.wait()
                job = self._job
            if job is None:
                return
            try:
                self._write(*job)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                with self._lock:
                    self._error = exc
            with self._lock:
                self._job = None
                self._lock.notify_all()

    def _write(self, ckpt: dict[str, Any], improved: bool, best_epoch: int) -> None:
        from lungseg.evaluation.plots import history_csv

        # best.pt before last.pt: a crash in between re-runs this epoch, which rewrites both.
        if improved:
            save_checkpoint(self.out / "best.pt", ckpt)
        save_checkpoint(self.out / "last.pt", ckpt)
        atomic_write_text(self.out / "history.csv", history_csv(ckpt["history"]))
        self._last = (ckpt["history"], best_epoch)
        if time.monotonic() - self._drawn >= CURVES_EVERY_S:
            self._curves(*self._last)

    def _curves(self, history: list[dict[str, Any]], best_epoch: int) -> None:
        from lungseg.evaluation.plots import save_training_curves

        save_training_curves(history, self.out / "curves.png", self.title, best_epoch)
        self._drawn = time.monotonic()
