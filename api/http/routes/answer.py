"""POST /v1/answer: a cited answer as JSON, or streamed as Server-Sent Events.

Stream events: ``token`` (data: a JSON string, one piece of text) as generated, then ``sources``
(data: ``{"sources": [hit...], "timings": {...}, "warnings": [...]}``), then ``done``. A failure after
the stream started is sent as ``error`` (data: ``{"detail": "..."}``).

Generation runs on the answers' :class:`~api.http.limits.WorkQueue` thread (one at a time, a short line, then 503);
the event loop only relays pieces. When the client disconnects (waiting, generating or streaming), the
generation's ``stop`` event is set and decoding ends within one step.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from api.http.deps import AnswersDep, DocNamesDep, PipelineDep, SettingsDep
from api.http.errors import client_interface
from api.http.metrics import observe_answer, timed_stream
from api.http.routes.common import DocNames
from api.http.schemas import AnswerRequest, AnswerResponse
from api.http.streams import EventStream, relay, start_stream
from indexer.errors import ColsmolError, Interface, for_interface
from indexer.filters import Filter
from rag.types import Answer

log = logging.getLogger(__name__)
router = APIRouter(tags=["answer"])

def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.post(
    "/answer",
    response_model=AnswerResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 422: {}, 503: {"description": "Busy: retry later"}},
)
async def answer(
    body: AnswerRequest,
    request: Request,
    pipeline: PipelineDep,
    settings: SettingsDep,
    answers: AnswersDep,
    names: DocNamesDep,
) -> Any:
    """Answer ``question`` from the top-``k`` pages, citing them."""
    max_new_tokens = body.max_new_tokens or settings.max_new_tokens
    flt = Filter.parse(body.filter)  # a bad filter is a 422 here, before any work
    if not body.stream:
        result: Answer = await answers.run(
            request, lambda stop: pipeline.answer(body.question, body.k, flt, max_new_tokens, stop=stop, mode=body.mode)
        )
        observe_answer(result.timings)
        return AnswerResponse(
            text=for_interface(result.text, client_interface(request)),
            sources=await names.hits_out(result.sources),
            timings=result.timings,
            warnings=result.warnings,
        )

    # The first piece comes after search and prefill: a bad request fails here, as a plain 4xx.
    first, queue, stop = await start_stream(
        request,
        answers,
        lambda stop: timed_stream(
            pipeline.stream_answer(body.question, body.k, flt, max_new_tokens, stop=stop, mode=body.mode)
        ),
        log,
    )
    return EventStream(_events(first, queue, names, client_interface(request)), stop)


async def _events(
    first: Any, queue: asyncio.Queue[Any], names: DocNames, interface: Interface
) -> AsyncIterator[bytes]:
    async for item in relay(first, queue):
        if isinstance(item, Answer):
            sources = [h.model_dump() for h in await names.hits_out(item.sources)]
            yield sse("sources", {"sources": sources, "timings": item.timings, "warnings": item.warnings})
        elif isinstance(item, Exception):
            detail = for_interface(item, interface) if isinstance(item, ColsmolError) else "generation failed"
            yield sse("error", {"detail": detail})
        else:
            yield sse("token", for_interface(item, interface))
    yield sse("done", {})
