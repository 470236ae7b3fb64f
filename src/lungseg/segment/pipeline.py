"""The streaming loop of ``segment``: read, decode and preprocess the next images while the model
runs on the current batch, and write the outputs of the previous ones meanwhile.

One thread pool does the per-image work (reading or downloading, decoding, preprocessing;
postprocessing, measuring, encoding, writing or uploading): OpenCV, zlib, libjpeg and the
network calls release the GIL, so the threads use every core. DICOM SEG and SR encoding is pure
Python and would hold the GIL, so the threads hand it to a pool of processes
(:class:`~lungseg.dicom.encoder.DicomEncoder`, started at the first DICOM film). The main
thread lists the input, forms batches and runs the model. At most a few batches of images are
in flight, so memory does not grow with the archive. Finished rows go to the shard's
:class:`~lungseg.segment.ledger.Ledger` only after their outputs are written.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from lungseg.core.errors import LungsegError
from lungseg.core.interrupts import sigterm_as_interrupt
from lungseg.inference import road
from lungseg.inference.segmenter import Segmenter
from lungseg.segment.inputs import Inputs, Item
from lungseg.segment.ledger import Ledger, now, output_names
from lungseg.storage.sink import Sink

#: Seconds between progress lines when stderr is not a terminal.
LOG_EVERY_S = 60.0


@dataclass
class Loaded:
    """An image read and prepared (:func:`lungseg.inference.road.prepare`), waiting for the
    model."""

    item: Item
    prepared: road.Prepared


@dataclass
class RunCounts:
    """What one run of a shard did.

    Attributes:
        read: images read or downloaded.
        segmented: images through the model (one forward pass each) with outputs written.
        failed: images that could not be read, decoded or written as a SEG (``errors.csv``).
        skipped: images of this shard done by an earlier run (not read again).
    """

    read: int = 0
    segmented: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass
class Pipeline:
    """Everything one shard's run needs; :meth:`run` does the work."""

    segmenter: Segmenter
    source: Inputs
    sink: Sink
    ledger: Ledger
    overlays: bool = False
    dicom_seg: bool = False
    dicom_sr: bool = False
    batch_size: int = 8
    workers: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        self.counts = RunCounts()
        #: What :func:`lungseg.inference.road.finish` encodes for each image.
        self.outputs = ["mask", *(["overlay"] if self.overlays else []),
                        *(["dicom_seg"] if self.dicom_seg else []),
                        *(["dicom_sr"] if self.dicom_sr else [])]  # fmt: skip
        #: Makes the DICOM outputs during :meth:`run` (``None``: the threads do).
        self.encoder = None

    def run(self, items: Iterator[Item]) -> RunCounts:
        """Segment ``items`` (already filtered to this shard and to what is not done).

        On Ctrl-C, SIGTERM or a failure, the images whose outputs are written are recorded in
        the ledger before the exception propagates.
        """
        prefetch = 2 * self.batch_size + self.workers
        max_pending = self.batch_size + 2 * self.workers
        loads: collections.deque[Future] = collections.deque()
        finishing: set[Future] = set()
        batch: list[Loaded] = []
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="lungseg-segment")
        self.encoder = self._dicom_encoder()
        display = _Progress(self.progress, self.counts)
        exhausted = False
        failed = True
        try:
            with sigterm_as_interrupt(), display:
                while True:
                    while not exhausted and len(loads) < prefetch:
                        item = next(items, None)
                        if item is None:
                            exhausted = True
                        else:
                            loads.append(pool.submit(self._load, item))
                    if loads:
                        loaded = loads.popleft().result()
                        self.counts.read += 1
                        if isinstance(loaded, Loaded):
                            batch.append(loaded)
                        else:
                            self._record(loaded)
                    if batch and (len(batch) == self.batch_size or not loads):
                        prob = self._forward(batch)
                        finishing |= {
                            pool.submit(self._finish, one, p)
                            for one, p in zip(batch, prob, strict=True)
                        }
                        batch = []
                    self._collect(finishing, max_pending)
                    display.update()
                    if exhausted and not loads and not batch:
                        break
                self._collect(finishing, 0)
                self.ledger.flush()
                failed = False
        except BaseException:
            for future in loads:
                future.cancel()
            # What the model has already seen is finished and recorded: less to do next time.
            for future in finishing:
                with contextlib.suppress(Exception):
                    self._record(future.result())
            self.ledger.flush()
            raise
        finally:
            # After a failure, a read that hangs (a stalled network file system) must not keep
            # the error from being reported.
            pool.shutdown(wait=not failed, cancel_futures=True)
            if self.encoder is not None:
                self.encoder.close(wait=not failed)
        return self.counts

    def _dicom_encoder(self):
        """Worker processes for the DICOM outputs, one per core the threads may use; none on one
        core or without DICOM outputs (the threads encode then)."""
        if not (self.dicom_seg or self.dicom_sr):
            return None
        from lungseg.dicom.encoder import DicomEncoder

        return DicomEncoder.per_core(limit=self.workers)

    def _collect(self, finishing: set[Future], keep: int) -> None:
        """Record finished images (removing them from ``finishing``); wait while more than
        ``keep`` are in flight."""
        while finishing:
            block = len(finishing) > keep
            done, _ = wait(finishing, timeout=None if block else 0, return_when=FIRST_COMPLETED)
            if not done:
                return
            for future in done:
                finishing.discard(future)
                self._record(future.result())

    def _record(self, row: dict[str, Any]) -> None:
        if row["status"] == "ok":
            self.counts.segmented += 1
        else:
            self.counts.failed += 1
        self.ledger.add(row)
        if self.ledger.due:
            self.ledger.flush()

    def _forward(self, batch: list[Loaded]) -> np.ndarray:
        return road.forward(self.segmenter, [one.prepared for one in batch], self.batch_size)

    def _load(self, item: Item) -> Loaded | dict[str, Any]:
        try:
            data = self.source.read(item)
        except OSError as exc:  # a local file that vanished or may not be read
            return _error(item, f"cannot read file ({exc.strerror or exc})")
        try:
            prepared = road.prepare(data, item.name, self.segmenter, self.outputs)
        except LungsegError as exc:
            return _error(item, exc.problem)
        return Loaded(item, prepared)

    def _finish(self, loaded: Loaded, prob: np.ndarray) -> dict[str, Any]:
        item = loaded.item
        # Only DICOM inputs get DICOM outputs; the others are no error.
        dicom = loaded.prepared.header is not None
        outputs = [k for k in self.outputs if dicom or k not in road.DICOM_OUTPUTS]
        try:
            result = road.finish(loaded.prepared, prob, self.segmenter, key=item.key,
                                 outputs=outputs, encoder=self.encoder)  # fmt: skip
        except LungsegError as exc:  # this image's problem: the archive goes on
            return _error(item, exc.problem)
        except Exception as exc:
            return _error(item, f"cannot segment image ({type(exc).__name__}: {exc})")
        row = result.measurements
        names = output_names(item.key)
        for kind, data in result.files.items():  # a storage failure here stops the run
            self.sink.put(names[kind], data)
            row[kind] = names[kind]
        row.update(version=item.version, status="ok", done_at=now(), problem="")
        return row


