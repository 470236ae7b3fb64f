"""Helpers of the DICOM node's tests: chest films, the node as a process, SCU senders."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom

from dicom_files import dicom_bytes
from orthanc import free_port

REPO = Path(__file__).resolve().parents[2]
#: The AE title the tests send from (trusted by the node).
SENDER = "TESTSCU"


def chest_films(examples: Path, n: int, studies: int = 1, **header) -> list[bytes]:
    """``n`` DX files of the example X-rays (12-bit, 256 px), spread over ``studies`` studies of
    one patient; ``header`` overrides attributes (e.g. ``ViewPosition="LL"``)."""
    from pydicom.uid import generate_uid

    images = sorted((examples / "COVID" / "images").glob("*.png"))
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [generate_uid() for _ in range(studies)]
    films = []
    for i in range(n):
        gray = cv2.resize(cv2.imread(str(images[i % len(images)]), cv2.IMREAD_GRAYSCALE),
                          (256, 256), interpolation=cv2.INTER_AREA)  # fmt: skip
        raw = gray.astype(np.uint16) * 16
        attributes = {
            "PatientID": "NODE-TEST", "PatientName": "Node^Test", "StudyInstanceUID":
            study_uids[i % studies], "SeriesInstanceUID": series_uids[i % studies],
            "BodyPartExamined": "CHEST", "ViewPosition": "PA", "InstanceNumber": i + 1,
            "StudyDate": "20240115", "AccessionNumber": f"A{i % studies}",
        }  # fmt: skip
        attributes.update(header)
        films.append(dicom_bytes(raw, spacing=(0.7, 0.7), header=attributes))
    return films


def uids(films: list[bytes]) -> list[str]:
    """The SOP Instance UIDs of DICOM files."""
    return [str(pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID)
            for f in films]  # fmt: skip


class NodeProcess:
    """``lungseg dicom-node`` as a separate process (so it can be killed with SIGKILL)."""

    def __init__(self, root: Path, weights: Path, destination: list[str], allow: list[str]):
        self.root, self.spool = root, root / "spool"
        self.port = free_port()
        self.argv = [
            sys.executable, "-m", "lungseg", "dicom-node", "--spool", str(self.spool),
            "--host", "127.0.0.1", "--port", str(self.port), "--model", str(weights),
            "--device", "cpu", "--batch-size", "4", "--max-backoff", "1", *destination,
            *[f"--allow={a}" for a in allow],
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until it listens (it writes its status file then)."""
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
        status = self.spool / "status.json"
        status.unlink(missing_ok=True)
        log = open(self.root / "node.log", "ab")
        self.process = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not status.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log()[-3000:])
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, how: int = signal.SIGINT) -> int:
        """Ctrl-C (SIGINT), or ``how``; its exit code."""
        self.process.send_signal(how)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def descendants(self) -> list[int]:
        """The node's child processes and theirs (its DICOM encoder processes)."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    children = [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    continue
                found += children
                todo += children
        return found

    def status(self) -> dict:
        return json.loads((self.spool / "status.json").read_text())

    def spool_counts(self) -> dict[str, int]:
        """Files in each state of the spool."""
        return {state: len(list((self.spool / state).iterdir()))
                for state in ("received", "segmented", "failed")}  # fmt: skip

    def log(self) -> str:
        return (self.root / "node.log").read_text(errors="replace")


def c_store(port: int, films: list[bytes], ae_title: str = SENDER) -> list[bool]:
    """Send ``films`` to 127.0.0.1:``port`` by C-STORE (pynetdicom): which were confirmed."""
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in films]
    for cls in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(cls)
    assoc = ae.associate("127.0.0.1", port, ae_title="LUNGSEG")
    if not assoc.is_established:
        return [False] * len(films)
    confirmed = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds) if assoc.is_established else None
            confirmed.append(getattr(status, "Status", None) == 0x0000)
    finally:
        if assoc.is_established:
            assoc.release()
    return confirmed
