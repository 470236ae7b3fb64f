"""Fixtures of the DICOM node's tests: a PACS of their own and the node as a process."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodes import NodeProcess


@pytest.fixture
def pacs(tmp_path: Path):
    """A real Orthanc of this test's own (``tests/orthanc.py``): the tests stop it, and count
    every SEG and SR it holds."""
    from orthanc import orthanc_missing, start

    missing = orthanc_missing()
    if missing:
        pytest.skip(missing)
    with start(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def node_factory(tmp_path: Path, tiny_run, pacs):
    """``make(allow)``: a started node process that sends its results to ``pacs`` by C-STORE
    (declared there as the modality ``lungseg``); stopped after the test."""
    started: list[NodeProcess] = []

    def make(allow: list[str]) -> NodeProcess:
        destination = [f"--send-to={pacs.aet}@127.0.0.1:{pacs.dicom_port}"]
        node = NodeProcess(tmp_path / f"node{len(started)}", tiny_run.run, destination, allow)
        node.root.mkdir()
        started.append(node)
        pacs.add_modality("lungseg", "LUNGSEG", node.port)
        node.start()
        return node

    yield make
    for node in started:
        node.stop()
