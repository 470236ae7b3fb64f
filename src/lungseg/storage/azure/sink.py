"""Writing results under ``az://CONTAINER/PREFIX``: the output side of ``lungseg segment``.

:class:`AzureSink` implements :class:`lungseg.storage.sink.Sink` with whole-blob operations.
A block blob becomes visible only when its upload completes, so a run killed mid-upload leaves
the old blob or none, never half of one. Each blob carries its MD5 (``Content-MD5``, checked by
the service) and content type. :meth:`AzureSink.lock` holds a renewed 30-second lease on a
lock blob: a second process asking for the same lock is refused, and the lease of a process that
died runs out by itself. A holder checks its lease before every write: a process stopped past
its lease (SIGSTOP, a suspended VM) finds another run may hold it now, and stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings

from lungseg.core.errors import LockBusy, LockLost
from lungseg.storage.azure.connection import DEFAULT_WORKERS, BlobLocation, Container, parse_url

#: Seconds a lock lease lasts without renewal (Azure allows 15-60): how long a killed process
#: keeps its output locked.
LEASE_S = 30
_CREATE_HINT = "; create it first (e.g. az storage container create --name CONTAINER)"
mimetypes.add_type("application/dicom", ".dcm")


class AzureSink:
    """An output folder under ``az://CONTAINER/PREFIX``; the container must exist.

    Args:
        location: container and prefix.
        workers: threads that share the connection pool.
    """

    def __init__(self, location: BlobLocation, workers: int = DEFAULT_WORKERS) -> None:
        self.location = location
        self.name = location.url
        self.workers = workers
        self._container = Container.open(location, workers, if_missing=_CREATE_HINT)
        self._held: list[_Held] = []

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> AzureSink:
        """Open ``az://CONTAINER/PREFIX`` with credentials from the environment."""
        return cls(parse_url(url), **kwargs)

    def __repr__(self) -> str:
        return f"AzureSink({self.name!r})"

    def where(self, rel: str) -> str:
        return f"{self.name}/{rel}"

    def _blob(self, rel: str) -> str:
        return self.location.prefix + rel

    def put(self, rel: str, data: bytes) -> None:
        self._upload(rel, data, len(data), hashlib.md5(data, usedforsecurity=False).digest())

    def _upload(self, rel: str, data: bytes | IO[bytes], length: int, md5: bytes) -> None:
        self._check_held()
        settings = ContentSettings(
            content_type=mimetypes.guess_type(rel)[0] or "application/octet-stream",
            content_md5=bytearray(md5),
        )
        client = self._container.client
        self._container.call(
            f"uploading {rel} to",
            lambda: client.upload_blob(
                self._blob(rel), data, length=length, overwrite=True, content_settings=settings
            ),
        )

    def sync(self) -> None:
        """Nothing to do: an uploaded blob is durable when its upload returns."""

    def put_stream(self, rel: str, write: Callable[[IO[bytes]], None]) -> None:
        with tempfile.TemporaryFile() as fh:
            write(fh)
            length = fh.tell()
            fh.seek(0)
            md5 = hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False)).digest()
            fh.seek(0)
            self._upload(rel, fh, length, md5)

    def create(self, rel: str, data: bytes) -> bool:
        self._check_held()
        client = self._container.client

        def create() -> bool:
            try:
                client.upload_blob(self._blob(rel), data, overwrite=False)
                return True
            except ResourceExistsError:
                return False

        return self._container.call(f"uploading {rel} to", create)

    def get(self, rel: str) -> bytes | None:
        client = self._container.client

        def read() -> bytes | None:
            try:
                return client.download_blob(self._blob(rel)).readall()
            except ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) == "ContainerNotFound":
                    raise
                return None

        return self._container.call(f"downloading {rel} from", read)

    def get_to(self, rel: str, path: Path) -> None:
        client = self._container.client
        with open(path, "wb") as fh:
            self._container.call(
                f"downloading {rel} from",
                lambda: client.download_blob(self._blob(rel)).readinto(fh),
            )

    def list(self, prefix: str) -> Iterator[str]:
        folder = self._blob(prefix.rstrip("/") + "/")
        client = self._container.client
        pages = self._container.call(
            "listing", lambda: client.list_blobs(name_starts_with=folder).by_page()
        )
        while (page := self._container.call("listing", lambda: next(pages, None))) is not None:
            for blob in page:
                yield blob.name[len(self.location.prefix) :]

    def delete(self, rels: list[str]) -> None:
        self._check_held()
        client = self._container.client

        def delete(rel: str) -> None:
            def call() -> None:
                with contextlib.suppress(ResourceNotFoundError):
                    client.delete_blob(self._blob(rel))

            self._container.call(f"deleting {rel} from", call)

        if rels:
            with ThreadPoolExecutor(min(self.workers, len(rels))) as pool:
                list(pool.map(delete, rels))

    @contextlib.contextmanager
    def lock(self, rel: str, command: str) -> Iterator[None]:
        """Hold a lease on the blob ``rel`` (renewed in the background) while the block runs.

        Raises:
            LungsegError: another process holds it (its lease runs out within
                :data:`LEASE_S` seconds of that process's death).
        """
        blob = self._container.client.get_blob_client(self._blob(rel))

        def acquire():
            with contextlib.suppress(HttpResponseError):  # it exists (and may be leased)
                blob.upload_blob(command.encode(), overwrite=False)
            try:
                return blob.acquire_lease(lease_duration=LEASE_S)
            except HttpResponseError as exc:
                if exc.status_code == 409:
                    return None
                raise

        lease = self._container.call(f"locking {rel} in", acquire)
        if lease is None:
            raise LockBusy(
                f"is in use by another lungseg process (it holds the lease on {rel}; a process "
                f"that died releases it within {LEASE_S} s); wait for it to finish, or use "
                "another output",
                self.name,
            )
        held = _Held(rel, lease)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(LEASE_S / 3):
                held.renew(quiet=True)

        renewer = threading.Thread(target=renew, daemon=True, name="lungseg-lease")
        renewer.start()
        self._held.append(held)
        try:
            yield
        finally:
            self._held.remove(held)
            stop.set()
            renewer.join()
            with contextlib.suppress(Exception):
                lease.release()

    def locks_held(self, prefix: str) -> list[str]:
        """The locks under folder ``prefix`` that some process holds now (a live lease)."""
        folder = self._blob(prefix.rstrip("/") + "/")
        client = self._container.client

        def leased() -> list[str]:
            return [
                blob.name[len(folder) :]
                for blob in client.list_blobs(name_starts_with=folder)
                if blob.lease.state == "leased"
            ]

        return self._container.call("listing", leased)

    def _check_held(self) -> None:
        """Before every write: each lock this process holds is still its own. A renewal that is
        overdue (this process was stopped, or could not reach the service) is made now; a lease
        that is gone stops the run with :class:`~lungseg.core.errors.LockLost`."""
        for held in list(self._held):
            if held.lost or time.monotonic() - held.renewed > LEASE_S / 2:
                held.renew(quiet=False)
            if held.lost:
                raise LockLost(
                    f"lost the lease on {held.rel}: this process was stopped or cut off for "
                    f"longer than the lease ({LEASE_S} s), so another run may have taken over; "
                    "stopped before writing again (its images are recorded by the run that "
                    "holds the lease now)",
                    self.name,
                )


class _Held:
    """A lease this process holds, and when it was last renewed."""

    def __init__(self, rel: str, lease: Any) -> None:
        self.rel, self.lease = rel, lease
        self.renewed = time.monotonic()
        self.lost = False
        self._mutex = threading.Lock()

    def renew(self, quiet: bool) -> None:
        """Renew the lease; a refusal (another process took the blob's lease, 409/412) marks it
        lost. Other failures are left to the next try (``quiet``) or raised."""
        with self._mutex:
            if self.lost:
                return
            try:
                self.lease.renew()
                self.renewed = time.monotonic()
            except HttpResponseError as exc:
                if exc.status_code in (409, 412):
                    self.lost = True
                elif not quiet:
                    raise
            except Exception:
                if not quiet:
                    raise
