"""colsmol as an OpenAI-compatible model: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Any OpenAI client (the official SDKs, chat tools, agent frameworks) can ask colsmol questions: the last user
message is the question, answered like ``POST /v1/answer`` (same key, limits and filters; ``k`` and ``filter`` are
extra body fields). The answer text ends with the cited pages as ``[n]`` markers, and the response's extra
``citations`` field lists them with their page image URLs (on the last chunk when streaming).

Streaming sends OpenAI chunk events (``data: {"object": "chat.completion.chunk", ...}``) and then
``data: [DONE]``; a client that disconnects stops the generation. Errors are OpenAI-shaped
(``{"error": {"message", "type", "param", "code"}}``), so SDKs raise their usual exceptions.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from api.http.deps import AnswersDep, PrincipalDep, SettingsDep, services_for, visible_collection
from api.http.metrics import observe_answer, timed_stream
from api.http.openai_schemas import (
    MODEL_ID,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ModelCard,
    ModelList,
    OpenAIError,
    error_body,
)
from api.http.routes.common import DocNames, sources_text
from api.http.schemas import HitOut
from api.http.streams import EventStream, relay, start_stream
from api.keys import Principal
from indexer.errors import ColsmolError, DeviceOutOfMemory, InvalidRequest, ModelUnavailable, NotFound, StoreUnavailable
from indexer.filters import Filter
from indexer.settings import Settings
from rag.pipeline import MAX_QUESTION_CHARS
from rag.types import Answer

log = logging.getLogger(__name__)

#: Largest request body (a chat tool may resend a long history, or images, with every question).
MAX_BODY_BYTES = 8 * 1024 * 1024
STARTED = int(time.time())


def openai_error(status: int, message: str, type: str, code: str | None = None, param: str | None = None) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(message, type, code, param), status_code=status, headers=headers)


def _error_for(exc: Exception) -> Response:
    if isinstance(exc, RequestValidationError):
        problems, param = [], None
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            param = param or (".".join(loc) or None)
            problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
        message = "; ".join(problems) or "invalid request"
        return openai_error(400, message, "invalid_request_error", "invalid_value", param)
    if isinstance(exc, HTTPException):
        kind = {401: ("authentication_error", "invalid_api_key"), 404: ("invalid_request_error", "model_not_found")}
        type_, code = kind.get(exc.status_code, ("invalid_request_error", None))
        return openai_error(exc.status_code, str(exc.detail), type_, code)
    if isinstance(exc, NotFound):
        return openai_error(404, str(exc), "invalid_request_error", "not_found")
    if isinstance(exc, ModelUnavailable | StoreUnavailable):
        return openai_error(503, str(exc), "server_error", "unavailable")
    if isinstance(exc, DeviceOutOfMemory):  # the GPU was full for this request: the SDKs retry on 503 + Retry-After
        response = openai_error(503, str(exc), "server_error", "out_of_memory")
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    assert isinstance(exc, ColsmolError)
    return openai_error(400, str(exc), "invalid_request_error", "invalid_value")


async def _capped_body(request: Request) -> Response | None:
    """Read the body (at most MAX_BODY_BYTES) before FastAPI parses it; a 413 for more."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return openai_error(
            413, f"the request is {declared} bytes; the limit is {MAX_BODY_BYTES}", "invalid_request_error", "too_large"
        )
    if request.method != "POST":
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return openai_error(
                413, f"the request is over {MAX_BODY_BYTES} bytes", "invalid_request_error", "too_large"
            )
    request._body = bytes(body)  # Starlette's cache of the read body: FastAPI parses it from here
    return None


