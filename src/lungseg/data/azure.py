"""Azure Blob Storage: read a dataset from ``az://CONTAINER/PREFIX`` and upload one there.

Credentials come from the environment only, tried in this order:

1. ``AZURE_STORAGE_CONNECTION_STRING``;
2. ``AZURE_STORAGE_ACCOUNT_URL`` (or ``AZURE_STORAGE_ACCOUNT``, the account name) with
   ``AZURE_STORAGE_KEY`` or ``AZURE_STORAGE_SAS_TOKEN``;
3. ``AZURE_STORAGE_ACCOUNT_URL`` alone: ``DefaultAzureCredential`` (``az login``, managed
   identity, ...) when ``azure-identity`` is installed.

They are never printed, logged or written anywhere: :attr:`AzureSource.name` is
``az://container/prefix``, and errors name the container, the endpoint and the *name* of the
variable that held the credential, never its value. Errors from the SDK are translated into one
:class:`~lungseg.errors.LungsegError` line and raised outside the ``except`` block, so the SDK
exception (whose text can hold request URLs with a SAS signature) is not even kept as context.
The SDK's own HTTP logging stays as the SDK sets it (it redacts ``Authorization`` and ``sig``);
we never turn on ``logging_enable``, which would log raw headers. urllib3 logs every request path
at DEBUG, query string included, so a filter on its logger masks SAS signatures there.

Reading lists the prefix once, then downloads missing files in parallel into a content cache
(``$LUNGSEG_CACHE_DIR/azure``, default ``~/.cache/lungseg/azure``) keyed by endpoint, container,
blob name and ETag: a second run downloads nothing and a changed blob (new ETag) is fetched again.
Each file is written to a temporary name and renamed when complete, so an interrupted download
keeps every finished file and the next run fetches only the rest.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import mimetypes
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContentSettings, ExponentialRetry

from lungseg.data.blob_cache import cache_root
from lungseg.data.local import LocalSource
from lungseg.errors import LungsegError

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT_URL = "AZURE_STORAGE_ACCOUNT_URL"
ENV_ACCOUNT = "AZURE_STORAGE_ACCOUNT"
ENV_KEY = "AZURE_STORAGE_KEY"
ENV_SAS = "AZURE_STORAGE_SAS_TOKEN"

DEFAULT_WORKERS = 8
#: Throttling, 5xx and dropped connections are retried with exponential backoff (about 0.5, 2.5,
#: 4.5, 8.5, 16.5 s). A refused connection is retried only twice (the SDK stops once the count
#: goes below zero), so a wrong or dead endpoint fails in about 3 s instead of minutes.
RETRY: dict[str, Any] = {
    "retry_total": 5,
    "retry_connect": 1,
    "retry_read": 3,
    "retry_status": 5,
    "initial_backoff": 0.5,
    "increment_base": 2,
    "random_jitter_range": 0.5,
}
#: Seconds to open a connection (the SDK's default of 20 s, times retries, hides a dead endpoint).
CONNECTION_TIMEOUT_S = 5
#: Seconds without a byte from an open connection before the read is retried.
READ_TIMEOUT_S = 60

_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")
_HASH_CHUNK = 1 << 20

_SAS_SIGNATURE = re.compile(r"([?&]sig=)[^&\s\"']*")

NO_CREDENTIALS = (
    f"no Azure credentials in the environment; set {ENV_CONNECTION_STRING}, or "
    f"{ENV_ACCOUNT_URL} (or {ENV_ACCOUNT}) with {ENV_KEY} or {ENV_SAS}, or install "
    f"azure-identity and set {ENV_ACCOUNT_URL} to sign in with DefaultAzureCredential"
)


class _RedactSasSignature(logging.Filter):
    """Masks ``sig=...`` in urllib3's request lines (a SAS token travels in the query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "sig=" in message:
            record.msg, record.args = _SAS_SIGNATURE.sub(r"\1REDACTED", message), ()
        return True


def _redact_urllib3_logs() -> None:
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(type(f).__name__ == _RedactSasSignature.__name__ for f in logger.filters):
        logger.addFilter(_RedactSasSignature())


_redact_urllib3_logs()


