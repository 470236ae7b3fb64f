"""OHIF, the web viewer hospitals and researchers open DICOM SEGs in, served for the tests: the
prebuilt ``dist/`` of npm's ``@ohif/app`` (``make ohif`` fetches it into ``.cache/``), with one
origin for the viewer and the PACS: ``/dicom-web`` is passed through to Orthanc's DICOMweb, so
the browser needs no CORS and OHIF reads what a hospital's reverse proxy would give it.

:func:`serve` runs a small threaded HTTP server on a free port of 127.0.0.1: static files of
``dist/``, an ``app-config.js`` whose only data source is that ``/dicom-web``, and index.html for
every other path (OHIF routes in the browser: ``/viewer?StudyInstanceUIDs=...``).
"""

from __future__ import annotations

import http.client
import mimetypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from browser import chromium as browser_chromium
from browser import chromium_missing  # noqa: F401 (the OHIF test's import)

REPO = Path(__file__).resolve().parents[1]
VERSION = "3.13.2"
#: Where ``make ohif`` puts the viewer; ``LUNGSEG_OHIF_DIST`` points elsewhere.
DIST = Path(os.environ.get("LUNGSEG_OHIF_DIST", REPO / ".cache" / f"ohif-app-{VERSION}" / "dist"))
_TYPES = {".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css",
          ".json": "application/json", ".svg": "image/svg+xml", ".woff2": "font/woff2",
          ".html": "text/html; charset=utf-8"}  # fmt: skip
#: Headers that belong to one connection and are not passed through the proxy.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authorization", "proxy-authenticate", "content-length"}  # fmt: skip

#: OHIF's configuration: one DICOMweb data source at this origin's ``/dicom-web`` (the format of
#: dist/app-config.js). Orthanc answers QIDO with includefield and wildcards; a SEG is opened
#: without the "track this series?" and "load this segmentation?" prompts a person would click,
#: and the first visit's tour (which covers the viewport) counts as seen.
APP_CONFIG = """localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  disableConfirmationPrompts: true,
  measurementTrackingMode: 'none',
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (lungseg tests)',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        stowRoot: '/dicom-web',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        dicomUploadEnabled: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def ohif_missing() -> str | None:
    """Why OHIF cannot be served here, or None."""
    if not (DIST / "index.html").is_file():
        return f"OHIF {VERSION} not found at {DIST} (make ohif)"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        # Requests are counted (``server.requests``), not printed into the test's output.
        self.server.requests.append(f"{self.command} {self.path}")

    def do_GET(self) -> None:
        if self.path.startswith("/dicom-web"):
            self._proxy()
        elif self.path.split("?")[0] == "/app-config.js":
            self._send(200, APP_CONFIG.encode(), _TYPES[".js"])
        else:
            self._static()

    def do_POST(self) -> None:
        if self.path.startswith("/dicom-web"):
            self._proxy()
        else:
            self._send(405, b"", "text/plain")

    def _static(self) -> None:
        relative = self.path.split("?")[0].lstrip("/")
        path = (DIST / relative).resolve()
        if not path.is_file() or DIST.resolve() not in path.parents:
            path = DIST / "index.html"  # the viewer's own routes
        kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        self._send(200, path.read_bytes(), kind or "application/octet-stream")

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        # Orthanc writes the URLs in its answers (BulkDataURI, RetrieveURL) from the Host header:
        # kept as the browser sent it, they point back through this proxy.
        conn = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            passed = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP]
        except OSError as exc:
            self._send(502, f"Orthanc: {exc}".encode(), "text/plain")
            return
        finally:
            conn.close()
        if response.status >= 400:
            self.server.refused.append(
                f"{response.status} {self.command} {self.path}: {data[:300]!r}"
            )
        self.send_response(response.status)
        for key, value in passed:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, status: int, data: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, orthanc_port: int):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.orthanc_port = orthanc_port
        self.requests: list[str] = []
        #: What Orthanc refused (status >= 400): often the reason OHIF shows nothing.
        self.refused: list[str] = []


@contextmanager
def serve(orthanc_port: int) -> Iterator[_Server]:
    """OHIF on a free port of 127.0.0.1 (``server.server_port``), reading the Orthanc whose HTTP
    port is ``orthanc_port``; stopped on exit."""
    server = _Server(orthanc_port)
    thread = threading.Thread(target=server.serve_forever, name="ohif", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 900):
    """Headless Chromium that can run OHIF: WebGL on SwiftShader, the console kept at every
    level (:func:`browser.chromium`)."""
    with browser_chromium(profile, width, height, webgl=True, console=True) as driver:
        yield driver
