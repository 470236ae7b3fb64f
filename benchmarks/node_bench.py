"""``lungseg dicom-node`` end to end, beside offline ``lungseg segment`` on the same files.

Chest films (the bundled X-rays at 1024 x 1024, 12-bit DX) are sent by C-STORE over one
association to a node (a separate process, model ``unet-fast``, as a hospital runs it); the node
spools, segments and sends a SEG and an SR per film by C-STORE to a storage SCP in this process
that counts them. Figures:

* instances/s from the first C-STORE to the last SR stored back, over the whole stream;
* the same films (the first ``offline`` of them, as files) through ``lungseg segment
  --dicom-seg --dicom-sr``: the rate it prints (start-up and model load left out, as the node's
  are by starting the clock once it has loaded the model); the node's rate over it;
* the node's resident memory (``VmRSS`` of the node and its DICOM encoder processes, sampled
  every 0.2 s): the peak while the first
  ``offline`` films are done and the peak over the whole stream, which must stay flat.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import EXAMPLES, REPO, Context, Section

MODEL = "unet-fast"
GOAL_SHARE = 0.7  # node instances/s over offline segment's images/s
GOAL_MEMORY = 0.10  # peak RSS over the whole stream within 10 % of the early peak
SIZE = 1024


def run(ctx: Context) -> Section:
    section = Section("node", ctx)
    total, offline_n = (12, 12) if ctx.quick else (1000, 100)
    base = _films(ctx.tmp / "node-films", offline_n)
    offline = _offline(ctx, ctx.tmp / "node-films", offline_n)
    rate, rss = _node(ctx, base, total, offline_n)
    section.add(f"offline lungseg segment --dicom-seg --dicom-sr, {MODEL}", [offline], "images/s",
                f"{offline_n} films as files; the rate it prints")  # fmt: skip
    section.add(f"dicom-node, C-STORE in to SEG + SR stored back, {MODEL}", [rate],
                "instances/s", f"{total} instances over one association")  # fmt: skip
    early = section.add(f"dicom-node peak memory, first {offline_n} instances", [rss[0]], "MiB",
                        "VmRSS of the node and its encoder processes")  # fmt: skip
    late = section.add(f"dicom-node peak memory, all {total} instances", [rss[1]], "MiB",
                       "VmRSS of the node and its encoder processes")  # fmt: skip
    if ctx.quick:
        section.not_judged(f"node >= {GOAL_SHARE:.0%} of offline segment", "quick mode")
        section.not_judged("node memory flat", "quick mode")
    else:
        section.goal(f"node instances/s >= {GOAL_SHARE:.0%} of offline segment's images/s",
                     rate / offline, ">=", GOAL_SHARE, "x")  # fmt: skip
        section.goal(f"node peak memory over {total} instances <= {1 + GOAL_MEMORY:.2f}x the "
                     f"peak over the first {offline_n}", late["median"] / early["median"], "<=",
                     1 + GOAL_MEMORY, "x")  # fmt: skip
    section.notes += [
        f"Films: the {len(sorted(EXAMPLES.glob('*/images/*')))} bundled X-rays at {SIZE} x "
        f"{SIZE}, 12-bit DX, {offline_n} distinct files; the node's stream repeats them with "
        "new UIDs. The sender, the storage SCP that takes the results back and the node share "
        "the machine's cores, as do offline segment's threads; the load of other processes is "
        "given above. The node and offline segment make the SEG and SR in one worker process "
        "per core (lungseg/dicom/encoder.py); the node's memory counts those processes.",
        "The node's clock starts at the first C-STORE, once the node has loaded its model; it "
        "stops when the last SR is stored back.",
    ]
    return section


def _films(folder: Path, n: int) -> list:
    """``n`` DX datasets of the bundled X-rays, written to ``folder`` too."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    images = sorted(EXAMPLES.glob("*/images/*"))
    films = []
    for i in range(n):
        gray = cv2.resize(cv2.imread(str(images[i % len(images)]), cv2.IMREAD_GRAYSCALE),
                          (SIZE, SIZE), interpolation=cv2.INTER_AREA)  # fmt: skip
        ds = _dataset(gray.astype(np.uint16) * 16, study=i // 4)
        ds.save_as(folder / f"film{i:04d}.dcm", enforce_file_format=True)
        films.append(ds)
    return films


def _dataset(raw: np.ndarray, study: int):
    # The tests' DX writer (plain pydicom), so the node sees the films the tests send it.
    sys.path.insert(0, str(REPO / "tests"))
    from pydicom.uid import generate_uid

    from dicom_files import dicom_dataset

    header = {
        "StudyInstanceUID": generate_uid(entropy_srcs=["node-bench", str(study)]),
        "SeriesInstanceUID": generate_uid(entropy_srcs=["node-bench-series", str(study)]),
        "BodyPartExamined": "CHEST", "ViewPosition": "PA",
        "PatientID": "BENCH", "PatientName": "Bench^Node",
    }  # fmt: skip
    return dicom_dataset(raw, spacing=(0.35, 0.35), header=header)


def _offline(ctx: Context, folder: Path, n: int) -> float:
    out = ctx.tmp / "node-offline"
    command = [sys.executable, "-m", "lungseg", "segment", str(folder), "--out", str(out),
               "--model", MODEL, "--device", "cpu", "--dicom-seg", "--dicom-sr"]  # fmt: skip
    ctx.log(" ".join(command[2:]))
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    found = re.search(r"\(([\d.]+) images/s\)", done.stderr)
    if found is None:
        raise RuntimeError(f"no rate in: {done.stderr[-500:]}")
    return float(found.group(1))


class _Results:
    """A storage SCP that counts what the node sends back (and keeps nothing)."""

    def __init__(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.count, self.last = 0, 0.0
        self._lock = threading.Lock()
        ae = AE(ae_title="BENCHPACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.port = _free_port()
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])  # fmt: skip

    def _store(self, event) -> int:
        with self._lock:
            self.count += 1
            self.last = time.perf_counter()
        return 0x0000

    def close(self) -> None:
        self._server.shutdown()


def _node(ctx: Context, base: list, total: int, early_n: int) -> tuple[float, tuple[float, float]]:
    from pynetdicom import AE

    results = _Results()
    port = _free_port()
    spool = ctx.tmp / "node-spool"
    command = [sys.executable, "-m", "lungseg", "dicom-node", "--spool", str(spool), "--host",
               "127.0.0.1", "--port", str(port), "--model", MODEL, "--device", "cpu",
               "--allow", "BENCHSCU@127.0.0.1", "--send-to",
               f"BENCHPACS@127.0.0.1:{results.port}"]  # fmt: skip
    ctx.log(" ".join(command[2:]))
    log = open(ctx.tmp / "node.log", "wb")
    node = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        status = spool / "status.json"
        deadline = time.monotonic() + 120
        while not (status.exists() and json.loads(status.read_text())["model"] != "loading"):
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((ctx.tmp / "node.log").read_text()[-2000:])
            time.sleep(0.1)
        samples: list[tuple[int, float]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                rss = _rss_mib(node.pid)
                with results._lock:
                    samples.append((results.count // 2, rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ae = AE(ae_title="BENCHSCU")
        ae.add_requested_context(base[0].SOPClassUID, base[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="LUNGSEG")
        if not assoc.is_established:
            raise RuntimeError("the node refused the benchmark's association")
        from pydicom.uid import generate_uid

        t0 = time.perf_counter()
        for i in range(total):
            ds = base[i % len(base)]
            if i >= len(base):
                ds = ds.copy()
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            status_ = assoc.send_c_store(ds)
            if getattr(status_, "Status", None) != 0:
                raise RuntimeError(f"C-STORE {i} failed: {status_}")
        assoc.release()
        deadline = time.monotonic() + 60 + total
        while results.count < 2 * total:
            if time.monotonic() > deadline or node.poll() is not None:
                raise RuntimeError(f"{results.count} of {2 * total} results back; "
                                   + (ctx.tmp / "node.log").read_text()[-2000:])  # fmt: skip
            time.sleep(0.05)
        elapsed = results.last - t0
        stop.set()
        sampler.join()
    finally:
        node.terminate()
        node.wait(timeout=60)
        results.close()
    early = max((r for done, r in samples if done <= early_n), default=samples[0][1])
    whole = max(r for _, r in samples)
    return total / elapsed, (early, whole)


def _rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (the node's DICOM encoder processes)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"VmRSS:\s+(\d+) kB", text)
    own = int(found.group(1)) / 1024 if found else 0.0
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    return own + sum(_rss_mib(int(child)) for child in children)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
