"""A real ``lungseg serve`` process on 127.0.0.1 for the tests, and a headless Chromium; what
the tests send it (multipart bodies, DICOM files with patient tags).

:func:`start` runs the command line in a subprocess on a free port and waits for ``/readyz``;
its log goes to a file the tests read (what the service logs matters as much as what it answers).
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from browser import chromium, chromium_missing  # noqa: F401 (the page tests' imports)
from trained import lungseg

#: The main test server's settings: small enough limits to test them cheaply.
MAX_UPLOAD_MB = 2
TIMEOUT_S = 5
#: (row, col) pixel spacing in mm of the DICOM files.
SPACING = (0.15, 0.2)


@dataclass
class Server:
    """A running service."""

    process: subprocess.Popen
    port: int
    log: Path
    ready_s: float
    tls: ssl.SSLContext | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)`` of one request on a new connection."""
        if self.tls is not None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60, context=self.tls)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: bytes | None = None, **headers: str):
        status, _, data = self.request(method, path, body, headers)
        return status, json.loads(data)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as fh:
            line = next(line for line in fh if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def start(
    args: list[str],
    folder: Path,
    env: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
    open_files: int | None = None,
) -> Iterator[Server]:
    """``lungseg serve ARGS`` on a free port of 127.0.0.1; stopped (SIGTERM) on exit.

    Args:
        tls: the client side of HTTPS (a service started with ``--ssl-certfile``).
        open_files: the service's open-files limit (``ulimit -n``), for the hostile tests.
    """
    port = free_port()
    log = folder / f"server-{port}.log"
    # The service's key comes from ``env`` only, never from the shell that runs the tests.
    environment = {k: v for k, v in os.environ.items() if k != "LUNGSEG_API_KEY"}
    environment.update(env or {})
    command = [sys.executable, "-m", "lungseg", "serve", "--port", str(port), *args]
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            preexec_fn=None if open_files is None else lambda: _limit_files(open_files),
        )
    server = Server(process, port, log, 0.0, tls)
    try:
        server.ready_s = _wait_ready(server, t0)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _limit_files(count: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def _wait_ready(server: Server, t0: float, limit: float = 120.0) -> float:
    while time.perf_counter() - t0 < limit:
        if server.process.poll() is not None:
            raise RuntimeError(f"lungseg serve exited: {server.log.read_text()[-3000:]}")
        try:
            if server.request("GET", "/readyz")[0] == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"lungseg serve not ready after {limit:.0f} s: {server.log.read_text()}")


#: Patient tags written into the test DICOM files: they must never reach a log or a response.
PATIENT = {"PatientName": "DOE^JANE", "PatientID": "MRN-884422"}


def with_patient(data: bytes) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart(data: bytes, filename: str, field: str = "file") -> tuple[bytes, str]:
    """``(body, content type)`` of a multipart/form-data upload, as a browser form sends it."""
    boundary = "lungsegTestBoundary7MA4YWxk"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def png_mask(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def segment_rows(inputs: list[Path], source: list[str], out: Path, capsys) -> dict[str, dict]:
    """``lungseg segment`` on ``inputs``: ``{file stem: measurements row + its mask}``."""
    argv = ["segment", *inputs, "--out", out, *source, "--device", "cpu"]
    code, _, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    with open(out / "measurements.csv", newline="") as fh:
        rows = {Path(row["file"]).stem: row for row in csv.DictReader(fh)}
    for row in rows.values():
        row["mask"] = cv2.imread(str(out / row["mask"]), cv2.IMREAD_GRAYSCALE)
    return rows
