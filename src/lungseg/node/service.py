"""The running node: the SCP's threads spool, one worker segments, one sender delivers.

The node listens before the model is loaded (seconds on a busy machine): a restarted node takes
studies at once, and what it spooled meanwhile waits for the model.

Counts (since start) and the queues are written to ``<spool>/status.json`` whenever they
change (at most every half second) and every few seconds otherwise, so a monitor sees a node
that hangs as a file that stops changing. Logs name instances by a digest of their UID only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from lungseg.core.io_utils import atomic_write_text
from lungseg.dicom.encoder import DicomEncoder
from lungseg.node.scp import Peer, instance_ref, storage_ae
from lungseg.node.send import Undelivered
from lungseg.node.spool import Spool
from lungseg.node.tls import TlsFiles

if TYPE_CHECKING:
    from lungseg.inference.segmenter import Segmenter

log = logging.getLogger("lungseg.node")


@dataclass
class NodeCounts:
    """Instances since the node started: received (spooled), skipped (not a frontal chest
    X-ray), done (results delivered), failed (could not be segmented)."""

    received: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0


@dataclass
class NodeSettings:
    """How the node runs (see ``lungseg dicom-node --help``)."""

    spool: str
    ae_title: str = "LUNGSEG"
    host: str = "0.0.0.0"
    port: int = 11112
    allow: list[Peer] = field(default_factory=list)
    batch_size: int = 8
    #: Seconds to wait for a batch to fill once an instance is waiting.
    linger_s: float = 0.2
    #: Longest wait between two tries of a destination that is down.
    max_backoff_s: float = 60.0
    #: DICOM over TLS for senders (and the C-STORE destination's own): :mod:`lungseg.node.tls`.
    tls: TlsFiles | None = None


class Node:
    """A DICOM node; :meth:`start` returns once it listens, :meth:`stop` ends it.

    Args:
        load: loads the model (called once, in the worker, after the node listens).
        settings: where to listen, whom to trust, the spool.
        destination: a :mod:`~lungseg.node.send` destination (``send(files)``).
    """

    def __init__(self, load: Callable[[], Segmenter], settings: NodeSettings, destination) -> None:
        self.settings, self.destination = settings, destination
        self._load = load
        self.segmenter: Segmenter | None = None
        #: Why the node stopped on its own (the model could not be loaded), else None.
        self.error: BaseException | None = None
        self.spool = Spool(settings.spool)
        self.counts = NodeCounts()
        self.destination_up = True
        self._wake_worker = threading.Condition()
        self._wake_sender = threading.Event()
        self._stopping = threading.Event()
        self._status_lock = threading.Lock()
        self._last_status = 0.0
        self._status_failed = False
        self._threads: list[threading.Thread] = []
        self._server = None
        #: Worker processes for the SEG and SR, one per core (none on one core).
        self._encoder = DicomEncoder.per_core()

    def start(self) -> None:
        ae, handlers = storage_ae(
            self.settings.ae_title, self.settings.allow, self._store, self._skipped
        )
        tls = self.settings.tls
        self._server = ae.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers,
            ssl_context=tls.server_context() if tls else None,
        )  # fmt: skip
        for target in (self._work_loop, self._send_loop, self._status_loop):
            thread = threading.Thread(target=target, name=f"lungseg-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        queued = self.spool.counts()
        log.info(
            "dicom-node %s listening on %s:%d; %d to segment and %d to send from before",
            self.settings.ae_title, self.settings.host, self.settings.port,
            queued["received"], queued["segmented"],
        )  # fmt: skip
        self.write_status(force=True, strict=True)

    def stop(self) -> None:
        self._stopping.set()
        with self._wake_worker:
            self._wake_worker.notify_all()
        self._wake_sender.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            if thread.name.endswith("_work_loop") and self.segmenter is None:
                continue  # still loading the model: nothing of its own to finish
            thread.join(timeout=30)
        if self._encoder is not None:
            self._encoder.close()
        self.write_status(force=True)

    def wait(self) -> None:
        """Block until :meth:`stop` (or Ctrl-C); raise what stopped the node on its own."""
        while not self._stopping.wait(1.0):
            pass
        if self.error is not None:
            raise self.error

    # The SCP's threads
    def _store(self, uid: str, data: bytes) -> None:
        self.spool.receive(uid, data)
        with self._wake_worker:
            self.counts.received += 1
            self._wake_worker.notify()
        self.write_status()

    def _skipped(self, uid: str, why: str) -> None:
        log.info("skipped instance %s: %s", instance_ref(uid), why)
        self.counts.skipped += 1
        self.write_status()

    # The worker
    def _work_loop(self) -> None:
        try:
            self.segmenter = self._load()
        except BaseException as exc:  # reported by wait(), in the main thread
            self.error = exc
            self._stopping.set()
            return
        log.info("model %s loaded", self.segmenter.name)
        self.write_status(force=True)
        size = self.settings.batch_size
        while not self._stopping.is_set():
            waiting = self.spool.received()
            if not waiting:
                with self._wake_worker:
                    self._wake_worker.wait(timeout=1.0)
                continue
            if len(waiting) < size:
                # Micro-batching: a study's images arrive a few milliseconds apart.
                deadline = time.monotonic() + self.settings.linger_s
                while len(waiting) < size and time.monotonic() < deadline:
                    with self._wake_worker:
                        self._wake_worker.wait(timeout=max(0.0, deadline - time.monotonic()))
                    waiting = self.spool.received()
            self._segment(waiting[:size])

    def _segment(self, uids: list[str]) -> None:
        from lungseg.node.work import segment_instances

        instances = []
        for uid in uids:
            try:
                instances.append((uid, self.spool.read(uid)))
            except FileNotFoundError:  # a resent instance already done by this batch's peer
                continue
        for outcome in segment_instances(
            self.segmenter, instances, self.settings.batch_size, self._encoder
        ):
            if outcome.problem:
                log.warning("instance %s failed: %s", instance_ref(outcome.uid), outcome.problem)
                self.spool.failed(outcome.uid, outcome.problem)
                self.counts.failed += 1
            else:
                self.spool.segmented(outcome.uid, outcome.files)
        self._wake_sender.set()
        self.write_status()

    # The sender
    def _send_loop(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            self._wake_sender.wait(timeout=1.0)
            self._wake_sender.clear()
            for uid in self.spool.outbox():
                if self._stopping.is_set():
                    return
                try:
                    self.destination.send(list(self.spool.results(uid).values()))
                except FileNotFoundError:  # replaced by a resent instance's new results
                    continue
                except Undelivered as exc:
                    if self.destination_up:
                        queued = len(self.spool.outbox())
                        log.error("destination %s: %s; %d result(s) queued, retrying",
                                  self.destination, exc, queued)  # fmt: skip
                        self.destination_up = False
                        self.write_status(force=True)
                    self._stopping.wait(backoff)
                    backoff = min(2 * backoff, self.settings.max_backoff_s)
                    self._wake_sender.set()
                    break
                self.spool.sent(uid)
                self.counts.done += 1
                backoff = 1.0
                if not self.destination_up:
                    log.info("destination %s is back; delivering the queue", self.destination)
                    self.destination_up = True
                self.write_status()

    # Health
    def _status_loop(self) -> None:
        while not self._stopping.wait(5.0):
            self.write_status(force=True)

    def status(self) -> dict:
        queued = self.spool.counts()
        return {
            "ae_title": self.settings.ae_title,
            "model": self.segmenter.name if self.segmenter is not None else "loading",
            "port": self.settings.port,
            "destination": str(self.destination),
            "destination_up": self.destination_up,
            "received": self.counts.received,
            "skipped": self.counts.skipped,
            "done": self.counts.done,
            "failed": self.counts.failed,
            "queued": queued["received"] + queued["segmented"],
            "to_segment": queued["received"],
            "to_send": queued["segmented"],
            "failed_in_spool": queued["failed"],
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def write_status(self, force: bool = False, strict: bool = False) -> None:
        with self._status_lock:
            now = time.monotonic()
            if not force and now - self._last_status < 0.5:
                return
            self._last_status = now
            try:
                atomic_write_text(self.spool.root / "status.json",
                                  json.dumps(self.status(), indent=1) + "\n")  # fmt: skip
            except OSError as exc:
                # At start, a spool that cannot be written stops the node (one line). Later, a
                # full disk is not worth a dead thread or a traceback: the next write tries
                # again, and the log says so once.
                if strict:
                    raise
                if not self._status_failed:
                    log.error("cannot write %s/status.json (%s)", self.spool.root, exc)
                self._status_failed = True
            else:
                self._status_failed = False
