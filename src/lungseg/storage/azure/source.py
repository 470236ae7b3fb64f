"""Reading a dataset from ``az://CONTAINER/PREFIX`` through a local content cache.

Reading lists the prefix once, then downloads missing files in parallel into a content cache
(``$LUNGSEG_CACHE_DIR/azure``, default ``~/.cache/lungseg/azure``) keyed by endpoint, container,
blob name and ETag: a second run downloads nothing and a changed blob (new ETag) is fetched again.
Each file is written to a temporary name and renamed when complete, so an interrupted download
keeps every finished file and the next run fetches only the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from azure.core import MatchConditions

from lungseg.core.errors import LungsegError
from lungseg.storage.azure.connection import DEFAULT_WORKERS, BlobLocation, Container, parse_url
from lungseg.storage.azure.transfer import TransferStats, transfer
from lungseg.storage.blob_cache import cache_root

_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


@dataclass(frozen=True)
class _Blob:
    key: str
    name: str
    size: int
    etag: str
    md5: bytes | None


class AzureSource:
    """A dataset under ``az://CONTAINER/PREFIX``, read through a local content cache.

    Implements :class:`~lungseg.storage.sources.DataSource`; keys are blob names relative to the
    prefix. The container is listed once per object (on first use).

    Args:
        location: container and prefix.
        cache_dir: content cache (default :func:`~lungseg.storage.blob_cache.cache_root`).
        workers: parallel downloads.
        progress: show a progress bar (or a summary line when stderr is not a terminal).
        on_file: called from the download threads with ``(key, size)`` after each file is in the
            cache (for progress displays; must be thread-safe).

    Attributes:
        name: ``az://container/prefix``.
        last_download: what the latest :meth:`download` did.
    """

    def __init__(
        self,
        location: BlobLocation,
        *,
        cache_dir: str | Path | None = None,
        workers: int = DEFAULT_WORKERS,
        progress: bool = True,
        on_file: Callable[[str, int], None] | None = None,
    ) -> None:
        if workers < 1:
            raise LungsegError(f"workers must be at least 1, got {workers}")
        self.location = location
        self.name = location.url
        self.workers = workers
        self.progress = progress
        self.on_file = on_file
        self.last_download: TransferStats | None = None
        self._container = Container.open(location, workers)
        self._cache = Path(cache_dir) if cache_dir is not None else cache_root()
        self._blobs: dict[str, _Blob] | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> AzureSource:
        """Open ``az://CONTAINER/PREFIX`` with credentials from the environment."""
        return cls(parse_url(url), **kwargs)

    def __repr__(self) -> str:
        return f"AzureSource({self.name!r})"

    def _listing(self) -> dict[str, _Blob]:
        if self._blobs is None:
            blobs = {b.key: b for b in self.iter_blobs()}
            if not blobs:
                raise LungsegError(self._nothing_found(), self.name)
            self._blobs = dict(sorted(blobs.items()))
        return self._blobs

    def iter_blobs(self) -> Iterator[_Blob]:
        """The blobs under the prefix, listed lazily page by page (in blob-name order), for
        archives too large to hold their listing; nothing is kept."""
        prefix = self.location.prefix
        client = self._container.client
        pages = self._container.call(
            "listing",
            lambda: client.list_blobs(name_starts_with=prefix or None, include=["metadata"]),
        ).by_page()
        # Each page is one request (5,000 blobs at most), made by next().
        while (page := self._container.call("listing", lambda: next(pages, None))) is not None:
            for b in page:
                # Folders of accounts with a hierarchical namespace are listed as empty blobs.
                if b.name.endswith("/") or (b.metadata or {}).get("hdi_isfolder") == "true":
                    continue
                md5 = b.content_settings.content_md5
                key = b.name[len(prefix) :]
                yield _Blob(key, b.name, b.size, b.etag, bytes(md5) if md5 else None)

    def _nothing_found(self) -> str:
        container = f"container {self.location.container!r}"
        if not self.location.prefix:
            return f"{container} is empty"
        client = self._container.client
        top = self._container.call(
            "listing",
            lambda: list(itertools.islice((b.name for b in client.walk_blobs()), 6)),
        )
        if not top:
            return f"{container} is empty"
        shown = ", ".join(top[:5]) + (", ..." if len(top) > 5 else "")
        return f"no files under prefix {self.location.prefix!r} in {container} (it holds: {shown})"

    def list_keys(self) -> list[str]:
        return list(self._listing())

    def _blob(self, key: str) -> _Blob:
        try:
            return self._listing()[key]
        except KeyError:
            raise LungsegError("no such blob", f"{self.name}/{key}") from None

    def stat(self, key: str) -> tuple[int, str]:
        blob = self._blob(key)
        return blob.size, blob.etag

    def read_bytes(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def local_path(self, key: str) -> Path:
        blob = self._blob(key)
        path = self._cache_path(blob)
        if not self._is_cached(blob, path):
            self._fetch(blob)
        return path

    def _cache_path(self, blob: _Blob) -> Path:
        # Hashed names: blob names may hold characters, cases or ``..`` a file system cannot.
        account = self._container.account
        identity = "\n".join((account.endpoint, self.location.container, blob.name, blob.etag))
        digest = hashlib.sha256(identity.encode()).hexdigest()
        suffix = PurePosixPath(blob.name).suffix
        suffix = suffix.lower() if _SAFE_SUFFIX.match(suffix) else ""
        folder_name = re.sub(r"[^A-Za-z0-9-]", "_", account.name)
        folder = self._cache / folder_name / self.location.container / digest[:2]
        return folder / f"{digest}{suffix}"

    @staticmethod
    def _is_cached(blob: _Blob, path: Path) -> bool:
        try:
            return path.stat().st_size == blob.size
        except FileNotFoundError:
            return False

    def download(self, keys: Iterable[str]) -> TransferStats:
        """Make sure ``keys`` are in the local cache, fetching the missing ones in parallel.

        Returns:
            What was fetched and what was already cached (also kept in :attr:`last_download`).

        Raises:
            LungsegError: on the first file that cannot be fetched (after retries); the files
                completed before it stay in the cache.
        """
        start = time.perf_counter()
        wanted = [self._blob(k) for k in dict.fromkeys(keys)]
        missing = {b: b.size for b in wanted if not self._is_cached(b, self._cache_path(b))}
        stats = transfer(
            f"download {self.name}",
            missing,
            self._fetch,
            workers=self.workers,
            progress=self.progress,
            kept="the {moved} of {total} files downloaded so far are kept, so running again "
            "fetches only the rest",
            start=start,
        )
        stats = dataclasses.replace(stats, skipped=stats.skipped + len(wanted) - len(missing))
        self.last_download = stats
        if self.progress and wanted and not missing:
            print(f"download {self.name}: all {len(wanted)} files already cached", file=sys.stderr)
        return stats

    def _fetch(self, blob: _Blob) -> bool:
        """Download one blob into the cache; True, as :func:`transfer` counts it as moved."""
        path = self._cache_path(blob)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                md5 = self._container.call(
                    f"downloading {blob.key} from", lambda: self._stream(blob, fh)
                )
            if os.stat(tmp).st_size != blob.size or (blob.md5 and md5 != blob.md5):
                raise LungsegError(
                    "downloaded content does not match the blob's size or MD5; run the command "
                    "again",
                    f"{self.name}/{blob.key}",
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.on_file is not None:
            self.on_file(blob.key, blob.size)
        return True

    def fetch(self, blob: _Blob) -> bytes:
        """One blob's content, straight into memory (no content cache: an archive is read once,
        and caching it would fill the disk); checked against its listed size and MD5."""
        buf = io.BytesIO()
        md5 = self._container.call(f"downloading {blob.key} from", lambda: self._stream(blob, buf))
        if buf.tell() != blob.size or (blob.md5 and md5 != blob.md5):
            raise LungsegError(
                "downloaded content does not match the blob's size or MD5; run the command again",
                f"{self.name}/{blob.key}",
            )
        return buf.getvalue()

    def head(self, blob: _Blob, length: int) -> bytes:
        """A blob's first ``length`` bytes (one ranged read: what it holds, by its signature)."""
        client = self._container.client
        return self._container.call(
            f"reading {blob.key} from",
            lambda: client.download_blob(
                blob.name, offset=0, length=length, etag=blob.etag,
                match_condition=MatchConditions.IfNotModified,
            ).readall(),
        )  # fmt: skip

    def _stream(self, blob: _Blob, fh: BinaryIO) -> bytes:
        # The ETag condition makes a blob replaced mid-download fail (412) instead of mixing.
        downloader = self._container.client.download_blob(
            blob.name, etag=blob.etag, match_condition=MatchConditions.IfNotModified
        )
        md5 = hashlib.md5(usedforsecurity=False)
        for chunk in downloader.chunks():
            fh.write(chunk)
            md5.update(chunk)
        return md5.digest()