def _error(item: Item, problem: str) -> dict[str, Any]:
    return {"key": item.key, "file": item.name, "version": item.version, "status": "error",
            "done_at": now(), "problem": problem}  # fmt: skip


class _Progress:
    """Images done so far on stderr: a live line on a terminal; elsewhere (a job's log) a line
    every :data:`LOG_EVERY_S` seconds and a summary at the end."""

    def __init__(self, enabled: bool, counts: RunCounts) -> None:
        self.enabled, self.counts = enabled, counts
        self._bar = None

    def __enter__(self) -> _Progress:
        self._start = self._last = time.perf_counter()
        if self.enabled and sys.stderr.isatty():
            from lungseg.core.progress import progress_bar

            self._bar = progress_bar("{task.fields[rate]}", transient=True)
            self._bar.start()
            self._task = self._bar.add_task("segment", total=None, rate="")
        return self

    def _status(self) -> str:
        done = self.counts.segmented + self.counts.failed
        elapsed = time.perf_counter() - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        return f"{done} images in {elapsed:.1f}s ({rate:.1f} images/s)"

    def update(self) -> None:
        if not self.enabled:
            return
        now_ = time.perf_counter()
        if self._bar is not None and now_ - self._last >= 0.2:
            done = self.counts.segmented + self.counts.failed
            self._bar.update(self._task, completed=done, rate=self._status().split("(")[1][:-1])
            self._last = now_
        elif self._bar is None and now_ - self._last >= LOG_EVERY_S:
            print(f"segment: {self._status()} so far", file=sys.stderr, flush=True)
            self._last = now_

    def __exit__(self, exc_type, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self.enabled and exc_type is None:
            before = f"; {self.counts.skipped} done before" if self.counts.skipped else ""
            print(f"segment: {self._status()}{before}", file=sys.stderr, flush=True)
