"""The MCP tools (:mod:`api.mcp.server`) on the HTTP server: streamable HTTP at ``/mcp``.

Stateless mode (every request stands alone), so it works the same with ``--workers N``. The tools share the
API's pipeline, search batcher and answer thread. When ``COLSMOL_API_KEY`` is set, ``/mcp`` needs the same
``Authorization: Bearer`` header as ``/v1``. Browsers' cross-origin requests (an ``Origin`` that is not this
server) are refused.

The SDK's session manager must run for the app's lifetime: :func:`mount` wraps the app's lifespan to start it
(and to import the SDK there, not when the API module is imported).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from indexer.errors import ColsmolError, ModelUnavailable, NotFound

if TYPE_CHECKING:
    from fastapi import FastAPI

    from api.mcp.server import Parts
    from rag.types import Answer
    from retriever.search import Hit

PATH = "/mcp"
#: Where the endpoint leaves the caller's :class:`api.keys.Principal` in the request scope's state.
PRINCIPAL = "colsmol_principal"


class McpEndpoint:
    """The ``/mcp`` ASGI endpoint: checks the key and the origin, then hands over to the SDK's transport."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.handler: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        refusal = self._refusal(headers, scope)
        if refusal is not None:
            status, message, extra = refusal
            await _send_json(send, status, {"detail": message}, extra)
            return
        if self.handler is None:
            await _send_json(send, 503, {"detail": "the server is still starting; retry shortly (GET /readyz)"})
            return
        await self.handler(scope, receive, send)

    def _refusal(self, headers: Headers, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        from fastapi import HTTPException

        from api.http.deps import principal_for

        scheme, _, token = headers.get("authorization", "").partition(" ")
        bearer = scheme.lower() == "bearer" and token.strip()
        try:
            principal = principal_for(
                self.app.state.settings, getattr(self.app.state, "keys", None), token.strip() if bearer else None
            )
        except HTTPException as exc:
            return exc.status_code, str(exc.detail), dict(exc.headers or {})
        # The tools read it from their request (the SDK hands them a Request over this scope).
        scope.setdefault("state", {})[PRINCIPAL] = principal
        origin = headers.get("origin")
        if origin and urlsplit(origin).netloc != headers.get("host", ""):
            return 403, f"cross-origin request from {origin} refused", {}
        return None


async def _send_json(send: Send, status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def app_parts(app: FastAPI, collection: str | None, request: Any) -> Parts:
    """The tools' view of the running API for one collection (None: the default one), as the calling key sees
    it: a collection it cannot use is "no collection named ..." (as one that does not exist). Blocks while a cold
    collection's search index loads."""
    from api.http.deps import visible_collection
    from api.mcp.server import Parts
    from indexer.filters import Filter

    state = app.state
    if getattr(state, "pipeline", None) is None or not getattr(state, "ready", False):
        raise ModelUnavailable("the server is still starting: models are loading; retry shortly")
    # Every call through /mcp carries the principal its key made; one without a request is refused.
    principal = getattr(getattr(request, "state", None), PRINCIPAL, None) if request is not None else None
    if principal is None:
        raise NotFound("no collection is reachable without a request's key")
    name = collection or state.settings.collection
    try:
        name = visible_collection(request, principal, name)
    except NotFound:
        raise NotFound(f"no collection named {name[:64]!r}; list_collections names the ones you can use") from None
    services = state.collections.get(name)
    batcher, pipeline = services.batcher, services.pipeline

    async def search(query: str, k: int, flt: Filter, mode: str | None = None) -> list[Hit]:
        hits: list[Hit] = await batcher.search(query, k, flt, mode)
        return hits

    max_new_tokens = state.settings.max_new_tokens

    async def answer(question: str, k: int, flt: Filter) -> Answer:
        # The API's answer queue: one generation at a time, a short line, then "busy" (as /v1/answer's 503).
        try:
            result: Answer = await state.answers.run_detached(
                lambda stop: pipeline.answer(question, k, flt, max_new_tokens, stop=stop)
            )
        except HTTPException as exc:
            raise ColsmolError(str(exc.detail)) from None
        return result

    return Parts(pipeline, services.doc_names, search, answer, max_new_tokens, visible_names(app, request))


def visible_names(app: FastAPI, request: Any) -> list[str]:
    """The collections the calling key may use (``list_collections``)."""
    principal = getattr(getattr(request, "state", None), PRINCIPAL, None) if request is not None else None
    services = getattr(app.state, "collections", None)
    if principal is None or services is None:
        return []
    return [n for n in services.registry.names() if principal.sees(n)]


def mount(app: FastAPI) -> None:
    """Serve the MCP tools at ``/mcp`` on ``app``."""
    endpoint = McpEndpoint(app)
    app.router.routes.append(Route(PATH, endpoint=endpoint, include_in_schema=False))
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with inner(asgi_app) as state:
            from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
            from mcp.server.transport_security import TransportSecuritySettings

            from api.mcp.server import build_server

            server = build_server(
                lambda collection, request: app_parts(app, collection, request),
                lambda request: visible_names(app, request),
            )
            # The Host check assumes a loopback-only server; colsmol is also served behind proxies and on
            # 0.0.0.0. The key and the Origin check above stand in for it.
            server.streamable_http_app(
                stateless_http=True,
                transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            )
            async with server.session_manager.run():
                endpoint.handler = StreamableHTTPASGIApp(server.session_manager)
                try:
                    yield state
                finally:
                    endpoint.handler = None

    app.router.lifespan_context = lifespan
