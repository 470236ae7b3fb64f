"""Progress reporting: a live bar on a terminal, a few plain lines otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

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
    """A transient bar over the steps of one epoch with live fields (loss, speed), on a terminal
    only; elsewhere it does nothing and the loop prints one line per epoch."""

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
        return self

    def update(self, loss: float, speed: float) -> None:
        self._progress.update(self._task, advance=1, loss=loss, speed=speed)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.__exit__(*exc)
