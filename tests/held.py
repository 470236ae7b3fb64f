"""Holding a ``segment`` run at a known point: a read that waits, as on a stalled network file
system (segment reads only regular files, so a named pipe no longer blocks it).

A child process runs :data:`PATCH` first; a file whose key contains ``held`` then blocks its
reader until :func:`release` is called; the reader then gets the file's content (empty: an
errors.csv row).
"""

from __future__ import annotations

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
