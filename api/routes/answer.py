"""POST /v1/answer: a cited answer as JSON, or streamed as Server-Sent Events.

Stream events: ``token`` (data: a JSON string, one piece of text) as generated, then ``sources``
(data: ``{"sources": [hit...], "timings": {...}, "warnings": [...]}``), then ``done``. A failure after
the stream started is sent as ``error`` (data: ``{"detail": "..."}``).
Generation runs on the app's answer thread; the event loop only relays pieces.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import AnswerExecutorDep, DocNamesDep, PipelineDep, SettingsDep
from api.schemas import AnswerRequest, AnswerResponse
from indexer.filters import Filter
from rag.types import Answer

log = logging.getLogger(__name__)
router = APIRouter(tags=["answer"])

_END = object()


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.post(
    "/answer",
    response_model=AnswerResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 422: {}, 503: {}},
)
async def answer(
    body: AnswerRequest,
    pipeline: PipelineDep,
    settings: SettingsDep,
    executor: AnswerExecutorDep,
    names: DocNamesDep,
) -> Any:
    """Answer ``question`` from the top-``k`` pages, citing them."""
    max_new_tokens = body.max_new_tokens or settings.max_new_tokens
    flt = Filter.parse(body.filter)  # a bad filter is a 422 here, before any work
    loop = asyncio.get_running_loop()
    if not body.stream:
        result: Answer = await loop.run_in_executor(
            executor, lambda: pipeline.answer(body.question, body.k, flt, max_new_tokens)
        )
        return AnswerResponse(
            text=result.text,
            sources=await names.hits_out(result.sources),
            timings=result.timings,
            warnings=result.warnings,
        )

    pieces = pipeline.stream_answer(body.question, body.k, flt, max_new_tokens)
    # The first piece comes after search and prefill: a bad request fails here, as a plain 4xx.
    first = await loop.run_in_executor(executor, next, pieces)
    return StreamingResponse(
        _events(first, pieces, loop, executor, names),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    first: str | Answer, pieces: Iterator[str | Answer], loop: asyncio.AbstractEventLoop, executor: Any, names: Any
) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in pieces:
                loop.call_soon_threadsafe(queue.put_nowait, item)
                if stop.is_set():  # the client went away: stop generating
                    break
        except Exception as exc:
            log.exception("streaming answer failed")
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            if stop.is_set() and hasattr(pieces, "close"):
                pieces.close()
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    loop.run_in_executor(executor, produce)
    item: Any = first
    try:
        while item is not _END:
            if isinstance(item, Answer):
                sources = [h.model_dump() for h in await names.hits_out(item.sources)]
                yield sse("sources", {"sources": sources, "timings": item.timings, "warnings": item.warnings})
            elif isinstance(item, Exception):
                yield sse("error", {"detail": str(item)})
            else:
                yield sse("token", item)
            item = await queue.get()
        yield sse("done", {})
    finally:
        stop.set()
