"""Where ``segment`` writes: a local folder, or ``az://CONTAINER/PREFIX``, behind one small
interface of whole-file operations.

Every file appears whole or not at all (a local file is written to a temporary name and renamed;
a blob is committed when its upload completes), so a run killed at any moment never leaves a
half-written mask that a later run could take as done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Protocol

from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import atomic_write, atomic_write_bytes, sync_filesystem


class Sink(Protocol):
    """An output folder: paths are relative and ``/``-separated.

    Attributes:
        name: the folder or ``az://container/prefix``, as shown to users.
    """

    name: str

    def where(self, rel: str) -> str:
        """The full path or URL of ``rel``, for messages."""
        ...

    def put(self, rel: str, data: bytes) -> None:
        """Write a file whole (replacing it); durable once :meth:`sync` returns."""
        ...

    def sync(self) -> None:
        """Make every file :meth:`put` so far durable (survive a power cut or an OS crash)."""
        ...

    def put_stream(self, rel: str, write: Callable[[IO[bytes]], None]) -> None:
        """Write a large file whole through ``write(fileobj)`` (memory stays flat)."""
        ...

    def create(self, rel: str, data: bytes) -> bool:
        """Write a file only if it does not exist; False when it already did."""
        ...

    def get(self, rel: str) -> bytes | None:
        """A file's content, or None when it does not exist."""
        ...

    def get_to(self, rel: str, path: Path) -> None:
        """Copy a file to local ``path``."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Files under folder ``prefix`` (recursively), lazily, as relative paths."""
        ...

    def delete(self, rels: list[str]) -> None:
        """Delete files (missing ones are fine)."""
        ...

    def lock(self, rel: str, command: str) -> contextlib.AbstractContextManager:
        """Hold ``rel`` for this process while the block runs; refuse when another holds it."""
        ...

    def locks_held(self, prefix: str) -> list[str]:
        """The locks directly under folder ``prefix`` that a process holds now."""
        ...


class LocalSink:
    """A local output folder (created when needed)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise LungsegError("is a file; segment outputs go into a folder", self.root)
        self.name = str(self.root)

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def put(self, rel: str, data: bytes) -> None:
        # No fsync per file (it would hold a worker for milliseconds per image): the ledger
        # syncs the file system once before it records the images as done.
        atomic_write_bytes(self.root / rel, data, durable=False)

    def sync(self) -> None:
        if self.root.is_dir():
            sync_filesystem(self.root)

    def put_stream(self, rel: str, write: Callable[[IO[bytes]], None]) -> None:
        atomic_write(self.root / rel, write)

    def create(self, rel: str, data: bytes) -> bool:
        path = self.root / rel
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        atomic_write_bytes(tmp, data)
        try:
            os.link(tmp, path)  # fails when ``path`` exists: an atomic create-if-absent
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def get_to(self, rel: str, path: Path) -> None:
        shutil.copyfile(self.root / rel, path)

    def list(self, prefix: str) -> Iterator[str]:
        top = self.root / prefix
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.startswith("."):
                    yield Path(os.path.relpath(os.path.join(dirpath, name), self.root)).as_posix()

    def delete(self, rels: list[str]) -> None:
        for rel in rels:
            (self.root / rel).unlink(missing_ok=True)

    def delete_folder(self, rel: str) -> None:
        shutil.rmtree(self.root / rel, ignore_errors=True)

    def lock(self, rel: str, command: str) -> contextlib.AbstractContextManager:
        from lungseg.core.locking import exclusive

        return exclusive(self.root / rel, command)

    def locks_held(self, prefix: str) -> list[str]:
        from lungseg.core.locking import is_held

        top = self.root / prefix
        names = sorted(p.name for p in top.iterdir()) if top.is_dir() else []
        return [name for name in names if is_held(top / name)]


class StowingSink:
    """What the pipeline writes to a sink, and every DICOM SEG and SR of it also stored in a
    PACS by STOW-RS (``segment --stow URL``).

    The PACS gets an object after the local copy is written and before the image is recorded
    as done, so a run stopped in between redoes the image and stores it again, which replaces
    it (the same UIDs). A PACS that stays unreachable after :data:`STOW_TRIES` tries stops the
    run like any storage failure; the images done stay recorded.

    Args:
        sink: the local (or ``az://``) output.
        url: the DICOMweb root (``http(s)://`` or ``dicomweb(s)://HOST:PORT/PATH``).
        folders: the output folders whose files go to the PACS too (SEGs and SRs).
    """

    def __init__(self, sink: Sink, url: str, folders: tuple[str, ...]) -> None:
        from lungseg.storage.dicomweb import DicomWebClient, parse_url

        self._sink = sink
        self._prefixes = tuple(f"{folder}/" for folder in folders)
        self._client = DicomWebClient(parse_url(url)[0])
        self.name = sink.name

    def put(self, rel: str, data: bytes) -> None:
        import time

        from lungseg.storage.dicomweb import DicomWebError

        self._sink.put(rel, data)
        if not rel.startswith(self._prefixes):
            return
        for attempt in range(STOW_TRIES):
            try:
                self._client.store([data])
                return
            except DicomWebError as exc:
                if attempt == STOW_TRIES - 1:
                    raise LungsegError(f"STOW-RS failed: {exc}", rel) from None
                time.sleep(2**attempt)


#: Tries of one STOW-RS request (1, 2, 4 s apart) before the run stops.
STOW_TRIES = 4


def open_sink(out: str | Path, workers: int = 8) -> Sink:
    """``--out``: a local folder, or ``az://CONTAINER/PREFIX`` (``lungseg[azure]``)."""
    text = str(out)
    if text.startswith("az://"):
        from lungseg.storage.sources import azure_module

        return azure_module(text, "writing to").AzureSink.from_url(text, workers=workers)
    if "://" in text:
        raise LungsegError(
            "unsupported output URL; use a local folder or az://CONTAINER/PREFIX", text
        )
    return LocalSink(Path(text))


def delete_folder(sink: Sink, rel: str) -> None:
    """Delete everything under folder ``rel``."""
    if isinstance(sink, LocalSink):
        sink.delete_folder(rel)
    else:
        sink.delete(list(sink.list(rel)))
