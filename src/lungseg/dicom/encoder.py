"""DICOM SEG and SR encoding in worker processes, for the callers that make many of them.

Building a SEG and its SR is pure Python (highdicom assembles and searches the content tree,
pydicom copies and writes the datasets): about 0.13 s for the SEG and 0.11 s for the SR of a
1024 x 1024 film on a 2-core AMD EPYC, 25 times the rest of an image's postprocessing. It holds
the GIL, so the threads of ``segment``'s pipeline encoded one image at a time however many cores
the machine had (``segment --dicom-seg --dicom-sr`` used 1.1 of 2 cores). A
:class:`DicomEncoder` hands the encoding to worker processes, one per core, and the calling
thread waits for its answer without the GIL: the outputs are the same bytes
(:func:`lungseg.dicom.sr.encode` runs in both), made on every core.

The workers are ``python -m lungseg.dicom.encoder`` processes that read jobs from their stdin
and answer on their stdout, not :mod:`multiprocessing` ones: those import the parent's main
script again, so a user's script that calls ``segment_files`` without an
``if __name__ == "__main__":`` guard would start segmenting in every worker. A worker runs only
lungseg's code, starts at the first film that needs one, ignores Ctrl-C (its parent ends it) and
ends by itself when its parent is gone (its stdin closes, even after ``kill -9``). A worker that
dies (a huge film out of memory) costs that film only: another is started and the film tried
once more.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import numpy as np

from lungseg.core.errors import LungsegError, quiet_third_party
from lungseg.models.identity import ModelIdentity

_LENGTH = struct.Struct("<Q")


class DicomEncoder:
    """Up to ``processes`` worker processes making DICOM SEG and SR bytes.

    Thread-safe: the pipeline's threads call :meth:`encode` at once, each with a worker of its
    own. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes = processes
        self._slots = threading.Semaphore(processes)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._workers: list[_Worker] = []
        self._closed = False
        #: Worker processes started, a replaced one included: for tests and reports.
        self.started = 0

    def encode(
        self, header, mask: np.ndarray, row: dict[str, Any], identity: ModelIdentity,
        settings: Any, *, name: str, seg: bool, sr: bool,
    ) -> dict[str, bytes]:  # fmt: skip
        """:func:`lungseg.dicom.sr.encode` in a worker process (arguments as there).

        Raises:
            LungsegError: as :func:`~lungseg.dicom.sr.encode` does, or the worker died twice on
                this film.
        """
        # A lung mask packs to an eighth: less to copy through the pipe for a 15 MP film.
        shape, packed = mask.shape, mask.dtype.kind == "b"
        payload = np.packbits(mask) if packed else mask
        job = pickle.dumps((header, payload, packed, shape, row, identity, settings, name, seg, sr))
        for attempt in range(2):
            with self._slots:
                worker = self._take()
                try:
                    answer = worker.call(job)
                except (OSError, EOFError, ValueError):  # it died: a broken or closed pipe
                    self._drop(worker)
                    if attempt:
                        raise LungsegError(
                            "the process making its DICOM SEG/SR died twice (out of memory?)",
                            name,
                        ) from None
                    continue
                with self._lock:
                    self._idle.append(worker)
            kind, value = answer
            if kind == "error":
                raise LungsegError(value, name)
            if kind == "exception":
                raise RuntimeError(f"DICOM encoder: {value}")
            return value
        raise AssertionError("unreachable")

    def close(self, wait: bool = True) -> None:
        """End the worker processes (each finishes the film in hand; ``wait``: for that)."""
        with self._lock:
            self._closed = True
            workers, self._workers, self._idle = self._workers, [], []
        for worker in workers:
            worker.stop(wait)

    def __enter__(self) -> DicomEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the DICOM encoder is closed")
            if self._idle:
                return self._idle.pop()
            worker = _Worker()
            self._workers.append(worker)
            self.started += 1
            return worker

    def _drop(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
        worker.stop(wait=False)


class _Worker:
    """One ``python -m lungseg.dicom.encoder`` process and its pipes."""

    def __init__(self) -> None:
        env = dict(os.environ)
        # The parent may import lungseg from a path that only its own sys.path holds.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lungseg.dicom.encoder"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def call(self, job: bytes) -> tuple[str, Any]:
        _write(self.process.stdin, job)
        answer = _read(self.process.stdout)
        if answer is None:
            raise EOFError("the worker ended")
        return pickle.loads(answer)

    def stop(self, wait: bool) -> None:
        try:
            self.process.stdin.close()  # the worker ends at the end of its input
        except OSError:
            pass
        if wait:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _write(stream: IO[bytes], data: bytes) -> None:
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _read(stream: IO[bytes]) -> bytes | None:
    """One message, or ``None`` at the end of the stream (also when it ends inside one)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    return data if len(data) == size else None


def _encode(job: bytes) -> tuple[str, Any]:
    """The worker's side of one film: ``("ok", files)``, ``("error", problem)`` for a
    :class:`LungsegError`, ``("exception", its type's name)`` for anything else."""
    from lungseg.dicom.sr import encode

    header, payload, packed, shape, row, identity, settings, name, seg, sr = pickle.loads(job)
    mask = payload
    if packed:
        mask = np.unpackbits(payload, count=shape[0] * shape[1]).reshape(shape).view(bool)
    try:
        return "ok", encode(header, mask, row, identity, settings, name=name, seg=seg, sr=sr)
    except LungsegError as exc:
        return "error", exc.problem
    except Exception as exc:  # a bug; its text may hold header values, so only its type
        return "exception", type(exc).__name__


def _serve() -> None:
    """A worker's life: one answer per job on stdin, until stdin ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it on Ctrl-C
    quiet_third_party()
    import lungseg.dicom.sr  # noqa: F401  (highdicom and pydicom, before the first film)

    jobs, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    while (job := _read(jobs)) is not None:
        _write(answers, pickle.dumps(_encode(job)))


if __name__ == "__main__":
    _serve()
