"""Dynamic batching of searches: requests arriving within a few milliseconds share one encoder pass.

Every search goes through one dedicated worker thread. It takes the first request off the queue, waits
up to ``window_s`` for more (at most ``max_batch``), groups them by filter and runs each group as one
``pipeline.search([q1, q2, ...], k=max_k)`` call; each request then gets its own top-``k`` slice. Results
reach the event loop with ``loop.call_soon_threadsafe``, so the loop never blocks on the GPU.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from api.http.metrics import observe_batch
from indexer.filters import Filter
from rag.pipeline import RAGPipeline
from retriever.search import Hit

log = logging.getLogger(__name__)


@dataclass
class _Request:
    query: str
    k: int
    filter: Filter
    mode: str | None
    future: asyncio.Future[list[Hit]]
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.monotonic)


def _resolve(fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():  # the client went away and the request was cancelled
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class SearchBatcher:
    """Gathers concurrent ``search`` calls into batched pipeline calls on one worker thread."""

    def __init__(self, pipeline: RAGPipeline, window_s: float = 0.003, max_batch: int = 64) -> None:
        self.pipeline = pipeline
        self.window_s = window_s
        self.max_batch = max_batch
        self.batches = 0  # how many pipeline.search calls ran (tests and metrics read it)
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="colsmol-search", daemon=True)
        self._thread.start()

    async def search(self, query: str, k: int, filter: Filter | None = None, mode: str | None = None) -> list[Hit]:
        """Top-``k`` hits for ``query``, scored in a batch with whatever else arrives within the window."""
        filter = filter or Filter()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Hit]] = loop.create_future()
        self._queue.put(_Request(query, k, filter, mode, fut, loop))
        return await fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.window_s
            stop = False
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        observe_batch(len(batch), (started - r.queued_at for r in batch))
        groups: dict[tuple[Filter, str | None], list[_Request]] = {}
        for req in batch:
            groups.setdefault((req.filter, req.mode), []).append(req)
        for (flt, mode), reqs in groups.items():
            k = max(r.k for r in reqs)
            try:
                self.batches += 1
                results = self.pipeline.search_batch([r.query for r in reqs], k=k, filter=flt, mode=mode)
            except Exception as exc:
                log.exception("batched search of %d queries failed", len(reqs))
                for r in reqs:
                    r.loop.call_soon_threadsafe(_resolve, r.future, None, exc)
                continue
            for r, hits in zip(reqs, results, strict=True):
                r.loop.call_soon_threadsafe(_resolve, r.future, list(hits)[: r.k])
