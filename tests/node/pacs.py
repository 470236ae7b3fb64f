"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) as the PACS of the node's tests:
started on 127.0.0.1 in a temp folder, reached by REST, DICOMweb and DICOM."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process; :meth:`stop` and :meth:`start` keep its database (a PACS that
    goes down and comes back)."""

    AE = "ORTHANC"

    def __init__(self, root: Path) -> None:
        if shutil.which("Orthanc") is None or not DICOMWEB_PLUGIN.exists():
            pytest.skip("Orthanc with its DICOMweb plugin not installed (apt-get install "
                        "orthanc orthanc-dicomweb)")  # fmt: skip
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        config = {
            "Name": "lungseg-test", "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": self.AE, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
            "DicomScuTimeout": 10, "StableAge": 1, "SaveJobs": False,
        }  # fmt: skip
        (root / "orthanc.json").write_text(json.dumps(config))
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.root / "orthanc.log", "ab")
        self.process = subprocess.Popen(
            ["Orthanc", str(self.root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError((self.root / "orthanc.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start in 30 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 60):
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers or {})  # fmt: skip
        with urllib.request.urlopen(req, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def get(self, path: str):
        return self.request("GET", path)

    def upload(self, data: bytes) -> str:
        """Store a DICOM file through REST; its Orthanc instance id."""
        return self.request("POST", "/instances", data)["ID"]

    def add_modality(self, name: str, ae: str, port: int) -> None:
        self.request("PUT", f"/modalities/{name}", {"AET": ae, "Host": "127.0.0.1", "Port": port})

    def route(self, modality: str, resources: list[str]) -> dict:
        """What a PACS router does: C-STORE ``resources`` to ``modality`` (waits for it)."""
        return self.request("POST", f"/modalities/{modality}/store",
                            {"Resources": resources, "Synchronous": True})  # fmt: skip

    def qido(self, query: str) -> list[dict]:
        """QIDO-RS ``/instances?{query}``: DICOM JSON of the matches."""
        answer = self.request("GET", f"/dicom-web/instances?{query}",
                              headers={"Accept": "application/dicom+json"})  # fmt: skip
        return answer if isinstance(answer, list) else []

    def wado(self, study: str, series: str, sop: str) -> bytes:
        """WADO-RS: one instance's file (the first part of the multipart answer)."""
        raw = self.request(
            "GET",
            f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        boundary = raw.split(b"\r\n", 1)[0]
        part = raw.split(boundary)[1]
        return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
