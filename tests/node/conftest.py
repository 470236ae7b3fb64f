"""Fixtures of the DICOM node's tests: a real Orthanc and the node as a process."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodes import NodeProcess
from pacs import Orthanc


@pytest.fixture
def orthanc(tmp_path: Path):
    pacs = Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


@pytest.fixture
def node_factory(tmp_path: Path, tiny_run):
    """``make(destination_args, allow)``: a started node process (stopped after the test)."""
    started: list[NodeProcess] = []

    def make(destination: list[str], allow: list[str]) -> NodeProcess:
        node = NodeProcess(tmp_path / f"node{len(started)}", tiny_run.run, destination, allow)
        node.root.mkdir()
        started.append(node)
        node.start()
        return node

    yield make
    for node in started:
        node.stop()
