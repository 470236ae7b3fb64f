"""The folder lock: a second process is refused (or waits), a killed holder leaves none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lungseg.core.errors import LungsegError
from lungseg.core.locking import LOCK_FILE, exclusive

HOLD = textwrap.dedent(
    """
    import sys, time
    from lungseg.core.locking import exclusive
    with exclusive(sys.argv[1], "train"):
        print("held", flush=True)
        time.sleep(60)
    """
)


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder)
    try:
        with pytest.raises(LungsegError) as info, exclusive(folder, "train"):
            pass
        message = str(info.value)
        assert str(folder) in message and "in use by another lungseg process" in message
        assert f"pid {proc.pid}" in message and "lungseg train" in message
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_leaves_no_lock(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (folder / LOCK_FILE).exists()  # the file stays; the lock died with its process
    with exclusive(folder, "train"):
        pass


def test_waiting_takes_the_lock_when_the_holder_ends(tmp_path, capfd):
    folder = tmp_path / "cache"
    proc = _holder(folder)
    t0 = time.monotonic()
    killer = subprocess.Popen(
        [sys.executable, "-c", f"import os,time; time.sleep(1); os.kill({proc.pid}, 9)"]
    )
    with exclusive(folder, "prepare", wait=True):
        assert time.monotonic() - t0 > 0.5
    killer.wait()
    proc.wait()
    assert "waiting for lungseg train" in capfd.readouterr().err


def test_a_folder_made_only_for_the_lock_is_removed_again(tmp_path):
    folder = tmp_path / "new"
    with exclusive(folder, "train"):
        assert folder.is_dir()
    assert not folder.exists()
    with exclusive(folder, "train"):
        (folder / "config.yaml").write_text("x")
    assert (folder / "config.yaml").exists()
