"""Streamed answers, shared by ``/v1/answer`` (colsmol's SSE events) and ``/v1/chat/completions`` (OpenAI chunks).

:func:`start_stream` runs a generation on the answers' :class:`~api.http.limits.WorkQueue` (one at a time, a short
line, then 503) and relays its items to the event loop through a queue. The first item comes after search
and prefill, so a bad request still fails as a plain HTTP error. :class:`EventStream` sets the generation's
``stop`` however the response ends (done, failed, or cut short by the client, even before its first byte),
which ends decoding within one step and gives the place in line back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api.http.limits import ClientGone, WorkQueue, until_disconnected
from indexer.errors import ColsmolError

#: Marks the end of a relayed stream.
END = object()


class EventStream(StreamingResponse):
    """An SSE response whose generation stops (``stop`` is set) however the response ends."""

    def __init__(self, content: AsyncIterator[bytes], stop: threading.Event) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.stop = stop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.stop.set()


async def start_stream(
    request: Request, answers: WorkQueue, generate: Callable[[threading.Event], Iterator[Any]], log: Any
) -> tuple[Any, asyncio.Queue[Any], threading.Event]:
    """Run ``generate(stop)`` on the answers' worker; returns its first item, the queue the rest arrive on
    (then :data:`END`; an exception is passed along as an item), and ``stop``."""
    release = answers.admit()
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def emit(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening any more
            stop.set()

    def produce() -> None:
        try:
            if stop.is_set():  # the client left while this waited in line
                return
            pieces = generate(stop)
            try:
                for item in pieces:
                    emit(item)
                    if stop.is_set():
                        break
            finally:
                close = getattr(pieces, "close", None)
                if callable(close):
                    close()
        except Exception as exc:
            if not isinstance(exc, ColsmolError):
                log.exception("streaming an answer failed")
            emit(exc)
        finally:
            release()
            emit(END)

    try:
        answers.submit(produce)
    except BaseException:
        release()
        raise
    first = await until_disconnected(request, queue.get(), stop)
    if first is END:  # only when stopped before it started
        raise ClientGone()
    if isinstance(first, Exception):
        stop.set()
        raise first
    return first, queue, stop


async def relay(first: Any, queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    """``first``, then the queue's items until :data:`END`."""
    item = first
    while item is not END:
        yield item
        item = await queue.get()
