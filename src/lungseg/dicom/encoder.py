"""DICOM SEG and SR encoding in worker processes, for the callers that make many of them.

Building a SEG and its SR is pure Python (highdicom assembles and searches the content tree,
pydicom copies and writes the datasets): about 0.13 s for the SEG and 0.11 s for the SR of a
1024 x 1024 film on a 2-core AMD EPYC, 25 times the rest of an image's postprocessing. It holds
the GIL, so the threads of ``segment``'s pipeline encoded one image at a time however many cores
the machine had (``segment --dicom-seg --dicom-sr`` used 1.1 of 2 cores). A
:class:`DicomEncoder` hands the encoding to a pool of processes, one per core, and the calling
thread waits for it without the GIL: the outputs are the same bytes
(:func:`lungseg.dicom.sr.encode` runs in both), made on every core.

The pool starts at the first film (``spawn``: the parent holds PyTorch's and the pipeline's
threads, which a forked child would inherit half-copied). Its processes ignore Ctrl-C - the
parent stops them - and end by themselves within a second when the parent is gone (killed
without a chance to stop them). A process that dies (a huge film out of memory) costs that film
only: the pool is started again and the film tried once more.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from lungseg.core.errors import LungsegError, quiet_third_party
from lungseg.models.identity import ModelIdentity


class DicomEncoder:
    """A pool of ``processes`` worker processes making DICOM SEG and SR bytes.

    Thread-safe: the pipeline's threads call :meth:`encode` at once. Use as a context manager, or
    call :meth:`close`.
    """

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        #: Pools started (a pool whose process died is replaced): for tests and reports.
        self.started = 0

    def encode(
        self, header, mask: np.ndarray, row: dict[str, Any], identity: ModelIdentity,
        settings: Any, *, name: str, seg: bool, sr: bool,
    ) -> dict[str, bytes]:  # fmt: skip
        """:func:`lungseg.dicom.sr.encode` in a worker process (arguments as there).

        Raises:
            LungsegError: as :func:`~lungseg.dicom.sr.encode` does, or the worker process died
                twice on this film.
        """
        # A lung mask packs to an eighth: less to copy through the pipe for a 15 MP film.
        shape, packed = mask.shape, mask.dtype.kind == "b"
        payload = np.packbits(mask) if packed else mask
        job = (header, payload, packed, shape, row, identity, settings, name, seg, sr)
        for attempt in range(2):
            pool = self._current()
            try:
                outcome = pool.submit(_encode, *job).result()
            except BrokenProcessPool:
                self._replace(pool)
                if attempt:
                    raise LungsegError(
                        "the process making its DICOM SEG/SR died twice (out of memory?)", name
                    ) from None
                continue
            if isinstance(outcome, str):
                raise LungsegError(outcome, name)
            return outcome
        raise AssertionError("unreachable")

    def close(self, wait: bool = True) -> None:
        """Stop the worker processes (``wait=False``: without waiting for films in hand)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> DicomEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                import multiprocessing

                self._pool = ProcessPoolExecutor(
                    self.processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init, initargs=(os.getpid(),),
                )  # fmt: skip
                self.started += 1
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:  # another thread may have replaced it already
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)


def _worker_init(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool on Ctrl-C
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    quiet_third_party()
    import lungseg.dicom.sr  # noqa: F401  (highdicom and pydicom, once per process)


def _exit_with(parent: int) -> None:
    """End this worker once ``parent`` is gone: a worker waits on a queue that it holds both
    ends of, so it would never learn otherwise (seen: a SIGTERMed node's encoders lived on)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _encode(header, payload, packed, shape, row, identity, settings, name, seg, sr):
    """The worker's side: the outputs, or a :class:`LungsegError`'s problem as a string (an
    exception with a two-argument constructor does not survive pickling intact)."""
    from lungseg.dicom.sr import encode

    mask = payload
    if packed:
        mask = np.unpackbits(payload, count=shape[0] * shape[1]).reshape(shape).view(bool)
    try:
        return encode(header, mask, row, identity, settings, name=name, seg=seg, sr=sr)
    except LungsegError as exc:
        return exc.problem
