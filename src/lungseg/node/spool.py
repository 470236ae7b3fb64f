"""The node's spool: every instance it accepted, on disk, in one of three states.

::

    received/<uid>.dcm      accepted (fsync'd before the sender was told "success")
    segmented/<uid>/*.dcm   results written (the received file is then removed)
    failed/<uid>.txt        could not be segmented: one line why (no patient data)

An instance leaves ``segmented/`` once the destination has stored every result. Each step is
one rename of fsync'd files followed by an fsync of the folder, so ``kill -9`` at any moment
leaves every instance in exactly one state, or in two adjacent ones when it struck between a
rename and the removal that follows it; :meth:`Spool.recover` settles those on start-up. A step
done twice does no harm: results are deterministic (the same UIDs for the same input and
model), so a second send replaces what the first stored.

``<uid>`` is the SOP Instance UID, checked against the DICOM UID syntax, so a sender cannot
choose a path.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from lungseg.core.io_utils import atomic_write_bytes

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_STATES = ("received", "segmented", "failed")


def valid_uid(uid: str) -> bool:
    """A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters."""
    return len(uid) <= 64 and bool(_UID.match(uid))


class Spool:
    """The spool folder (created where missing).

    Args:
        root: the folder; keep it on a local disk (fsync is what makes it safe).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for state in _STATES:
            (self.root / state).mkdir(parents=True, exist_ok=True)
        self.recover()

    def _dir(self, state: str) -> Path:
        return self.root / state

    def _sync(self, folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def recover(self) -> None:
        """Settle what a crash left between two states, and remove half-written files."""
        for state in _STATES:
            for leftover in self._dir(state).glob(".*"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        for path in self._dir("received").glob("*.dcm"):
            uid = path.stem
            if (self._dir("segmented") / uid).is_dir() or (
                self._dir("failed") / f"{uid}.txt"
            ).exists():
                path.unlink()
        self._sync(self._dir("received"))

    def receive(self, uid: str, data: bytes) -> None:
        """Store an accepted instance durably (file and folder fsync'd)."""
        atomic_write_bytes(self._dir("received") / f"{uid}.dcm", data)
        self._sync(self._dir("received"))

    def received(self) -> list[str]:
        """UIDs waiting for the model, oldest first."""
        paths = list(self._dir("received").glob("*.dcm"))
        paths.sort(key=lambda p: (_mtime(p), p.name))
        return [p.stem for p in paths]

    def read(self, uid: str) -> bytes:
        return (self._dir("received") / f"{uid}.dcm").read_bytes()

    def segmented(self, uid: str, results: Mapping[str, bytes]) -> None:
        """``received -> segmented``: the results (file name -> bytes) replace the instance."""
        final = self._dir("segmented") / uid
        tmp = self._dir("segmented") / f".{uid}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, data in results.items():
            atomic_write_bytes(tmp / name, data)
        self._sync(tmp)
        if final.exists():  # the same instance sent again before its results went out
            shutil.rmtree(final)
        os.rename(tmp, final)
        self._sync(self._dir("segmented"))
        self._drop_received(uid)

    def failed(self, uid: str, problem: str) -> None:
        """``received -> failed``, with one line why."""
        atomic_write_bytes(self._dir("failed") / f"{uid}.txt", (problem + "\n").encode())
        self._sync(self._dir("failed"))
        self._drop_received(uid)

    def _drop_received(self, uid: str) -> None:
        (self._dir("received") / f"{uid}.dcm").unlink(missing_ok=True)
        self._sync(self._dir("received"))

    def outbox(self) -> list[str]:
        """UIDs whose results wait for the destination, oldest first."""
        paths = [p for p in self._dir("segmented").iterdir() if not p.name.startswith(".")]
        paths.sort(key=lambda p: (_mtime(p), p.name))
        return [p.name for p in paths]

    def results(self, uid: str) -> dict[str, bytes]:
        folder = self._dir("segmented") / uid
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    def sent(self, uid: str) -> None:
        """``segmented -> sent``: the destination holds every result; forget them."""
        folder = self._dir("segmented") / uid
        gone = self._dir("segmented") / f".{uid}.sent"
        os.rename(folder, gone)
        self._sync(self._dir("segmented"))
        shutil.rmtree(gone)

    def counts(self) -> dict[str, int]:
        """Instances waiting in each state."""
        return {
            "received": sum(1 for _ in self._dir("received").glob("*.dcm")),
            "segmented": sum(1 for p in self._dir("segmented").iterdir() if p.name[0] != "."),
            "failed": sum(1 for _ in self._dir("failed").glob("*.txt")),
        }


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0
