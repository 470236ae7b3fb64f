"""The one transfer loop: move files in parallel, show progress, stop at the first failure.

Downloads and uploads differ only in what moves one file; :func:`transfer` runs that function
over a thread pool, advances a :class:`TransferBar`, and turns the first failure into an error
that says what stays done, so running the command again picks up from there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TypeVar

from lungseg.core.errors import LungsegError
from lungseg.core.progress import TransferBar

T = TypeVar("T")


@dataclass(frozen=True)
class TransferStats:
    """What one download or upload did.

    Attributes:
        transferred: files fetched (download) or sent (upload).
        bytes: their total size.
        skipped: files already in place (in the local cache, or identical in the container).
        seconds: wall time.
    """

    transferred: int
    bytes: int
    skipped: int
    seconds: float


def transfer(
    description: str,
    jobs: Mapping[T, int],
    move: Callable[[T], bool],
    *,
    workers: int,
    progress: bool,
    kept: str,
    start: float,
) -> TransferStats:
    """Run ``move`` on every job in a thread pool; on the first failure cancel what is queued.

    Args:
        description: the progress label, e.g. ``download az://container/prefix``.
        jobs: each job and its size in bytes.
        move: transfers one job from a worker thread; returns False when the file was already
            in place, so nothing crossed the wire.
        workers: threads at most.
        progress: show a :class:`TransferBar`.
        kept: what stays done after a failure, appended to its message; ``{moved}`` and
            ``{total}`` are replaced by the files moved before it and the number of jobs.
        start: ``time.perf_counter()`` when the caller began (``seconds`` counts from there).

    Returns:
        Files moved, their bytes, files already in place, and seconds since ``start``.

    Raises:
        LungsegError: the first job that failed, with ``kept`` added; finished jobs stay done.
    """
    moved = nbytes = in_place = 0
    if jobs:
        bar = TransferBar(description, len(jobs), sum(jobs.values()), progress)
        pool = ThreadPoolExecutor(min(workers, len(jobs)))
        failure: LungsegError | None = None
        try:
            futures = {pool.submit(move, job): job for job in jobs}
            with bar:
                for future in as_completed(futures):
                    size = jobs[futures[future]]
                    try:
                        was_moved = future.result()
                    except LungsegError as exc:
                        failure = exc
                        break
                    moved += was_moved
                    nbytes += size if was_moved else 0
                    in_place += not was_moved
                    bar.advance(size, moved=was_moved)
                if failure is not None:
                    resume = kept.format(moved=moved, total=len(jobs))
                    raise LungsegError(f"{failure.problem}; {resume}", failure.path)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return TransferStats(moved, nbytes, in_place, time.perf_counter() - start)
