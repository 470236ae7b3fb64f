"""``lungseg dicom-node`` against real parts: Orthanc routes studies to it and receives the
SEGs back (found by QIDO-RS), dcmtk's ``storescu`` and ``echoscu`` talk to it, and the node is
killed with SIGKILL while instances arrive."""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import pydicom
import pytest
from nodes import SENDER, c_store, chest_films, uids

from held import running
from orthanc import value

pytestmark = pytest.mark.slow


def results(pacs) -> dict[str, dict[str, list[str]]]:
    """Source SOP Instance UID -> ``{"SEG": [...], "SR": [...]}``: the SOP Instance UIDs of the
    SEGs and SRs in the PACS that reference it, found by QIDO-RS and read by WADO-RS (a SEG by
    its ReferencedSeriesSequence, an SR by the evidence it lists, which also names its SEG)."""
    objects: dict[str, dict[str, set[str]]] = {}
    # SRs first: a node sends a SEG before the SR that names it, so every SR listed here has
    # its SEG in the PACS when the SEGs are listed.
    for modality in ("SR", "SEG"):
        for match in pacs.qido("instances", Modality=modality, limit="1000"):
            study, series, sop = (value(match, t) for t in ("0020000D", "0020000E", "00080018"))
            ds = pydicom.dcmread(io.BytesIO(pacs.wado(study, series, sop)[0]))
            assert ds.StudyInstanceUID == study  # filed in the study of its source
            objects.setdefault(modality, {})[sop] = set(referenced(ds))
    segs = set(objects.get("SEG", {}))
    found: dict[str, dict[str, list[str]]] = {}
    for modality, refs_of in objects.items():
        for sop, refs in refs_of.items():
            if modality == "SR":
                assert refs & segs, "the SR names no SEG in the PACS"
            for ref in refs - segs:
                found.setdefault(ref, {"SEG": [], "SR": []})[modality].append(sop)
    return found


def referenced(ds) -> list[str]:
    """Every ReferencedSOPInstanceUID in a dataset, at any depth."""
    uids = []
    for element in ds.iterall():
        if element.keyword == "ReferencedSOPInstanceUID":
            uids.append(str(element.value))
    return uids


