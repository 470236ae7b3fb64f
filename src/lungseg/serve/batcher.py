"""Micro-batching: concurrent requests share one forward pass instead of queueing for their own.

Each request hands its preprocessed image to the model's :class:`MicroBatcher` and awaits its
result. The batcher's loop takes the first waiting item, then every item already queued, and
waits up to ``max_wait`` for more only while other requests are still being decoded for this
model (:meth:`MicroBatcher.expect`): a lone request is never held back, and under load a batch
fills while the previous forward pass runs. The forward pass runs on the batcher's own thread, so
the event loop keeps accepting and answering requests meanwhile; one model runs one batch at a
time. A request that timed out before its batch started is left out of it.

A request that finds the model idle (nothing queued, running or being decoded) has no one to
share a pass with: it runs its whole work in one thread call instead (:meth:`MicroBatcher.alone`),
saving the hand-offs between threads that a loaded machine makes slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BatchResult:
    """One item's share of a forward pass.

    Attributes:
        value: what the batch function returned for this item.
        batch_size: items in the pass.
        queued_ms: from :meth:`MicroBatcher.submit` to the start of the pass.
        forward_ms: the pass itself.
    """

    value: Any
    batch_size: int
    queued_ms: float
    forward_ms: float


class MicroBatcher:
    """Runs ``forward(items) -> results`` (same length, same order) on batches of submitted items.

    Args:
        forward: the batch function (runs on a thread of its own).
        max_batch: most items per call.
        max_wait: seconds to wait for requests still being decoded (see the module docstring).
        name: for the thread's name.
        observe: called with the size of every forward pass (those of :meth:`alone` too).
    """

    def __init__(
        self,
        forward: Callable[[Sequence[Any]], Sequence[Any]],
        max_batch: int,
        max_wait: float,
        name: str = "model",
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self.forward = forward
        self.observe = observe or (lambda size: None)
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future, float]] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"lungseg-{name}")
        self._upcoming = 0
        self._busy = False
        self._alone = 0
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def running(self) -> bool:
        return not self._task.done()

    @property
    def queued(self) -> int:
        """Items waiting for a forward pass."""
        return self._queue.qsize()

    @property
    def idle(self) -> bool:
        """Nothing queued, in a forward pass, being decoded, or running alone."""
        return self._queue.empty() and not self._busy and self._upcoming == 0 and self._alone == 0

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Mark a request that runs its own forward pass outside the batches (see the module
        docstring); meanwhile the model is not :attr:`idle`."""
        self._alone += 1
        self.observe(1)
        try:
            yield
        finally:
            self._alone -= 1

    @contextlib.contextmanager
    def expect(self) -> Iterator[None]:
        """Announce a request that will :meth:`submit` soon (it is being decoded), so a batch
        that is being filled waits for it."""
        self._upcoming += 1
        try:
            yield
        finally:
            self._upcoming -= 1
            self._arrived.set()

    async def submit(self, item: Any) -> BatchResult:
        """Queue ``item`` and wait for its result (raises what ``forward`` raised)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future, time.perf_counter()))
        self._arrived.set()
        return await future

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        while not self._queue.empty():
            _, future, _ = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the service is shutting down"))
        self._thread.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if self._upcoming == 0 or remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            live = [entry for entry in batch if not entry[1].done()]
            if not live:
                continue
            start = time.perf_counter()
            self.observe(len(live))
            self._busy = True
            try:
                results = await loop.run_in_executor(
                    self._thread, self.forward, [item for item, _, _ in live]
                )
            except Exception as exc:
                for _, future, _ in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self._busy = False
            forward_ms = (time.perf_counter() - start) * 1000
            for (_, future, queued), value in zip(live, results, strict=True):
                if not future.done():
                    wait_ms = (start - queued) * 1000
                    future.set_result(BatchResult(value, len(live), wait_ms, forward_ms))
