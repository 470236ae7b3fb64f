"""Holding a ``segment`` run at a known point: a read that waits, as on a stalled network file
system (segment reads only regular files, so a named pipe no longer blocks it), and killing a
run there (:func:`kill_when`); whether a process still runs (:func:`running`).

A child process runs :data:`PATCH` first; a file whose key contains ``held`` then blocks its
reader until :func:`release` is called; the reader then gets the file's content (empty: an
errors.csv row).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PATCH = (
    "import os, time\n"
    "from lungseg.segment.inputs import LocalInputs\n"
    "_read = LocalInputs.read\n"
    "def _held_read(self, item):\n"
    "    while 'held' in item.key and not os.path.exists(item.ref + '.go'):\n"
    "        time.sleep(0.02)\n"
    "    return _read(self, item)\n"
    "LocalInputs.read = _held_read\n"
)


def held(path: Path) -> Path:
    """An empty file at ``path`` (its key must contain ``held``) that blocks its reader."""
    path.write_bytes(b"")
    return path


def release(path: Path) -> None:
    """Let the reader of :func:`held` ``path`` go on."""
    path.with_name(path.name + ".go").touch()


def kill_when(script: str, reached: Callable[[], bool], nothing: str, timeout: float = 300) -> None:
    """Run ``script`` in a child Python and SIGKILL it (no cleanup of any kind) once
    ``reached()``; fail with ``nothing`` if it never gets there, or with its stderr if it ends."""
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not reached():
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() < deadline, nothing
        time.sleep(0.02)
    child.kill()
    child.wait()


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (an exited one that nobody reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
