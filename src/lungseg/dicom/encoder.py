"""DICOM SEG and SR encoding in worker processes, for the callers that make many of them.

Building a SEG and its SR is pure Python (highdicom assembles and searches the content tree,
pydicom copies and writes the datasets): about 0.13 s for the SEG and 0.11 s for the SR of a
1024 x 1024 film on a 2-core AMD EPYC, 25 times the rest of an image's postprocessing. It holds
the GIL, so the threads of ``segment``'s pipeline encoded one image at a time however many cores
the machine had (``segment --dicom-seg --dicom-sr`` used 1.1 of 2 cores). A
:class:`DicomEncoder` hands the encoding to worker processes, one per core, and the calling
thread waits for its answer without the GIL: the outputs are the same bytes
(:func:`lungseg.dicom.sr.encode` runs in both), made on every core.

The workers are :class:`lungseg.core.workers.Workers`: fresh interpreters that run lungseg's
code only (a script of the user's without a main guard is not run again), start at the first
film that needs one, end with their parent, and cost one film when they die: it is tried once
more in another.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lungseg.core.errors import LungsegError, quiet_third_party
from lungseg.core.workers import WorkerDied, Workers
from lungseg.models.identity import ModelIdentity


class DicomEncoder:
    """Up to ``processes`` worker processes making DICOM SEG and SR bytes.

    Thread-safe: the pipeline's threads call :meth:`encode` at once, each with a worker of its
    own. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, processes: int) -> None:
        self.workers = Workers(processes, init=_worker_init)

    @classmethod
    def per_core(cls, limit: int | None = None) -> DicomEncoder | None:
        """One worker per core this process may use (:func:`~lungseg.core.devices.local_cores`),
        at most ``limit``; ``None`` where that is fewer than two (the caller encodes itself)."""
        from lungseg.core.devices import local_cores

        processes = min(local_cores(), limit or local_cores())
        return cls(processes) if processes > 1 else None

    @property
    def processes(self) -> int:
        """At most this many films are encoded at once."""
        return self.workers.processes

    @property
    def started(self) -> int:
        """Worker processes started so far (a replaced one included)."""
        return self.workers.started

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
        try:
            kind, value = self.workers.call(
                _encode, header, payload, packed, shape, row, identity, settings, name, seg, sr
            )
        except WorkerDied:
            raise LungsegError(
                "the process making its DICOM SEG/SR died twice (out of memory?)", name
            ) from None
        if kind == "error":
            raise LungsegError(value, name)
        return value

    def close(self, wait: bool = True) -> None:
        """End the worker processes (each finishes the film in hand; ``wait``: for that)."""
        self.workers.close(wait)

    def __enter__(self) -> DicomEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)


def _worker_init() -> None:
    quiet_third_party()
    import lungseg.dicom.sr  # noqa: F401  (highdicom and pydicom, before the first film)


def _encode(header, payload, packed, shape, row, identity, settings, name, seg, sr):
    """The worker's side of one film: ``("ok", files)``, or ``("error", problem)`` for a
    :class:`LungsegError` (a two-argument exception does not survive pickling intact)."""
    from lungseg.dicom.sr import encode

    mask = payload
    if packed:
        mask = np.unpackbits(payload, count=shape[0] * shape[1]).reshape(shape).view(bool)
    try:
        return "ok", encode(header, mask, row, identity, settings, name=name, seg=seg, sr=sr)
    except LungsegError as exc:
        return "error", exc.problem