@dataclass(frozen=True)
class BlobLocation:
    """Where ``az://CONTAINER/PREFIX`` points.

    Attributes:
        container: the container name.
        prefix: ``""`` or a blob-name prefix ending in ``/``.
    """

    container: str
    prefix: str

    @property
    def url(self) -> str:
        """``az://container/prefix`` (no trailing slash)."""
        return f"az://{self.container}/{self.prefix}".rstrip("/")


def parse_url(url: str) -> BlobLocation:
    """Split ``az://CONTAINER[/PREFIX]``; the prefix names a folder, never a partial file name."""
    if not url.startswith("az://"):
        raise LungsegError("expected az://CONTAINER/PREFIX", url)
    if "?" in url or "#" in url:
        # Do not echo the URL: a query string here is most likely a pasted SAS token.
        raise LungsegError(
            f"an az:// URL takes no query string; give a SAS token in {ENV_SAS} instead"
        )
    container, _, prefix = url[len("az://") :].partition("/")
    if not _CONTAINER_NAME.match(container):
        raise LungsegError(
            f"invalid container name {container!r}: 3-63 lowercase letters, digits and single "
            "hyphens (az://CONTAINER/PREFIX)",
            url,
        )
    prefix = prefix.strip("/")
    return BlobLocation(container, f"{prefix}/" if prefix else "")


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


@dataclass(frozen=True)
class _Blob:
    key: str
    name: str
    size: int
    etag: str
    md5: bytes | None


@dataclass
class _Account:
    """A connected account: the SDK client and what may be shown about it.

    Attributes:
        credential_from: the variable that held the credential (its name, never its value).
        endpoint_from: the variable that gave the endpoint.
    """

    service: BlobServiceClient
    credential_from: str
    endpoint_from: str

    @property
    def endpoint(self) -> str:
        # scheme + host (+ account path on the emulator); ``service.url`` would carry a SAS token.
        return f"{self.service.scheme}://{self.service.primary_hostname}"

    @property
    def name(self) -> str:
        return self.service.account_name or "?"


def _connect(workers: int) -> _Account:
    """The account named by the environment (see the module docstring for the order)."""
    options: dict[str, Any] = {
        "retry_policy": ExponentialRetry(**RETRY),
        "transport": _transport(workers),
    }
    failure = ""
    connection_string = os.environ.get(ENV_CONNECTION_STRING)
    if connection_string:
        try:
            service = BlobServiceClient.from_connection_string(connection_string, **options)
            return _Account(service, ENV_CONNECTION_STRING, ENV_CONNECTION_STRING)
        except ValueError:
            failure = (
                f"{ENV_CONNECTION_STRING} is malformed; expected 'AccountName=...;AccountKey=...' "
                "or 'BlobEndpoint=...;SharedAccessSignature=...'"
            )
        raise LungsegError(failure)
    account_url, endpoint_from = os.environ.get(ENV_ACCOUNT_URL), ENV_ACCOUNT_URL
    if not account_url and os.environ.get(ENV_ACCOUNT):
        account_url = f"https://{os.environ[ENV_ACCOUNT]}.blob.core.windows.net"
        endpoint_from = ENV_ACCOUNT
    if not account_url:
        raise LungsegError(NO_CREDENTIALS)
    credential: Any
    if os.environ.get(ENV_KEY):
        credential, credential_from = os.environ[ENV_KEY], ENV_KEY
    elif os.environ.get(ENV_SAS):
        from azure.core.credentials import AzureSasCredential

        credential, credential_from = AzureSasCredential(os.environ[ENV_SAS].lstrip("?")), ENV_SAS
    elif "sig=" in account_url:
        credential, credential_from = None, f"the SAS token in {ENV_ACCOUNT_URL}"
    else:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise LungsegError(
                f"{endpoint_from} is set but no credential: set {ENV_KEY} or {ENV_SAS}, or "
                "pip install azure-identity to sign in with DefaultAzureCredential (az login, "
                "managed identity)"
            ) from None
        credential, credential_from = DefaultAzureCredential(), "DefaultAzureCredential"
    try:
        service = BlobServiceClient(account_url, credential=credential, **options)
        return _Account(service, credential_from, endpoint_from)
    except ValueError:
        failure = (
            f"{endpoint_from} is not a valid URL; expected https://ACCOUNT.blob.core.windows.net"
        )
    raise LungsegError(failure)


