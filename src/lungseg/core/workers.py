"""Worker processes that run lungseg's code only: ``python -m lungseg.core.workers``, fed through
pipes, for work that needs more than one core from Python (decoding a dataset, encoding DICOM).

Not :mod:`multiprocessing`: its ``spawn`` and ``forkserver`` workers import the parent's main
script again, so a user's script that calls ``lungseg.prepare`` or ``segment_files`` without an
``if __name__ == "__main__":`` guard ran again in every worker (``prepare`` then waited for its
own lock for ever; ``segment`` failed every DICOM film); ``fork`` copies a parent that holds
PyTorch's and the pipeline's threads half-way. A worker here is a fresh interpreter that imports
only the functions it is sent (module-level functions, pickled by name) and:

* starts when a call first needs it, and runs the ``init`` function once;
* ignores Ctrl-C - its parent ends it - and ends by itself when its parent is gone (its input
  closes, even after ``kill -9``);
* costs one call when it dies (a huge image out of memory): another is started and the call
  tried once more; a second death raises :class:`WorkerDied`.

Messages are pickles with a length in front; both ends are this module, so nothing untrusted
is unpickled.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

_LENGTH = struct.Struct("<Q")


class WorkerDied(Exception):
    """A worker process died on the same call twice."""


class Workers:
    """Up to ``processes`` worker processes; thread-safe (each calling thread gets a worker of
    its own). Use as a context manager, or call :meth:`close`.

    Args:
        processes: at most this many workers (and calls at a time).
        init: a module-level function each worker runs once before its first call.
    """

    def __init__(self, processes: int, init: Callable[[], None] | None = None) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes = processes
        self._init = init
        self._slots = threading.Semaphore(processes)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._workers: list[_Worker] = []
        self._closed = False
        #: Worker processes started, replaced ones included: for tests and reports.
        self.started = 0

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a worker: its result.

        Raises:
            WorkerDied: the worker died twice on it.
            RuntimeError: ``function`` raised (named by its exception's type only: its text may
                hold what the call was about).
        """
        job = pickle.dumps((function, args))
        for attempt in range(2):
            with self._slots:
                worker = self._take()
                try:
                    kind, value = worker.call(job)
                except (OSError, EOFError, ValueError):  # it died: a broken or closed pipe
                    self._drop(worker)
                    if attempt:
                        raise WorkerDied("a worker process died twice on one call") from None
                    continue
                with self._lock:
                    self._idle.append(worker)
            if kind == "exception":
                raise RuntimeError(f"in a worker process: {value}")
            return value
        raise AssertionError("unreachable")

    def map(self, function: Callable[..., Any], items: Iterable[Any], *args: Any) -> Iterator:
        """``function(item, *args)`` for each item, on every worker at once; results in order."""
        with ThreadPoolExecutor(self.processes, thread_name_prefix="lungseg-workers") as pool:
            yield from pool.map(lambda item: self.call(function, item, *args), items)

    def close(self, wait: bool = True) -> None:
        """End the workers (each finishes its call in hand; ``wait``: for that)."""
        with self._lock:
            self._closed = True
            workers, self._workers, self._idle = self._workers, [], []
        for worker in workers:
            worker.stop(wait)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker processes are closed")
            if self._idle:
                return self._idle.pop()
            self.started += 1
        worker = _Worker()
        with self._lock:
            self._workers.append(worker)
        if self._init is not None:
            try:
                worker.call(pickle.dumps((self._init, ())))
            except (OSError, EOFError, ValueError):
                pass  # its first call finds it dead and starts another
        return worker

    def _drop(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
        worker.stop(wait=False)


class _Worker:
    """One ``python -m lungseg.core.workers`` process and its pipes."""

    def __init__(self) -> None:
        env = dict(os.environ)
        # The parent may import lungseg from a path that only its own sys.path holds.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lungseg.core.workers"], env=env,
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


def _serve() -> None:
    """A worker's life: one answer per call on stdin, until stdin ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it on Ctrl-C
    calls, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    while (job := _read(calls)) is not None:
        try:
            function, args = pickle.loads(job)
            answer = ("ok", function(*args))
        except Exception as exc:
            answer = ("exception", type(exc).__name__)
        _write(answers, pickle.dumps(answer))


if __name__ == "__main__":
    _serve()
