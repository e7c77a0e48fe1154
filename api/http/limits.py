"""Bounded work: a worker thread with a short line in front of it, and work that stops when its client leaves.

Generating an answer or a heatmap takes seconds of CPU or GPU and gigabytes of memory, so each has one
:class:`WorkQueue`: one thread does the work, at most ``waiting`` more requests wait for it, and any more are
refused at once with 503 and ``Retry-After`` instead of piling up threads.

Every admitted piece of work gets a ``stop`` event. It is set when the client disconnects (while the request
waits in line, runs, or streams), and generators end decoding within one step once it is set
(``rag.generators.base.Generator``); work still waiting in line is skipped. The slot is given back only when
the worker thread is really done, so clients that leave cannot make unbounded work run behind them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import HTTPException, Request

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The status a request gets in the log when its client went away first (nginx's convention; never sent).
CLIENT_GONE = 499


class ClientGone(HTTPException):
    """The client disconnected before the answer was ready; nobody reads what is sent back."""

    def __init__(self) -> None:
        super().__init__(CLIENT_GONE, "the client closed the connection")


async def disconnected(request: Request) -> None:
    """Return once the client has disconnected (call after the request body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnected(request: Request, work: Awaitable[T], stop: threading.Event) -> T:
    """``await work``, unless the client disconnects first: then ``stop`` is set and :class:`ClientGone` raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request was cancelled (server shutdown): the work is for nobody now
        stop.set()
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    stop.set()
    task.cancel()
    raise ClientGone()


def _collect(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class WorkQueue:
    """One worker thread, and room for ``waiting`` more requests in line; beyond that, 503 + Retry-After."""

    def __init__(self, name: str, waiting: int, retry_after_s: int) -> None:
        self.name = name
        self.capacity = 1 + waiting
        self.retry_after_s = retry_after_s
        self._in_flight = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"colsmol-{name}")

    @property
    def in_flight(self) -> int:
        """Requests admitted and not finished: the one running plus those waiting."""
        with self._lock:
            return self._in_flight

    def admit(self) -> Callable[[], None]:
        """Take a place in line (HTTP 503 when there is none); returns the release, safe to call twice."""
        with self._lock:
            if self._in_flight >= self.capacity:
                raise HTTPException(
                    503,
                    f"busy: {self._in_flight} {self.name} requests are running or waiting (the limit is "
                    f"{self.capacity}); retry in {self.retry_after_s} s",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self._in_flight += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self._in_flight -= 1

        return release

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return self._executor.submit(fn)

    async def run(self, request: Request, work: Callable[[threading.Event], T]) -> T:
        """``work(stop)`` on the worker thread, holding a place in line until it returns; ``stop`` is set (and the
        request answered with :class:`ClientGone`) when the client disconnects first."""
        release = self.admit()
        stop = threading.Event()

        def job() -> T:
            try:
                if stop.is_set():
                    raise ClientGone()  # the client left while waiting in line: skip the work
                return work(stop)
            finally:
                release()

        try:
            future = asyncio.wrap_future(self.submit(job))
        except BaseException:
            release()
            raise
        # Never cancel the job itself: a job cancelled before it starts would never give its place back.
        # It sees ``stop`` instead, and its outcome is collected here even when nobody waits for it.
        future.add_done_callback(_collect)
        return await until_disconnected(request, asyncio.shield(future), stop)

    async def run_detached(self, work: Callable[[threading.Event], T]) -> T:
        """``work(stop)`` on the worker thread, holding a place in line, for callers with no HTTP request to
        watch (MCP tools); ``stop`` is set if the awaiting task is cancelled."""
        release = self.admit()
        stop = threading.Event()

        def job() -> T:
            try:
                return work(stop)
            finally:
                release()

        try:
            future = asyncio.wrap_future(self.submit(job))
        except BaseException:
            release()
            raise
        future.add_done_callback(_collect)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
