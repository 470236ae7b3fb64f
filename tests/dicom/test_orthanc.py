"""The test PACS itself (``tests/orthanc.py``) against the realistic films: what a later test
relies on must hold — STOW-RS, QIDO-RS filters, WADO-RS bytes, DICOM access only for declared
nodes, routing to a node (dcmtk's ``storescp``), and a stop that the data survives."""

from __future__ import annotations

import io
import shutil
import subprocess
import time

import numpy as np
import pytest

import orthanc as pacs

pydicom = pytest.importorskip("pydicom")
DCMTK = shutil.which("storescp") and shutil.which("echoscu")
needs_dcmtk = pytest.mark.skipif(not DCMTK, reason="dcmtk not found (apt-get install dcmtk)")

STUDY, SERIES, SOP, MODALITY, PATIENT_ID = (
    "0020000D", "0020000E", "00080018", "00080060", "00100020",
)  # fmt: skip


def test_stow_qido_wado_round_trip_every_film(orthanc, film_catalogue):
    orthanc.clear()
    answer = orthanc.stow(film.data for film in film_catalogue.values())
    assert len(answer["00081199"]["Value"]) == len(film_catalogue)  # ReferencedSOPSequence

    studies = orthanc.qido("studies")
    assert len(studies) == len(film_catalogue)
    crs = orthanc.qido("series", Modality="CR")
    assert {pacs.value(s, MODALITY) for s in crs} == {"CR"} and len(crs) == 2
    film = film_catalogue["dx-pa-mono2-12bit-mirrored"]
    header = film.header
    (study,) = orthanc.qido("studies", PatientID=header["PatientID"])
    assert pacs.value(study, STUDY) == header["StudyInstanceUID"]
    assert len(orthanc.qido("studies", PatientID="LUNGSEG-TEST-*")) == len(film_catalogue)
    (instance,) = orthanc.qido("instances", study=header["StudyInstanceUID"])
    assert pacs.value(instance, SOP) == header["SOPInstanceUID"]
    (series,) = orthanc.qido("series", study=header["StudyInstanceUID"])
    assert pacs.value(series, SERIES) == header["SeriesInstanceUID"]

    (data,) = orthanc.wado(header["StudyInstanceUID"], header["SeriesInstanceUID"])
    back, sent = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(film.data))
    assert back.SOPInstanceUID == sent.SOPInstanceUID
    assert tuple(back.PatientOrientation) == ("R", "F")
    np.testing.assert_array_equal(back.pixel_array, sent.pixel_array)
    (meta,) = orthanc.metadata(header["StudyInstanceUID"])
    assert pacs.value(meta, "00280011") == 496  # Columns, as a viewer reads them

    # The same deterministic file again replaces it: still one instance.
    orthanc.stow([film.data])
    assert len(orthanc.qido("instances", study=header["StudyInstanceUID"])) == 1


def _echo(orthanc, calling: str, called: str = pacs.AET) -> int:
    command = ["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(orthanc.dicom_port)]
    return subprocess.run(command, capture_output=True, timeout=30).returncode


@needs_dcmtk
def test_only_declared_nodes_talk_dicom_and_routing_reaches_a_node(
    orthanc, film_catalogue, tmp_path
):
    orthanc.clear()
    assert _echo(orthanc, "STRANGER") != 0  # an AE title Orthanc does not know
    port = pacs.free_port()
    orthanc.add_modality("lungseg", "LUNGSEGNODE", port)
    try:
        assert _echo(orthanc, "LUNGSEGNODE") == 0
        assert _echo(orthanc, "LUNGSEGNODE", called="NOTORTHANC") != 0  # called AE title checked
        received = tmp_path / "received"
        received.mkdir()
        command = ["storescp", "-aet", "LUNGSEGNODE", "-od", str(received), str(port)]
        node = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not orthanc.echo("lungseg"):
                assert time.monotonic() < deadline, "storescp never answered Orthanc's C-ECHO"
                time.sleep(0.1)
            film = film_catalogue["cr-pa-mono2-16bit-width509"]
            stored = orthanc.upload(film.data)
            orthanc.store_to("lungseg", [stored["ID"]])
        finally:
            node.terminate()
            node.wait(10)
        (path,) = received.iterdir()
        assert pydicom.dcmread(path).SOPInstanceUID == film.header["SOPInstanceUID"]
    finally:
        orthanc.remove_modality("lungseg")
    assert _echo(orthanc, "LUNGSEGNODE") != 0
    with pytest.raises(pacs.OrthancError, match="HTTP 4"):
        orthanc.store_to("lungseg", [stored["ID"]])


def test_a_stopped_pacs_refuses_and_comes_back_with_its_data(film_catalogue, tmp_path):
    if pacs.orthanc_missing():
        pytest.skip(pacs.orthanc_missing())
    film = film_catalogue["dx-ap-mono1-16bit-imager"]
    with pacs.start(tmp_path / "pacs") as server:
        server.stow([film.data])
        server.kill()  # a crash: nothing of the stored study may be lost
        with pytest.raises(ConnectionError):
            server.qido("studies")
        restart_s = server.restart()
        (study,) = server.qido("studies")
        assert pacs.value(study, STUDY) == film.header["StudyInstanceUID"]
        assert restart_s < 30
