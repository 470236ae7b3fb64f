"""One process per output folder: an advisory lock that dies with its process.

``with exclusive(run_dir, "train"):`` holds ``run_dir/.lungseg.lock`` for the block. A second
lungseg process asking for the same folder gets a one-line
:class:`~lungseg.core.errors.LungsegError` naming the folder and the holder (pid, command, since
when) instead of silently interleaving its files with the first one's. The lock is ``fcntl.flock``:
the kernel releases it when the holding process ends, however it ends, so a run killed with ``kill
-9`` leaves no stale lock behind and ``--resume`` just works. The lock file itself stays (removing
it would let two processes lock two different files of the same name); its text only says who held
it last.

Where ``fcntl`` does not exist (Windows) the folder is not locked. On network file systems
``flock`` may be local to each machine: give each machine its own output folder there.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lungseg.core.errors import LockBusy

LOCK_FILE = ".lungseg.lock"


@contextlib.contextmanager
def exclusive(folder: str | Path, command: str, wait: bool = False) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) while the block runs.

    Args:
        folder: the run directory, cache or output folder.
        command: what holds it (``train``, ``prepare``, ``segment``), for the other process's
            error message.
        wait: wait for the holder to finish (saying so on stderr) instead of refusing; for
            derived data such as a cache, which the waiting process can then reuse.

    Yields:
        ``folder``.

    Raises:
        LungsegError: another process holds the lock.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield folder
        return
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(
                    f"is in use by another lungseg process ({_holder(path)}); wait for it to "
                    "finish, or use another folder",
                    folder,
                ) from None
            print(f"{folder}: waiting for {_holder(path)} to finish", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):  # who holds it is a courtesy: a full disk may say no
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_me(command)).encode())
        try:
            yield folder
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
        if created:
            _remove_if_only_the_lock(folder)


def is_held(folder: str | Path) -> bool:
    """Whether a process holds the lock of ``folder`` now (this one counts too)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def _me(command: str) -> dict:
    return {"pid": os.getpid(), "command": f"lungseg {command}", "since": time.time(),
            "argv": sys.argv[1:4]}  # fmt: skip


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"{info['command']}, pid {info['pid']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def _remove_if_only_the_lock(folder: Path) -> None:
    """A folder this lock created for a command that then wrote nothing is removed again, so a
    refused command leaves no trace."""
    with contextlib.suppress(OSError):
        if [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()
            folder.rmdir()
