"""What keeps patient data and the API key out of logs and responses.

* :class:`AccessLog` writes one line per request: client address, method, route, status, bytes
  in and out, milliseconds. Never the query string, headers, file names or image content, so
  neither the API key nor anything a client sends can reach the log.
* :func:`api_key_matches` compares keys in constant time.
* :func:`log_failure` logs an unexpected error as its type and the code locations it passed,
  not its message: a decoder's message may quote DICOM tags (patient data).
* Every response says ``nosniff``, ``no-referrer`` and may not be framed; the page gets a
  content security policy that lets it load nothing from anywhere but this server.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import time
import traceback
from pathlib import Path

access = logging.getLogger("lungseg.serve.access")
log = logging.getLogger("lungseg.serve")

#: The page's content security policy: scripts, styles and connections to this server only;
#: images also from blob: and data: URLs (the X-ray and mask drawn in the browser).
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def api_key_matches(given: str, expected: str) -> bool:
    """``given == expected`` in time that does not depend on where they differ."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def log_failure(exc: BaseException) -> None:
    """Log an unexpected error by type and location only (see the module docstring)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1])
    log.error("internal error %s at %s", type(exc).__name__, where or "?")


#: Paths logged as they are; a static file as its folder, any other path as "-" (a client
#: chooses it: it may hold text that must not reach a log).
_ROUTES = {
    "/", "/healthz", "/readyz", "/metrics", "/v1/segment", "/v1/models", "/docs", "/openapi.json"
}  # fmt: skip
_FOLDERS = ("/static/", "/static-offline-docs/")


def logged_path(path: str) -> str:
    if path in _ROUTES:
        return path
    return next((f"{folder}..." for folder in _FOLDERS if path.startswith(folder)), "-")


class KeyFailures:
    """Wrong API keys per client address: after :attr:`limit` within :attr:`window` seconds,
    the client is refused (429) until the oldest of them is that old, so a key cannot be
    guessed at the rate the service answers. Bounded: at most :attr:`clients` addresses kept."""

    limit = 10
    window = 60.0
    clients = 4096

    def __init__(self) -> None:
        self._failures: dict[str, collections.deque[float]] = {}

    def _recent(self, client: str) -> collections.deque[float]:
        times = self._failures.get(client, collections.deque())
        now = time.monotonic()
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try a key again (0: now)."""
        times = self._recent(client)
        if len(times) < self.limit:
            return 0
        return max(1, math.ceil(self.window - (time.monotonic() - times[0])))

    def failed(self, client: str) -> None:
        times = self._recent(client)
        times.append(time.monotonic())
        self._failures.pop(client, None)
        if len(self._failures) >= self.clients:
            self._failures.pop(next(iter(self._failures)))
        self._failures[client] = times


class AccessLog:
    """Pure ASGI middleware: the access line, the common security headers, and the request
    counters of ``/metrics``."""

    def __init__(self, app, metrics=None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        sent = 0

        async def send_wrapper(message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = list(message.get("headers", [])) + _HEADERS
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            declared = dict(scope.get("headers", [])).get(b"content-length", b"-").decode()
            client = scope.get("client") or ("-", 0)
            seconds = time.perf_counter() - start
            route = logged_path(scope["path"])
            if self.metrics is not None:
                self.metrics.request(scope["method"], route, status, seconds)
            access.info(
                "%s %s %s %d in=%s out=%d %.1fms",
                client[0],
                scope["method"],
                route,
                status,
                declared if declared.isdigit() else "-",
                sent,
                seconds * 1000,
            )


#: ``/docs`` (Swagger UI from the package): its inline start-up script is allowed by its hash,
#: computed from the page itself (:func:`docs_policy`); Swagger UI sets inline styles.
_DOCS_POLICY = (
    "default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def docs_policy(html: bytes) -> str:
    """The content security policy of the documentation page ``html``."""
    scripts = re.findall(rb"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'" for body in scripts
    )
    return _DOCS_POLICY.format(hashes=hashes)


def host_allowed(host: str, allowed: frozenset[str] | None) -> bool:
    """A ``Host`` header this service answers to. A name must be on ``allowed`` (None: any):
    a web page whose domain an attacker re-points at 127.0.0.1 (DNS rebinding) sends its own
    name. An IP address cannot be re-pointed, so any is accepted."""
    if allowed is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):
        name = name.split("]")[0] + "]"
    elif name.count(":") == 1:
        name = name.split(":")[0]
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return name in allowed


def allowed_hosts(names: tuple[str, ...], bound: str) -> frozenset[str] | None:
    """The ``Host`` names to accept: this machine's loopback names, the bound address and
    ``names`` (``*`` in them: any)."""
    if "*" in names:
        return None
    return frozenset(n.lower() for n in (*_LOCAL_NAMES, bound, *names))


class Guard:
    """Pure ASGI middleware in front of the routes: refuses a ``Host`` not on the list and a
    ``POST`` from a browser page on another origin that ``--cors-origin`` does not name; puts a
    content security policy on ``/docs``."""

    def __init__(self, app, hosts: frozenset[str] | None, origins: tuple[str, ...]) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(origins)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not host_allowed(host, self.hosts):
            await _refuse(send, 400, "Host not allowed; start the service with --allowed-host NAME")
            return
        origin = headers.get("origin")
        if scope["method"] == "POST" and origin and origin not in self.origins:
            scheme = scope.get("scheme", "http")
            if origin.lower() != f"{scheme}://{host}".lower():
                await _refuse(send, 403, "cross-origin request; allow the origin: --cors-origin")
                return
        if scope["path"] == "/docs":
            await self._docs(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _docs(self, scope, receive, send) -> None:
        start: dict = {}
        body = bytearray()

        async def buffered(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            headers = [h for h in start.get("headers", []) if h[0].lower() != b"content-length"]
            headers += [
                (b"content-length", str(len(body)).encode()),
                (b"content-security-policy", docs_policy(bytes(body)).encode()),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": bytes(body)})

        await self.app(scope, receive, buffered)


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
