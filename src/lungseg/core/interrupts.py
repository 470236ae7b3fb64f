"""Stopping a long job or a service the way a scheduler does it: SIGTERM, like Ctrl-C.

Slurm, Kubernetes, systemd, ``docker stop`` and ``kill`` send SIGTERM and wait before they kill;
Python's default for it ends the process on the spot, without ``finally`` blocks, so finished
work would go unrecorded and worker processes would be left behind.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread, as Ctrl-C
    does, so the caller's clean-up runs. Elsewhere than in the main thread, nothing changes
    (Python takes signals only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
