"""Progress reporting: a live bar on a terminal, a few plain lines otherwise (logs, CI).

Every progress display of the package is here: :func:`track` (items of a stage), :class:`StepBar`
(the steps of a training epoch, with loss and speed) and :class:`TransferBar` (files and bytes of
an Azure download or upload). rich is imported when a bar is shown.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def track(
    items: Iterable[T], total: int, description: str, enabled: bool = True, unit: str = "img"
) -> Iterator[T]:
    """Yield ``items`` while showing progress on stderr.

    On a terminal this is a rich progress bar with rate and time left; when stderr is not a
    terminal it prints one summary line at the end, so logs stay readable.
    """
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        start = time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)
        _summary(description, total, total, time.perf_counter() - start, unit)
        return
    start = time.perf_counter()
    count = 0
    for item in items:
        count += 1
        yield item
    _summary(description, count, total, time.perf_counter() - start, unit)


def progress_bar(*extra_columns: str, transient: bool = False):
    """A rich ``Progress`` on stderr: description, bar, done/total, ``extra_columns`` (format
    strings of task fields, e.g. ``"loss {task.fields[loss]:.4f}"``), time spent and left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(text) for text in extra_columns),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )


def _summary(description: str, count: int, total: int, elapsed: float, unit: str) -> None:
    rate = count / elapsed if elapsed > 0 else float("inf")
    print(
        f"{description}: {count}/{total} {unit} in {elapsed:.1f}s ({rate:.0f} {unit}/s)",
        file=sys.stderr,
    )


class StepBar:
    """A transient bar over the steps of one epoch with the loss and speed, on a terminal only;
    elsewhere it does nothing and the loop prints one line per epoch.

    The loss is a device tensor: it is read (which waits for the GPU) at most once a second, so
    showing progress does not stall the training steps.
    """

    def __init__(self, description: str, total: int, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.description, self.total = description, total

    def __enter__(self) -> StepBar:
        if self.enabled:
            self._progress = progress_bar(
                "loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} img/s", transient=True
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                self.description, total=self.total, loss=float("nan"), speed=0.0
            )
            self._start = self._shown = time.perf_counter()
            self._images = 0
        return self

    def advance(self, loss: Any, images: int) -> None:
        """One step of ``images`` images done; ``loss`` is its loss (a tensor or a number)."""
        if not self.enabled:
            return
        self._images += images
        now = time.perf_counter()
        fields: dict[str, float] = {"speed": self._images / max(now - self._start, 1e-9)}
        if now - self._shown >= 1.0:
            fields["loss"] = float(loss)
            self._shown = now
        self._progress.update(self._task, advance=1, **fields)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.__exit__(*exc)


class TransferBar:
    """Files and bytes of a transfer on stderr: a rich bar on a terminal, one line otherwise.

    The bar moves by each file's size; the summary counts only the bytes that crossed the wire
    and the files that were already in place.
    """

    def __init__(self, description: str, files: int, nbytes: int, enabled: bool) -> None:
        self.description = description
        self.files = files
        self.nbytes = nbytes
        self.enabled = enabled
        self.done_files = 0
        self.moved_bytes = 0
        self.in_place = 0
        self._bar = None
        self._task = None

    def __enter__(self) -> TransferBar:
        self._start = time.perf_counter()
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[files]}"),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self.description, total=self.nbytes, files=self._files_text()
            )
        return self

    def _files_text(self) -> str:
        return f"{self.done_files}/{self.files} files"

    def advance(self, nbytes: int, moved: bool = True) -> None:
        """One more file done: ``moved`` when it was transferred, not already in place."""
        self.done_files += 1
        if moved:
            self.moved_bytes += nbytes
        else:
            self.in_place += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes, files=self._files_text())

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self.enabled and exc_type is None:
            from rich.filesize import decimal

            elapsed = time.perf_counter() - self._start
            rate = decimal(int(self.moved_bytes / elapsed)) if elapsed > 0 else "-"
            note = f"; {self.in_place} already in place" if self.in_place else ""
            print(
                f"{self.description}: {self._files_text()}, {decimal(self.moved_bytes)} "
                f"in {elapsed:.1f}s ({rate}/s){note}",
                file=sys.stderr,
            )
