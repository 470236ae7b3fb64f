"""A real Orthanc PACS for the tests: Debian's ``orthanc`` with its DICOMweb plugin
(``orthanc-dicomweb``), started on free ports of 127.0.0.1 from a temporary folder.

:func:`start` writes a configuration of its own (nothing of ``/etc/orthanc`` is read), runs
``Orthanc cfg.json``, waits until the REST API, the DICOMweb plugin and the DICOM port answer, and
stops it at the end (SIGTERM, then SIGKILL). Orthanc binds to every interface, so the
configuration restricts who may talk to it: HTTP only from loopback (``RemoteAccessAllowed``
false, hence no authentication), DICOM only from the modalities it is told about (called AE title
checked, host checked, no echo or store from strangers). What a test needs of a PACS goes through
:class:`Orthanc`: STOW-RS, QIDO-RS, WADO-RS, the modalities of its REST API and routing to them
(``/modalities/X/store``), and stop/start for "PACS down" tests.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lungseg.storage.dicomweb import multipart_parts

#: Where Debian's packages put the server and the plugin.
BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: AE title of the test PACS.
AET = "ORTHANC"
_BOUNDARY = "lungsegOrthancTestBoundary"


def orthanc_missing() -> str | None:
    """Why a real Orthanc cannot run here, or None."""
    if _binary() is None:
        return "Orthanc not found (apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} not found (apt-get install orthanc-dicomweb)"
    return None


def _binary() -> str | None:
    # Debian installs it in /usr/sbin, which a user's PATH often lacks.
    return shutil.which(BINARY) or shutil.which(BINARY, path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OrthancError(RuntimeError):
    """Orthanc answered a request with an error status, or did not start."""


class Orthanc:
    """One Orthanc server: its process, ports and the requests the tests send it.

    Attributes:
        folder: its configuration, storage, index and log.
        http_port, dicom_port: its ports on 127.0.0.1.
        aet: its AE title.
    """

    def __init__(self, folder: Path, config: dict | None = None, aet: str = AET):
        self.folder = folder
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.log = folder / "orthanc.log"
        self.process: subprocess.Popen | None = None
        self.config = {
            "Name": "lungseg-test-pacs",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "HttpPort": self.http_port,
            # Only 127.0.0.1 may use the REST API, so it needs no password.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": {},
            # Modalities added through the REST API persist across a restart, as in a real PACS.
            "DicomModalitiesInDatabase": True,
            "DicomScpTimeout": 10,
            "DicomAssociationCloseDelay": 0,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            # A deterministic result sent again replaces the stored one (as lungseg's node says).
            "OverwriteInstances": True,
            "StableAge": 2,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 8,
            "DicomThreadsCount": 2,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            **(config or {}),
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS), without a trailing slash."""
        return f"{self.url}/dicom-web"

    # --- process -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until it answers; returns the seconds it took."""
        binary = _binary()
        if binary is None:
            raise OrthancError(orthanc_missing())
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "cfg.json"
        config.write_text(json.dumps(self.config, indent=2))
        t0 = time.perf_counter()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [binary, str(config)], cwd=self.folder, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready(t0, timeout)
        except BaseException:
            self.kill()
            raise
        return time.perf_counter() - t0

    def _wait_ready(self, t0: float, timeout: float) -> None:
        while time.perf_counter() - t0 < timeout:
            if self.process.poll() is not None:
                raise OrthancError(f"Orthanc exited ({self.process.returncode}): {self.tail()}")
            try:
                status, _, body = self.request("GET", "/plugins", timeout=2)
                if status == 200 and "dicom-web" in json.loads(body) and self._dicom_listens():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise OrthancError(f"Orthanc not ready after {timeout:.0f} s: {self.tail()}")

    def _dicom_listens(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.dicom_port)) == 0

    def stop(self, timeout: float = 20.0) -> None:
        """Stop it as a service manager would (SIGTERM), killing it when it hangs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> float:
        """Stop and start on the same ports with the same storage; returns the start's seconds."""
        self.stop()
        return self.start()

    def tail(self, chars: int = 3000) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    # --- REST --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)`` of one HTTP request to ``path`` (from the server root)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def rest(self, method: str, path: str, payload=None):
        """JSON of a REST call that must succeed (``payload`` sent as JSON)."""
        body = None if payload is None else json.dumps(payload).encode()
        status, _, data = self.request(method, path, body)
        if status >= 400:
            raise OrthancError(f"{method} {path}: HTTP {status} {data[:500]!r}")
        return json.loads(data) if data.strip() else None

    def clear(self) -> None:
        """Delete every patient (and so every study, series and instance)."""
        for patient in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{patient}")

    def upload(self, data: bytes) -> dict:
        """Store one file through the REST API (``POST /instances``)."""
        status, _, body = self.request("POST", "/instances", data)
        if status >= 400:
            raise OrthancError(f"POST /instances: HTTP {status} {body[:500]!r}")
        return json.loads(body)

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1", **allow):
        """Declare a DICOM node (``PUT /modalities/NAME``): Orthanc accepts associations from it
        and can send to it. ``allow``: ``AllowEcho``, ``AllowStore``... (default: echo and
        store allowed, nothing else)."""
        flags = {"AllowEcho": True, "AllowStore": True, "AllowFind": False, "AllowMove": False,
                 "AllowGet": False, **allow}  # fmt: skip
        self.rest("PUT", f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port, **flags})

    def remove_modality(self, name: str) -> None:
        self.rest("DELETE", f"/modalities/{name}")

    def echo(self, modality: str) -> bool:
        """Whether the node answers Orthanc's C-ECHO."""
        status, _, _ = self.request("POST", f"/modalities/{modality}/echo", b"{}")
        return status == 200

    def store_to(self, modality: str, resources: Iterable[str], timeout: float = 60) -> dict:
        """Send studies, series or instances (Orthanc IDs) to a node by C-STORE, synchronously:
        what a PACS router does. Raises OrthancError when the node refuses or is down."""
        payload = {"Resources": list(resources), "Synchronous": True, "Timeout": int(timeout)}
        return self.rest("POST", f"/modalities/{modality}/store", payload)

    # --- DICOMweb ------------------------------------------------------------------------------

    def stow(self, files: Iterable[bytes], study: str | None = None) -> dict:
        """STOW-RS: store DICOM files (bytes) in one multipart request; the response's JSON.

        Raises:
            OrthancError: an instance was refused (FailedSOPSequence) or the request failed.
        """
        parts = b"".join(
            f"--{_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
            for data in files
        )
        body = parts + f"--{_BOUNDARY}--\r\n".encode()
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}',
            "Accept": "application/dicom+json",
        }
        path = "/dicom-web/studies" + (f"/{study}" if study else "")
        status, _, data = self.request("POST", path, body, headers)
        answer = json.loads(data) if data.strip() else {}
        if status >= 400 or answer.get("00081198", {}).get("Value"):
            raise OrthancError(f"STOW-RS: HTTP {status}, {json.dumps(answer)[:800]}")
        return answer

    def qido(
        self,
        level: str = "studies",
        study: str | None = None,
        series: str | None = None,
        **filters: str,
    ) -> list[dict]:
        """QIDO-RS: ``studies``, ``series`` or ``instances`` (within ``study``/``series`` when
        given) matching ``filters`` (``Modality="SEG"``, ``PatientID="..."``, ``includefield``,
        ``limit``...), as DICOM JSON objects."""
        path = "/dicom-web"
        if study:
            path += f"/studies/{study}"
        if series:
            path += f"/series/{series}"
        path += f"/{level}"
        if filters:
            # Orthanc 1.10 does not decode %2A: wildcards (and lists, names) go unescaped.
            path += "?" + urllib.parse.urlencode(filters, safe="*,^")
        status, _, data = self.request("GET", path, headers={"Accept": "application/dicom+json"})
        if status >= 400:
            raise OrthancError(f"QIDO-RS {path}: HTTP {status} {data[:300]!r}")
        return json.loads(data) if data.strip() else []

    def wado(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[bytes]:
        """WADO-RS: the DICOM files of a study, series or instance."""
        path = f"/dicom-web/studies/{study}"
        if series:
            path += f"/series/{series}"
        if instance:
            path += f"/instances/{instance}"
        accept = 'multipart/related; type="application/dicom"'
        status, headers, data = self.request("GET", path, headers={"Accept": accept})
        if status >= 400:
            raise OrthancError(f"WADO-RS {path}: HTTP {status} {data[:300]!r}")
        return multipart_parts(headers.get("content-type", ""), data)

    def metadata(self, study: str, series: str | None = None) -> list[dict]:
        """WADO-RS metadata (what a viewer reads first) of a study or series."""
        path = f"/dicom-web/studies/{study}" + (f"/series/{series}" if series else "")
        status, _, data = self.request(
            "GET", path + "/metadata", headers={"Accept": "application/dicom+json"}
        )
        if status >= 400:
            raise OrthancError(f"WADO-RS {path}/metadata: HTTP {status} {data[:300]!r}")
        return json.loads(data)


def value(item: dict, tag: str):
    """The first value of ``tag`` (8 hex digits) in a DICOM JSON object, or None."""
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


@contextmanager
def start(folder: Path, config: dict | None = None) -> Iterator[Orthanc]:
    """A running Orthanc in ``folder``, stopped on exit (killed when it does not stop)."""
    server = Orthanc(folder, config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
