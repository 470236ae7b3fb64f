"""Fixtures of the DICOM node's tests: a PACS of their own and the node as a process."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodes import NodeProcess

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_lua() -> str:
    """The Orthanc routing script that README's "Connect to a PACS" gives administrators."""
    text = README.read_text()
    return text.split("```lua\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def pacs(tmp_path: Path):
    """A real Orthanc of this test's own (``tests/orthanc.py``) that routes every stable CR/DX
    study to the modality ``lungseg`` by README's Lua script; the tests stop it, and count every
    SEG and SR it holds."""
    from orthanc import orthanc_missing, start

    missing = orthanc_missing()
    if missing:
        pytest.skip(missing)
    script = tmp_path / "route.lua"
    script.write_text(readme_lua())
    with start(tmp_path / "orthanc", {"LuaScripts": [str(script)]}) as server:
        yield server


@pytest.fixture
def node_factory(tmp_path: Path, tiny_run, pacs):
    """``make(allow, stow=False)``: a started node process that sends its results to ``pacs``
    by C-STORE (declared there as the modality ``lungseg``) or STOW-RS; stopped after the
    test."""
    started: list[NodeProcess] = []

    def make(allow: list[str], stow: bool = False) -> NodeProcess:
        destination = [f"--stow={pacs.dicomweb}" if stow else
                       f"--send-to={pacs.aet}@127.0.0.1:{pacs.dicom_port}"]  # fmt: skip
        node = NodeProcess(tmp_path / f"node{len(started)}", tiny_run.run, destination, allow)
        node.root.mkdir()
        started.append(node)
        pacs.add_modality("lungseg", "LUNGSEG", node.port)
        node.start()
        return node

    yield make
    for node in started:  # the spool survives SIGKILL by design; a test stops it gracefully
        if node.process is not None and node.process.poll() is None:
            node.kill()
