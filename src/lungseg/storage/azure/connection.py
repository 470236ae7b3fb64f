"""Reaching a container: credentials, the SDK client, retries, and errors users can read.

Credentials come from the environment only, tried in this order:

1. ``AZURE_STORAGE_CONNECTION_STRING``;
2. ``AZURE_STORAGE_ACCOUNT_URL`` (or ``AZURE_STORAGE_ACCOUNT``, the account name) with
   ``AZURE_STORAGE_KEY`` or ``AZURE_STORAGE_SAS_TOKEN``;
3. ``AZURE_STORAGE_ACCOUNT_URL`` alone: ``DefaultAzureCredential`` (``az login``, managed
   identity, ...) when ``azure-identity`` is installed.

They are never printed, logged or written anywhere: errors name the container, the endpoint and
the *name* of the variable that held the credential, never its value. :meth:`Container.call`
translates an SDK error into one :class:`~lungseg.core.errors.LungsegError` line and raises it
outside the ``except`` block, so the SDK exception (whose text can hold request URLs with a SAS
signature) is not even kept as context. The SDK's own HTTP logging stays as the SDK sets it (it
redacts ``Authorization`` and ``sig``); we never turn on ``logging_enable``, which would log raw
headers. urllib3 logs every request path at DEBUG, query string included, so a filter on its logger
masks SAS signatures there.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry

from lungseg.core.errors import LungsegError

T = TypeVar("T")

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

NO_CREDENTIALS = (
    f"no Azure credentials in the environment; set {ENV_CONNECTION_STRING}, or "
    f"{ENV_ACCOUNT_URL} (or {ENV_ACCOUNT}) with {ENV_KEY} or {ENV_SAS}, or install "
    f"azure-identity and set {ENV_ACCOUNT_URL} to sign in with DefaultAzureCredential"
)

_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
_SAS_SIGNATURE = re.compile(r"([?&]sig=)[^&\s\"']*")


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


@dataclass
class Account:
    """A connected account: the SDK client and what may be shown about it.

    Attributes:
        service: the SDK client.
        credential_from: the variable that held the credential (its name, never its value).
        endpoint_from: the variable that gave the endpoint.
    """

    service: BlobServiceClient
    credential_from: str
    endpoint_from: str

    @property
    def endpoint(self) -> str:
        """Scheme and host (and account path on the emulator); ``service.url`` could hold a SAS."""
        return f"{self.service.scheme}://{self.service.primary_hostname}"

    @property
    def name(self) -> str:
        """The account name (``?`` when the SDK cannot tell)."""
        return self.service.account_name or "?"


def connect(workers: int) -> Account:
    """The account named by the environment (see the module docstring for the order).

    Args:
        workers: threads that will share the client (sizes its connection pool).

    Raises:
        LungsegError: no credentials, or a malformed connection string or account URL.
    """
    options: dict[str, Any] = {
        "retry_policy": ExponentialRetry(**RETRY),
        "transport": _transport(workers),
    }
    failure = ""
    connection_string = os.environ.get(ENV_CONNECTION_STRING)
    if connection_string:
        try:
            service = BlobServiceClient.from_connection_string(connection_string, **options)
            return Account(service, ENV_CONNECTION_STRING, ENV_CONNECTION_STRING)
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
        return Account(service, credential_from, endpoint_from)
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


@dataclass
class Container:
    """One container of a connected account, and the one way to call the SDK on it.

    Attributes:
        account: the connected account.
        location: the container and prefix, as the user named them.
        client: the SDK's client for the container.
        if_missing: appended to the error when the container does not exist (how to create it).
    """

    account: Account
    location: BlobLocation
    client: ContainerClient
    if_missing: str = ""

    @classmethod
    def open(cls, location: BlobLocation, workers: int, if_missing: str = "") -> Container:
        """Connect with the environment's credentials (nothing is sent before the first call)."""
        account = connect(workers)
        client = account.service.get_container_client(location.container)
        return cls(account, location, client, if_missing)

    def call(self, doing: str, fn: Callable[[], T]) -> T:
        """``fn()``, with an SDK error turned into one line naming ``location.url``.

        Args:
            doing: what ``fn`` does, to complete "while DOING container 'c'" (``listing``,
                ``uploading x.png to``).
            fn: the SDK call.
        """
        try:
            return fn()
        except AzureError as exc:
            message = _translate(exc, self.account, self.location, doing)
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                message += self.if_missing
            status = getattr(exc, "status_code", None)
            code = str(getattr(exc, "error_code", None) or "")
            gone = status == 412 or (status == 404 and code.endswith("BlobNotFound"))
        raise (BlobGone if gone else LungsegError)(message, self.location.url)


class BlobGone(LungsegError):
    """A blob was deleted or replaced since it was listed (404 or a failed ETag condition)."""


def _translate(exc: AzureError, account: Account, location: BlobLocation, doing: str) -> str:
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
