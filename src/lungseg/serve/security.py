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

import hmac
import logging
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
_ROUTES = {"/", "/healthz", "/readyz", "/v1/segment", "/v1/models", "/docs", "/openapi.json"}
_FOLDERS = ("/static/", "/static-offline-docs/")


def logged_path(path: str) -> str:
    if path in _ROUTES:
        return path
    return next((f"{folder}..." for folder in _FOLDERS if path.startswith(folder)), "-")


class AccessLog:
    """Pure ASGI middleware: the access line and the common security headers."""

    def __init__(self, app) -> None:
        self.app = app

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
            access.info(
                "%s %s %s %d in=%s out=%d %.1fms",
                client[0],
                scope["method"],
                logged_path(scope["path"]),
                status,
                declared if declared.isdigit() else "-",
                sent,
                (time.perf_counter() - start) * 1000,
            )
