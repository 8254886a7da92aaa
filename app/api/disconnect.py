"""A client that goes away: its work that has not started is dropped, and it is counted apart.

A client may close its connection at any moment: while it uploads (Starlette raises ClientDisconnect
from the body stream) or while its images wait for the encoder. Neither is the server's fault, so
neither is logged as an error nor counted as a 5xx (an alert on the 5xx rate would fire on clients'
behaviour); it is answered, to nobody, with nginx's 499 "client closed request" and logged at info.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from starlette.requests import ClientDisconnect

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone. Call only once the body has been read: from then on the
    server's next message is http.disconnect (when the client goes, or once the response is sent)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientDisconnect as soon as the client goes: `work` is then
    cancelled, so images still queued for the encoder are dropped before it runs them (the batcher
    skips cancelled items). Work already in a thread runs to its end; its result is not used."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not task.done():  # cancelled above: let it unwind (it may raise anything on the way)
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved, so that asyncio does not log it as never retrieved
        raise ClientDisconnect()
    return task.result()
