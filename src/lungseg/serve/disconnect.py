"""Clients that leave before their answer: their work is cancelled, not finished for no one.

uvicorn does not cancel a handler whose client disconnected; a request still waiting for its
batch would cost a forward pass (five with TTA) nobody reads. :func:`unless_client_leaves`
runs the work beside a watch on the connection and cancels it when the client goes; the batcher
leaves a cancelled request out of its next batch.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request


class ClientLeft(Exception):
    """The client closed its connection before its answer was ready."""


async def unless_client_leaves(request: Request, work):
    """Run ``work``, cancelled as soon as the client disconnects: a request still waiting for
    its batch then leaves the queue instead of costing a forward pass nobody will read.

    Raises:
        ClientLeft: the client disconnected first.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientLeft
    finally:
        task.cancel()
        watch.cancel()


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone: with the body read, uvicorn's ``receive`` waits until
    the connection closes and then answers ``http.disconnect``."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
