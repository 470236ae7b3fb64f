"""Connections that send nothing: closed after a while, and the longest-idle one makes room.

uvicorn closes a kept-alive connection that stays idle after an answer, but not one that never
sends a request, nor one that sends its request head a byte at a time. Each such connection holds
a file descriptor: a few hundred of them reach the open-files limit, after which the server can
accept no one (and asyncio logs a traceback per refused accept). :class:`GuardedH11` is uvicorn's
h11 protocol with two rules more:

* a connection must send a whole request head within ``--header-timeout`` seconds of opening
  or of its last answer, else it is closed;
* at most :func:`connection_cap` connections are open; a new one closes the connection that has
  waited longest for a request head (never one with a request in progress), or, when every
  connection is busy, itself.

Every logger's handler drops a line repeated too often (:class:`RepeatedLines`).
"""

from __future__ import annotations

import logging
import resource
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

#: Open files kept for what is not a client connection: the models, logs, pipes (a dozen).
RESERVED_FILES = 32
#: The listen queue, which is also how many connections asyncio accepts in one go before any
#: of them runs its protocol (so before the cap can close one). Accepted sockets reach the
#: protocol a few loop turns later, so the cap leaves room for four such bursts.
BACKLOG = 16
_limits = {"connections": 512, "header_timeout": 10.0}


def configure(max_connections: int, header_timeout_s: float) -> int:
    """Set the rules of this process's connections; returns the connection cap in force."""
    _limits["connections"] = connection_cap(max_connections)
    _limits["header_timeout"] = header_timeout_s
    return _limits["connections"]


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to leave room in the open-files limit for :data:`RESERVED_FILES`
    and the accept bursts (:data:`BACKLOG`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft - RESERVED_FILES - 4 * BACKLOG))


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout and a connection cap."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._timer = None
        self._arm()
        if len(self.connections) > _limits["connections"]:
            idle = [c for c in self.connections if isinstance(c, GuardedH11) and c._idle()]
            oldest = min(idle, key=lambda c: c._waiting_since, default=self)
            oldest.transport.close()

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _idle(self) -> bool:
        """Waiting for a request head: none yet, or the last one answered."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._waiting_since = time.monotonic()
        self._timer = self.loop.call_later(_limits["header_timeout"], self._expire)

    def _expire(self) -> None:
        if self._idle() and not self.transport.is_closing():
            self.transport.close()


class RepeatedLines(logging.Filter):
    """Passes a message (by logger and format string) at most :attr:`burst` times per
    :attr:`window` seconds; the first line after a quiet spell says how many were dropped."""

    burst = 5
    window = 10.0

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._seen: dict[tuple[str, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # By the start of the message: asyncio's repeats differ in an address or a time.
        key = (record.name, str(record.msg)[:40])
        now = time.monotonic()
        start, count, dropped = self._seen.get(key, (now, 0, 0))
        if now - start > self.window:
            start, count = now, 0
        if count >= self.burst:
            self._seen[key] = (start, count, dropped + 1)
            return False
        self._seen[key] = (start, count + 1, 0)
        if len(self._seen) > 1024:
            self._seen.pop(next(iter(self._seen)))
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar lines dropped]"
        return True