class OpenAIRoute(APIRoute):
    """A route whose errors, including validation, auth and size errors, have OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            try:
                refused = await _capped_body(request)
                return refused or await handler(request)
            except (RequestValidationError, HTTPException, ColsmolError) as exc:
                return _error_for(exc)

        return openai_handler


router = APIRouter(tags=["openai"], route_class=OpenAIRoute, responses={400: {"model": OpenAIError}})


def _model_card(model: str = MODEL_ID) -> ModelCard:
    return ModelCard(id=model, created=STARTED)


def _model_ids(request: Request, principal: Principal) -> list[str]:
    """``colsmol`` (the default collection) and ``colsmol/{name}`` for every other collection this key can use."""
    settings: Settings = request.app.state.settings
    services = getattr(request.app.state, "collections", None)
    names = services.registry.names() if services is not None else [settings.collection]
    ids = [MODEL_ID] if principal.sees(settings.collection) else []
    return ids + [f"{MODEL_ID}/{n}" for n in names if principal.sees(n) and n != settings.collection]


@router.get("/models", response_model=ModelList)
def list_models(request: Request, principal: PrincipalDep) -> ModelList:
    """The models colsmol serves (OpenAI's model listing): ``colsmol`` answers from the default collection,
    ``colsmol/{collection}`` from that collection."""
    return ModelList(data=[_model_card(m) for m in _model_ids(request, principal)])


@router.get("/models/{model:path}", response_model=ModelCard, responses={404: {"model": OpenAIError}})
def get_model(model: str, request: Request, principal: PrincipalDep) -> ModelCard:
    _collection_of_model(model, request, principal)
    return _model_card(model)


def _collection_of_model(model: str, request: Request, principal: Principal) -> str:
    """The collection a ``model`` names: ``colsmol`` the default one, ``colsmol/{name}`` that one; 404 for any
    other, and for a collection this key cannot use (the same answer)."""
    settings: Settings = request.app.state.settings
    name = settings.collection if model == MODEL_ID else model.removeprefix(f"{MODEL_ID}/")
    if model != MODEL_ID and not model.startswith(f"{MODEL_ID}/"):
        name = ""
    try:
        return visible_collection(request, principal, name) if name else _no_model(model)
    except NotFound:
        return _no_model(model)


def _no_model(model: str) -> str:
    raise HTTPException(
        404,
        f"the model {model[:100]!r} does not exist; colsmol serves {MODEL_ID!r} and {MODEL_ID}/<collection> "
        "(GET /v1/models)",
    )


def question_of(messages: Sequence[ChatMessage]) -> str:
    """The last user message's text: the question (earlier turns are context colsmol does not use)."""
    for message in reversed(messages):
        if message.role == "user":
            text = message.text()
            if not text.strip():
                raise InvalidRequest("the last user message has no text")
            if len(text) > MAX_QUESTION_CHARS:
                raise InvalidRequest(
                    f"the last user message is {len(text)} characters; the limit is {MAX_QUESTION_CHARS}"
                )
            return text
    raise InvalidRequest("no user message: the last message with role 'user' is the question")


async def _citations(request: Request, names: DocNames, answer: Answer) -> list[HitOut]:
    return await names.hits_out(answer.sources, base_url=str(request.base_url).rstrip("/"))


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {"content": {"text/event-stream": {}}},
        401: {"model": OpenAIError},
        404: {"model": OpenAIError},
        413: {"model": OpenAIError},
        503: {"model": OpenAIError},
    },
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    answers: AnswersDep,
) -> Any:
    """Answer the last user message from the collection ``model`` names (RAG), citing the pages; OpenAI's chat
    completions API."""
    collection = _collection_of_model(body.model, request, principal)
    question = question_of(body.messages)
    services = await run_in_threadpool(services_for, request, principal, collection)
    pipeline, names = services.pipeline, services.doc_names
    flt = Filter.parse(body.filter)
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.max_new_tokens
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not body.stream:
        answer: Answer = await answers.run(
            request, lambda stop: pipeline.answer(question, body.k, flt, max_tokens, stop=stop, mode=body.mode)
        )
        observe_answer(answer.timings)
        citations = await _citations(request, names, answer)
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[Choice(message=AssistantMessage(content=answer.text + sources_text(citations)))],
            citations=citations,
            warnings=answer.warnings,
        )

    # The first piece comes after search and the model's first token: a failure so far is a plain HTTP error.
    first, queue, stop = await start_stream(
        request,
        answers,
        lambda stop: timed_stream(
            pipeline.stream_answer(question, body.k, flt, max_tokens, stop=stop, mode=body.mode)
        ),
        log,
    )

    def chunk(delta: ChunkDelta, finish: bool = False, citations: list[HitOut] | None = None) -> bytes:
        event = ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[ChunkChoice(delta=delta, finish_reason="stop" if finish else None)],
            citations=citations,
        )
        return b"data: " + event.model_dump_json(exclude_none=True).encode() + b"\n\n"

    async def events() -> AsyncIterator[bytes]:
        yield chunk(ChunkDelta(role="assistant", content=""))
        async for item in relay(first, queue):
            if isinstance(item, Answer):
                citations = await _citations(request, names, item)
                if citations:
                    yield chunk(ChunkDelta(content=sources_text(citations)))
                yield chunk(ChunkDelta(), finish=True, citations=citations)
            elif isinstance(item, Exception):
                # After the first byte the status is sent: the error goes as an event the SDKs raise.
                message = str(item) if isinstance(item, ColsmolError) else f"generation failed: {item}"
                yield b"data: " + json.dumps(error_body(message, "server_error", "generation_failed")).encode()
                yield b"\n\n"
            else:
                yield chunk(ChunkDelta(content=item))
        yield b"data: [DONE]\n\n"

    return EventStream(events(), stop)