def _transport(workers: int):
    """HTTP transport with one pooled connection per worker and short connect timeouts."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from urllib3.util.retry import Retry

    session = requests.Session()
    # Retries belong to the SDK's policy (with backoff); urllib3 must not retry behind its back.
    # A pool smaller than the thread count would log "connection pool is full" warnings.
    adapter = requests.adapters.HTTPAdapter(
        pool_maxsize=max(workers, 10),
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    for scheme in ("http://", "https://"):
        session.mount(scheme, adapter)
    return RequestsTransport(
        session=session, connection_timeout=CONNECTION_TIMEOUT_S, read_timeout=READ_TIMEOUT_S
    )


def _translate(exc: AzureError, account: _Account, location: BlobLocation, doing: str) -> str:
    """One line about an SDK error, built only from status, error code and our own names."""
    container = f"container {location.container!r}"
    where = f"{container} of account {account.name!r} at {account.endpoint}"
    if isinstance(exc, ServiceRequestError):
        return (
            f"cannot reach {account.endpoint} (connection refused, timed out or name not found; "
            f"retried) while {doing} {container}; check the endpoint in {account.endpoint_from} "
            "or the network"
        )
    if isinstance(exc, ServiceResponseError):
        return (
            f"the connection to {account.endpoint} broke while {doing} {container} (retried); "
            "run the command again"
        )
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    code = str(getattr(code, "value", code) or "")
    if isinstance(exc, ClientAuthenticationError) and status is None:
        return (
            f"could not sign requests to {where} with the credential from "
            f"{account.credential_from} (for a key: the base64 account key, as shown in the portal)"
        )
    if status in (401, 403):
        if code.startswith("Authorization") and code != "AuthorizationFailure":
            return (
                f"the credential from {account.credential_from} is not allowed to do this on "
                f"{where} ({code}); it needs read (and, to upload, write) access"
            )
        return (
            f"access denied to {where} ({code or status}): the credential from "
            f"{account.credential_from} was rejected; check the key or SAS token (and its expiry)"
        )
    if status == 404 and code == "ContainerNotFound":
        return f"{container} not found in account {account.name!r} at {account.endpoint}"
    if status == 404 and code == "BlobNotFound":
        return f"a blob was deleted while {doing} {container}; run the command again"
    if status == 412:
        return f"a blob changed while {doing} {container}; run the command again"
    if isinstance(exc, HttpResponseError):
        return f"Azure answered {status} {code} while {doing} {where}"
    return f"Azure error ({type(exc).__name__}) while {doing} {where}"


class AzureSource:
    """A dataset under ``az://CONTAINER/PREFIX``, read through a local content cache.

    Implements :class:`~lungseg.data.sources.DataSource`; keys are blob names relative to the
    prefix. The container is listed once per object (on first use).

    Args:
        location: container and prefix.
        cache_dir: content cache (default :func:`cache_root`).
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
        self._account = _connect(workers)
        self._container = self._account.service.get_container_client(location.container)
        self._cache = Path(cache_dir) if cache_dir is not None else cache_root()
        self._blobs: dict[str, _Blob] | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> AzureSource:
        """Open ``az://CONTAINER/PREFIX`` with credentials from the environment."""
        return cls(parse_url(url), **kwargs)

    def __repr__(self) -> str:
        return f"AzureSource({self.name!r})"

    def _call(self, doing: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except AzureError as exc:
            message = _translate(exc, self._account, self.location, doing)
        raise LungsegError(message, self.name)

    def _listing(self) -> dict[str, _Blob]:
        if self._blobs is None:
            prefix = self.location.prefix
            found = self._call(
                "listing",
                lambda: list(
                    self._container.list_blobs(
                        name_starts_with=prefix or None, include=["metadata"]
                    )
                ),
            )
            blobs = {}
            for b in found:
                # Folders of accounts with a hierarchical namespace are listed as empty blobs.
                if b.name.endswith("/") or (b.metadata or {}).get("hdi_isfolder") == "true":
                    continue
                md5 = b.content_settings.content_md5
                key = b.name[len(prefix) :]
                blobs[key] = _Blob(key, b.name, b.size, b.etag, bytes(md5) if md5 else None)
            if not blobs:
                raise LungsegError(self._nothing_found(), self.name)
            self._blobs = dict(sorted(blobs.items()))
        return self._blobs

    def _nothing_found(self) -> str:
        container = f"container {self.location.container!r}"
        if not self.location.prefix:
            return f"{container} is empty"
        top = self._call(
            "listing",
            lambda: list(itertools.islice((b.name for b in self._container.walk_blobs()), 6)),
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
        identity = "\n".join(
            (self._account.endpoint, self.location.container, blob.name, blob.etag)
        )
        digest = hashlib.sha256(identity.encode()).hexdigest()
        suffix = PurePosixPath(blob.name).suffix
        suffix = suffix.lower() if _SAFE_SUFFIX.match(suffix) else ""
        account = re.sub(r"[^A-Za-z0-9-]", "_", self._account.name)
        folder = self._cache / account / self.location.container / digest[:2]
        return folder / f"{digest}{suffix}"

    @staticmethod
    def _is_cached(blob: _Blob, path: Path) -> bool:
        try:
            return path.stat().st_size == blob.size
        except FileNotFoundError:
            return False

    def download(self, keys: Iterable[str]) -> TransferStats:
        """Make sure ``keys`` are in the local cache, fetching the missing ones in parallel.

        Raises:
            LungsegError: on the first file that cannot be fetched (after retries); the files
                completed before it stay in the cache.
        """
        start = time.perf_counter()
        wanted = [self._blob(k) for k in dict.fromkeys(keys)]
        missing = [b for b in wanted if not self._is_cached(b, self._cache_path(b))]
        done = nbytes = 0
        if missing:
            total = sum(b.size for b in missing)
            bar = _TransferBar(f"download {self.name}", len(missing), total, self.progress)
            pool = ThreadPoolExecutor(min(self.workers, len(missing)))
            failure: LungsegError | None = None
            try:
                futures = [pool.submit(self._fetch, b) for b in missing]
                with bar:
                    for future in as_completed(futures):
                        try:
                            size = future.result()
                        except LungsegError as exc:
                            failure = exc
                            break
                        done += 1
                        nbytes += size
                        bar.advance(size)
                    if failure is not None:
                        raise LungsegError(
                            f"{failure.problem}; the {done} of {len(missing)} files downloaded so "
                            "far are kept, so running again fetches only the rest",
                            failure.path,
                        )
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        stats = TransferStats(done, nbytes, len(wanted) - len(missing), time.perf_counter() - start)
        self.last_download = stats
        if self.progress and wanted and not missing:
            print(f"download {self.name}: all {len(wanted)} files already cached", file=sys.stderr)
        return stats

    def _fetch(self, blob: _Blob) -> int:
        path = self._cache_path(blob)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                md5 = self._call(f"downloading {blob.key} from", lambda: self._stream(blob, fh))
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
        return blob.size

    def _stream(self, blob: _Blob, fh) -> bytes:
        # The ETag condition makes a blob replaced mid-download fail (412) instead of mixing.
        downloader = self._container.download_blob(
            blob.name, etag=blob.etag, match_condition=MatchConditions.IfNotModified
        )
        md5 = hashlib.md5(usedforsecurity=False)
        for chunk in downloader.chunks():
            fh.write(chunk)
            md5.update(chunk)
        return md5.digest()


def upload(
    local_dir: str | Path,
    url: str,
    create_container: bool = False,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
) -> TransferStats:
    """Upload a dataset folder to ``az://CONTAINER/PREFIX``, keeping its layout.

    Files whose blob already has the same size and MD5 are skipped, so uploading again sends only
    what changed. Hidden files and folders (``.name``) are left out, as when reading a folder.
    Each blob gets its MD5 (``Content-MD5``) and content type.

    Args:
        local_dir: the dataset folder.
        url: ``az://CONTAINER/PREFIX``.
        create_container: create the container when it does not exist.
        workers: parallel uploads.
        progress: show a progress bar (or a summary line when stderr is not a terminal).

    Raises:
        LungsegError: a missing folder or container, rejected credentials, an unreachable
            endpoint (one line, naming the container).
    """
    start = time.perf_counter()
    if workers < 1:
        raise LungsegError(f"workers must be at least 1, got {workers}")
    location = parse_url(url)
    local = LocalSource(Path(local_dir))
    keys = local.list_keys()
    if not keys:
        raise LungsegError("no files to upload", local.root)
    account = _connect(workers)
    container = account.service.get_container_client(location.container)

    def call(doing: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except AzureError as exc:
            message = _translate(exc, account, location, doing)
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                message += "; pass --create-container to create it"
        raise LungsegError(message, location.url)

    if create_container:

        def create() -> None:
            try:
                container.create_container()
            except ResourceExistsError:
                pass

        call("creating", create)
    remote = {
        b.name: (b.size, bytes(b.content_settings.content_md5 or b""))
        for b in call(
            "listing",
            lambda: list(container.list_blobs(name_starts_with=location.prefix or None)),
        )
    }

    sizes = {k: (local.root / k).stat().st_size for k in keys}

    def send(key: str) -> bool:
        """Upload one file unless its blob is identical; True when it was sent."""
        path = local.root / key
        name = location.prefix + key
        md5 = _file_md5(path)
        if remote.get(name) == (sizes[key], md5):
            return False
        settings = ContentSettings(
            content_type=mimetypes.guess_type(key)[0] or "application/octet-stream",
            content_md5=bytearray(md5),
        )
        with open(path, "rb") as fh:
            call(
                f"uploading {key} to",
                lambda: container.upload_blob(
                    name, fh, length=sizes[key], overwrite=True, content_settings=settings
                ),
            )
        return True

    sent = nbytes = skipped = 0
    bar = _TransferBar(f"upload {location.url}", len(keys), sum(sizes.values()), progress)
    pool = ThreadPoolExecutor(min(workers, len(keys)))
    failure: LungsegError | None = None
    try:
        futures = {pool.submit(send, k): k for k in keys}
        with bar:
            for future in as_completed(futures):
                size = sizes[futures[future]]
                try:
                    was_sent = future.result()
                except LungsegError as exc:
                    failure = exc
                    break
                sent += was_sent
                nbytes += size if was_sent else 0
                skipped += not was_sent
                bar.advance(size, moved=was_sent)
            if failure is not None:
                raise LungsegError(
                    f"{failure.problem}; {sent} files were uploaded before, so running again "
                    "sends only the rest",
                    failure.path,
                )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return TransferStats(sent, nbytes, skipped, time.perf_counter() - start)


def _file_md5(path: Path) -> bytes:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            md5.update(chunk)
    return md5.digest()


class _TransferBar:
    """Files and bytes of a transfer on stderr: a rich bar on a terminal, one line otherwise.

    The bar moves by each file's size; the summary counts only the bytes that crossed the wire
    and the files that were already in place.
    """

    def __init__(self, description: str, files: int, nbytes: int, enabled: bool) -> None:
        self.description = description
        self.files = files
        self.nbytes = nbytes
        self.enabled = enabled
        self.done_files = 0
        self.moved_bytes = 0
        self.in_place = 0
        self._bar = None
        self._task = None

    def __enter__(self) -> _TransferBar:
        self._start = time.perf_counter()
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[files]}"),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self.description, total=self.nbytes, files=self._files_text()
            )
        return self

    def _files_text(self) -> str:
        return f"{self.done_files}/{self.files} files"

    def advance(self, nbytes: int, moved: bool = True) -> None:
        """One more file done: ``moved`` when it was transferred, not already in place."""
        self.done_files += 1
        if moved:
            self.moved_bytes += nbytes
        else:
            self.in_place += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes, files=self._files_text())

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self.enabled and exc_type is None:
            from rich.filesize import decimal

            elapsed = time.perf_counter() - self._start
            rate = decimal(int(self.moved_bytes / elapsed)) if elapsed > 0 else "-"
            note = f"; {self.in_place} already in place" if self.in_place else ""
            print(
                f"{self.description}: {self._files_text()}, {decimal(self.moved_bytes)} "
                f"in {elapsed:.1f}s ({rate}/s){note}",
                file=sys.stderr,
            )
