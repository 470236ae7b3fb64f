"""A small DICOMweb client (PS3.18): QIDO-RS to find instances, WADO-RS to fetch one, STOW-RS to
store results. Standard library only (``urllib``), so it needs no extra.

URLs: ``dicomweb://HOST[:PORT]/PATH?FILTERS`` (plain HTTP, for a PACS on a hospital's internal
network) or ``dicomwebs://...`` (HTTPS); ``PATH`` is the DICOMweb root (Orthanc's is
``/dicom-web``), ``FILTERS`` are QIDO-RS matching keys (``StudyDate=20240101-20240131``,
``Modality=CR``). A bearer token is read from :data:`TOKEN_ENV` and never printed or logged.
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lungseg.core.errors import LungsegError

#: The environment variable that holds the DICOMweb bearer token.
TOKEN_ENV = "LUNGSEG_DICOMWEB_TOKEN"
#: URL schemes of a DICOMweb input and the HTTP scheme each stands for.
SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
#: Instances per QIDO-RS page: the listing streams, a page at a time.
PAGE = 500
_TAGS = {"study": "0020000D", "series": "0020000E", "sop": "00080018"}


class DicomWebError(Exception):
    """A request failed (server down, refused, timed out); the message names no secret."""


@dataclass(frozen=True)
class InstanceRef:
    """One instance found by QIDO-RS."""

    study: str
    series: str
    sop: str


def parse_url(text: str) -> tuple[str, dict[str, str]]:
    """``dicomweb://HOST:PORT/PATH?FILTERS`` -> (``http://HOST:PORT/PATH``, filters).

    An ``http(s)://`` URL is taken as the root as it is (``--stow``).
    """
    parts = urllib.parse.urlsplit(text)
    scheme = SCHEMES.get(parts.scheme, parts.scheme if parts.scheme in ("http", "https") else "")
    if not scheme or not parts.netloc:
        raise LungsegError("expected dicomweb://HOST:PORT/PATH?FILTERS (or dicomwebs://)", text)
    root = urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return root, dict(urllib.parse.parse_qsl(parts.query))


class DicomWebClient:
    """Requests to one DICOMweb root.

    Args:
        root: ``http(s)://HOST:PORT/PATH``.
        timeout_s: per request.
    """

    def __init__(self, root: str, timeout_s: float = 60.0) -> None:
        self.root = root.rstrip("/")
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return self.root

    def _request(self, method: str, path: str, body: bytes | None = None, headers=None):
        headers = dict(headers or {})
        token = os.environ.get(TOKEN_ENV)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.root + path, data=body, headers=headers,
                                         method=method)  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as exc:
            hint = " (check $LUNGSEG_DICOMWEB_TOKEN)" if exc.code in (401, 403) else ""
            raise DicomWebError(f"{method} {self.root}{path.split('?')[0]}: HTTP {exc.code}"
                                f"{hint}") from None  # fmt: skip
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DicomWebError(f"{self.root} unreachable ({reason})") from None

    def instances(self, filters: dict[str, str]) -> Iterator[InstanceRef]:
        """QIDO-RS ``/instances`` matching ``filters``, a page at a time, in the server's order
        (stable for an unchanged archive)."""
        offset = 0
        while True:
            query = urllib.parse.urlencode({**filters, "limit": PAGE, "offset": offset},
                                           safe="*,^")  # fmt: skip
            _, data = self._request("GET", f"/instances?{query}",
                                    headers={"Accept": "application/dicom+json"})  # fmt: skip
            page = json.loads(data) if data.strip() else []
            for match in page:
                values = {k: (match.get(t, {}).get("Value") or [""])[0] for k, t in _TAGS.items()}
                if all(values.values()):
                    yield InstanceRef(**values)
            if len(page) < PAGE:
                return
            offset += len(page)

    def retrieve(self, ref: InstanceRef) -> bytes:
        """WADO-RS: one instance's DICOM file, as stored (no transcoding asked)."""
        path = f"/studies/{ref.study}/series/{ref.series}/instances/{ref.sop}"
        kind, data = self._request(
            "GET", path, headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        parts = multipart_parts(kind, data)
        if len(parts) != 1:
            raise DicomWebError(f"WADO-RS {path}: {len(parts)} parts, expected 1")
        return parts[0]

    def store(self, files: Sequence[bytes]) -> None:
        """STOW-RS: store DICOM files in one request.

        Raises:
            DicomWebError: unreachable, refused, or some instance not stored.
        """
        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        for data in files:
            body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            body.write(data)
            body.write(b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        _, answer = self._request("POST", "/studies", body.getvalue(), headers)
        # A 200 may still list instances the server refused (FailedSOPSequence, 00081198).
        if answer.strip() and json.loads(answer).get("00081198", {}).get("Value"):
            raise DicomWebError(f"STOW-RS to {self.root}: some instances were refused")


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a ``multipart/related`` body (PS3.18 8.6.1.2)."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
    boundary = params.get("boundary", "").strip('"')
    if not boundary:
        raise DicomWebError(f"not a multipart answer ({content_type.split(';')[0]})")
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts
