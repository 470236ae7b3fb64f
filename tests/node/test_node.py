"""``lungseg dicom-node`` against real parts: Orthanc routes studies to it and receives the
SEGs back (found by QIDO-RS), dcmtk's ``storescu`` and ``echoscu`` talk to it, and the node is
killed with SIGKILL while instances arrive."""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import threading
import time

import pydicom
import pytest
from nodes import SEG_CLASS, SENDER, c_store, chest_films, uids

pytestmark = pytest.mark.slow


def seg_references(orthanc) -> dict[str, list[str]]:
    """Source SOP Instance UID -> the SOP Instance UIDs of the SEGs in Orthanc that reference
    it (found by QIDO-RS, then read from each SEG's ReferencedSeriesSequence)."""
    found: dict[str, list[str]] = {}
    for match in orthanc.qido(f"SOPClassUID={SEG_CLASS}&limit=1000"):
        study = match["0020000D"]["Value"][0]
        series = match["0020000E"]["Value"][0]
        sop = match["00080018"]["Value"][0]
        seg = pydicom.dcmread(io.BytesIO(orthanc.wado(study, series, sop)))
        assert seg.StudyInstanceUID == study  # the SEG is filed in its source's study
        for ref_series in seg.ReferencedSeriesSequence:
            for ref in ref_series.ReferencedInstanceSequence:
                found.setdefault(str(ref.ReferencedSOPInstanceUID), []).append(sop)
    return found


def wait_for(predicate, timeout: float, what: str, node=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    detail = node.log()[-3000:] if node is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


def segs_for(orthanc, n: int, node, timeout: float = 60) -> dict[str, list[str]]:
    return wait_for(lambda: (r := seg_references(orthanc)) and len(r) >= n and r, timeout,
                    f"{n} SEGs in Orthanc", node)  # fmt: skip


def to_orthanc(orthanc) -> list[str]:
    return [f"--send-to={orthanc.AE}@127.0.0.1:{orthanc.dicom_port}"]


def test_orthanc_routes_a_study_and_gets_the_segs_back(orthanc, node_factory, examples_dir):
    node = node_factory(to_orthanc(orthanc), [f"{orthanc.AE}@127.0.0.1"])
    orthanc.add_modality("lungseg", "LUNGSEG", node.port)
    frontal = chest_films(examples_dir, 3)
    lateral = chest_films(examples_dir, 1, ViewPosition="LL")
    ids = [orthanc.upload(f) for f in frontal + lateral]
    orthanc.route("lungseg", ids)

    refs = segs_for(orthanc, 3, node)
    assert sorted(refs) == sorted(uids(frontal))  # the lateral view is skipped
    assert all(len(segs) == 1 for segs in refs.values())
    status = wait_for(lambda: (s := node.status())["done"] == 3 and s, 10, "status", node)
    counts = [status[k] for k in ("received", "skipped", "failed", "queued")]
    assert counts == [3, 1, 0, 0]
    log = node.log()
    assert "view LL is not frontal" in log
    assert "Node^Test" not in log and "NODE-TEST" not in log  # no patient data in the log


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed")
def test_storescu_sends_echoscu_echoes_and_strangers_are_refused(
    orthanc, node_factory, examples_dir, tmp_path
):
    node = node_factory(to_orthanc(orthanc), [f"{SENDER}@127.0.0.1", "OTHER@127.0.0.2"])
    films = chest_films(examples_dir, 2)
    paths = []
    for i, film in enumerate(films):
        paths.append(tmp_path / f"film{i}.dcm")
        paths[-1].write_bytes(film)

    def dcmtk(tool: str, ae: str, *files) -> subprocess.CompletedProcess:
        argv = [tool, "-aet", ae, "-aec", "LUNGSEG", "127.0.0.1", str(node.port), *map(str, files)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    assert dcmtk("echoscu", SENDER).returncode == 0
    sent = dcmtk("storescu", SENDER, *paths)
    assert sent.returncode == 0, sent.stderr
    assert sorted(segs_for(orthanc, 2, node)) == sorted(uids(films))

    for stranger in ("STRANGER", "OTHER"):  # an unknown AE; a known AE from the wrong host
        refused = dcmtk("storescu", stranger, paths[0])
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stderr + refused.stdout
    assert node.status()["received"] == 2
    assert "refused association from STRANGER@127.0.0.1" in node.log()


def test_kill_9_while_50_instances_arrive_loses_and_duplicates_nothing(
    orthanc, node_factory, examples_dir
):
    node = node_factory(to_orthanc(orthanc), [f"{SENDER}@127.0.0.1"])
    films = chest_films(examples_dir, 50, studies=5)
    done = threading.Event()

    def sender() -> None:
        # A sender's duty: resend whatever the node did not confirm.
        pending = list(films)
        while pending:
            chunk, pending = pending[:5], pending[5:]
            confirmed = c_store(node.port, chunk)
            pending += [f for f, ok in zip(chunk, confirmed, strict=True) if not ok]
            if not all(confirmed):
                time.sleep(0.2)
        done.set()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    rng = random.Random(21)
    states = []
    for _ in range(3):  # while receiving, loading the model, segmenting, sending
        time.sleep(rng.uniform(0.3, 2.5))
        node.kill()
        states.append(node.spool_counts())
        node.start()
    thread.join(timeout=120)
    assert done.is_set()

    refs = segs_for(orthanc, 50, node, timeout=90)
    assert sorted(refs) == sorted(uids(films))
    assert all(len(segs) == 1 for segs in refs.values()), "an instance has several SEGs"
    wait_for(lambda: node.status()["queued"] == 0, 20, "an empty spool", node)
    assert any(s["received"] or s["segmented"] for s in states), states  # killed mid-work


def test_results_wait_for_a_destination_that_is_down(orthanc, node_factory, examples_dir):
    node = node_factory(to_orthanc(orthanc), [f"{SENDER}@127.0.0.1"])
    orthanc.stop()
    films = chest_films(examples_dir, 4)
    assert all(c_store(node.port, films))
    status = wait_for(lambda: (s := node.status())["to_send"] == 4 and s, 30, "queued", node)
    assert status["destination_up"] is False
    time.sleep(3)  # several tries (backoff at most 1 s here), one log line
    assert node.log().count("result(s) queued") == 1

    orthanc.start()
    assert sorted(segs_for(orthanc, 4, node)) == sorted(uids(films))
    assert wait_for(lambda: node.status()["destination_up"], 10, "destination up", node)
    assert "is back" in node.log()