def wait_for(predicate, timeout: float, what: str, node=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    detail = node.log()[-3000:] if node is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


def results_for(pacs, films: list[bytes], node, timeout: float = 60) -> None:
    """Wait until every film has its SEG and SR in the PACS; assert exactly one of each."""

    def complete():
        found = results(pacs)
        return found if all(len(found.get(u, {}).get("SR", [])) for u in uids(films)) else None

    found = wait_for(complete, timeout, f"a SEG and an SR for each of {len(films)} films", node)
    assert sorted(found) == sorted(uids(films))
    for uid, objects in found.items():
        assert len(objects["SEG"]) == 1 and len(objects["SR"]) == 1, (uid, objects)


def test_orthanc_routes_a_study_and_gets_seg_and_sr_back(pacs, node_factory, examples_dir):
    node = node_factory([f"{pacs.aet}@127.0.0.1"])
    frontal = chest_films(examples_dir, 3)
    lateral = chest_films(examples_dir, 1, ViewPosition="LL")
    for film in frontal + lateral:  # routed by README's Lua script once the study is stable
        pacs.upload(film)

    results_for(pacs, frontal, node)  # and none for the lateral view
    status = wait_for(lambda: (s := node.status())["done"] == 3 and s, 10, "status", node)
    counts = [status[k] for k in ("received", "skipped", "failed", "queued")]
    assert counts == [3, 1, 0, 0]
    assert node.stop() == 0  # Ctrl-C: a clean stop
    log = node.log()
    assert "view LL is not frontal" in log
    assert "Node^Test" not in log and "NODE-TEST" not in log  # no patient data in the log


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed")
def test_storescu_sends_echoscu_echoes_and_strangers_are_refused(
    pacs, node_factory, examples_dir, tmp_path
):
    node = node_factory([f"{SENDER}@127.0.0.1", "OTHER@127.0.0.2"])
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
    results_for(pacs, films, node)

    for stranger in ("STRANGER", "OTHER"):  # an unknown AE; a known AE from the wrong host
        refused = dcmtk("storescu", stranger, paths[0])
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stderr + refused.stdout
    assert dcmtk("echoscu", "STRANGER").returncode != 0
    assert node.status()["received"] == 2
    assert "refused association from STRANGER@127.0.0.1" in node.log()

    # Stopped as systemd or docker stop it (SIGTERM): cleanly, its encoder processes with it.
    wait_for(lambda: node.status()["done"] == 2, 30, "both films segmented", node)
    encoders = node.descendants()
    if len(os.sched_getaffinity(0)) > 1:
        assert encoders  # the SEG and SR are made in worker processes on more than one core
    assert node.stop(signal.SIGTERM) == 0
    assert "stopping" in node.log()
    assert not [pid for pid in encoders if running(pid)]


def test_kill_9_while_50_instances_arrive_loses_and_duplicates_nothing(
    pacs, node_factory, examples_dir
):
    node = node_factory([f"{SENDER}@127.0.0.1"])
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

    results_for(pacs, films, node, timeout=90)
    assert len(pacs.qido("instances", Modality="SEG", limit="1000")) == 50
    assert len(pacs.qido("instances", Modality="SR", limit="1000")) == 50
    wait_for(lambda: node.status()["queued"] == 0, 20, "an empty spool", node)
    assert any(s["received"] or s["segmented"] for s in states), states  # killed mid-work
    # Killed once more after its work: its encoder processes end by themselves.
    encoders = node.descendants()
    if len(os.sched_getaffinity(0)) > 1:
        assert encoders
    node.kill()
    wait_for(lambda: not any(running(pid) for pid in encoders), 5, "no orphaned encoder", node)


def test_results_wait_for_a_destination_that_is_down(pacs, node_factory, examples_dir):
    node = node_factory([f"{SENDER}@127.0.0.1"], stow=True)  # results by STOW-RS
    pacs.stop()
    films = chest_films(examples_dir, 4)
    assert all(c_store(node.port, films))
    status = wait_for(lambda: (s := node.status())["destination_up"] is False and s, 30,
                      "the node to see the destination down", node)  # fmt: skip
    assert status["to_send"] + status["to_segment"] == 4
    time.sleep(3)  # several tries (backoff at most 1 s here), one log line
    assert node.log().count("result(s) queued") == 1

    pacs.start()
    results_for(pacs, films, node)
    assert wait_for(lambda: node.status()["destination_up"], 10, "destination up", node)
    assert "is back" in node.log()


def _pki(folder) -> dict[str, tuple[str, str]]:
    """A CA and certificates it signs (``node``, ``sender``, ``destination``), plus a
    ``stranger`` that signs its own: name -> (key, certificate), PEM files made by openssl."""
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    made = {}
    for name in ("node", "sender", "destination", "stranger"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        if name == "stranger":
            openssl("x509", "-req", "-in", f"{name}.csr", "-signkey", f"{name}.key", "-days", "2",
                    "-out", f"{name}.crt")  # fmt: skip
        else:
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                    "-CAcreateserial", "-days", "2", "-out", f"{name}.crt")  # fmt: skip
        made[name] = (str(folder / f"{name}.key"), str(folder / f"{name}.crt"))
    return made


@pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("openssl") is None,
    reason="dcmtk or openssl not installed",
)
def test_dicom_over_tls_between_dcmtk_the_node_and_orthanc(tiny_run, examples_dir, tmp_path):
    """dcmtk's storescu sends a film by TLS, the node sends its SEG and SR by TLS into a real
    Orthanc that takes DICOM over TLS only; a sender without TLS, or with a certificate the CA
    did not sign, gets nothing through."""
    from nodes import NodeProcess

    from orthanc import orthanc_missing, start

    if orthanc_missing():
        pytest.skip(orthanc_missing())
    pki, ca = _pki(tmp_path / "pki"), str(tmp_path / "pki" / "ca.crt")
    tls = {
        "DicomTlsEnabled": True, "DicomTlsCertificate": pki["destination"][1],
        "DicomTlsPrivateKey": pki["destination"][0], "DicomTlsTrustedCertificates": ca,
        "DicomTlsRemoteCertificateRequired": True,
    }  # fmt: skip
    film = tmp_path / "film.dcm"
    film.write_bytes(chest_films(examples_dir, 1)[0])
    with start(tmp_path / "orthanc", tls) as pacs:
        node = NodeProcess(tmp_path / "node", tiny_run.run, [
            f"--send-to={pacs.aet}@127.0.0.1:{pacs.dicom_port}", f"--tls-cert={pki['node'][1]}",
            f"--tls-key={pki['node'][0]}", f"--tls-ca={ca}",
        ], [f"{SENDER}@127.0.0.1"])  # fmt: skip
        node.root.mkdir()
        pacs.add_modality("lungseg", "LUNGSEG", node.port)

        def storescu(*tls_args: str) -> subprocess.CompletedProcess:
            argv = ["storescu", *tls_args, "-aet", SENDER, "-aec", "LUNGSEG", "127.0.0.1",
                    str(node.port), str(film)]  # fmt: skip
            return subprocess.run(argv, capture_output=True, text=True, timeout=30)

        try:
            node.start()
            sent = storescu("+tls", *pki["sender"], "+cf", ca)
            assert sent.returncode == 0, sent.stderr
            results_for(pacs, [film.read_bytes()], node)  # SEG and SR in Orthanc, by TLS
            plain = ["echoscu", "-aet", "LUNGSEG", "-aec", pacs.aet, "127.0.0.1",
                     str(pacs.dicom_port)]  # fmt: skip
            assert subprocess.run(plain, capture_output=True, timeout=30).returncode != 0
            assert storescu().returncode != 0  # no TLS
            assert storescu("+tls", *pki["stranger"], "+cf", ca).returncode != 0  # not the CA's
            assert node.status()["received"] == 1
            assert node.stop() == 0
            assert "Traceback" not in node.log()
        finally:
            if node.process is not None and node.process.poll() is None:
                node.kill()
