"""Micro-batching: concurrent requests share forward passes, a lone one is not held back, a
failure reaches every request of its batch, and a request that gave up is left out."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lungseg.serve.batcher import MicroBatcher


def run(coro):
    return asyncio.run(coro)


class Forward:
    """A batch function that records its batches and takes ``seconds`` per call."""

    def __init__(self, seconds: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.seconds = seconds
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.seconds)
        if self.fail:
            raise ValueError("model broke")
        return [10 * i for i in items]


def test_concurrent_requests_share_forward_passes():
    forward = Forward(seconds=0.05)

    async def main():
        batcher = MicroBatcher(forward, max_batch=8, max_wait=0.01)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.close()
        return results

    results = run(main())
    assert [r.value for r in results] == [10 * i for i in range(20)]  # each its own answer
    assert sorted(i for b in forward.batches for i in b) == list(range(20))
    assert max(len(b) for b in forward.batches) == 8 and len(forward.batches) <= 4
    sizes = {i: len(b) for b in forward.batches for i in b}
    assert all(r.batch_size == sizes[r.value // 10] for r in results)


def test_a_lone_request_does_not_wait_for_company():
    forward = Forward()

    async def main():
        batcher = MicroBatcher(forward, max_batch=8, max_wait=1.0)
        start = time.perf_counter()
        result = await batcher.submit(1)
        elapsed = time.perf_counter() - start
        await batcher.close()
        return result, elapsed

    result, elapsed = run(main())
    assert result.batch_size == 1 and elapsed < 0.5  # not the full second of max_wait


def test_a_batch_waits_for_requests_still_being_decoded():
    forward = Forward()

    async def main():
        batcher = MicroBatcher(forward, max_batch=8, max_wait=1.0)

        async def late(i: int):
            with batcher.expect():
                await asyncio.sleep(0.05)  # decoding
            return await batcher.submit(i)

        results = await asyncio.gather(batcher.submit(0), late(1), late(2))
        await batcher.close()
        return results

    results = run(main())
    assert [r.batch_size for r in results] == [3, 3, 3]


def test_a_failure_reaches_every_request_of_its_batch_and_the_next_batch_runs():
    forward = Forward(fail=True)

    async def main():
        batcher = MicroBatcher(forward, max_batch=4, max_wait=0.0)
        submitted = (batcher.submit(i) for i in range(3))
        outcomes = await asyncio.gather(*submitted, return_exceptions=True)
        forward.fail = False
        after = await batcher.submit(7)
        await batcher.close()
        return outcomes, after

    outcomes, after = run(main())
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert after.value == 70


def test_a_request_that_gave_up_is_left_out_of_the_next_batch():
    forward = Forward(seconds=0.1)

    async def main():
        batcher = MicroBatcher(forward, max_batch=8, max_wait=0.0)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)  # the first pass is running
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(2), 0.01)
        third = await batcher.submit(3)
        await first
        await batcher.close()
        return third

    third = run(main())
    assert forward.batches == [[1], [3]]
    assert third.value == 30


def test_the_model_is_idle_only_when_nothing_is_queued_running_or_coming():
    async def main():
        batcher = MicroBatcher(Forward(seconds=0.05), max_batch=4, max_wait=0.0)
        states = [batcher.idle]
        with batcher.alone():
            states.append(batcher.idle)
        with batcher.expect():
            states.append(batcher.idle)
        running = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)  # in its forward pass
        states.append(batcher.idle)
        await running
        states.append(batcher.idle)
        await batcher.close()
        return states

    assert run(main()) == [True, False, False, False, True]
