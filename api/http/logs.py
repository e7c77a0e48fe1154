"""Request ids and structured logs.

Every HTTP response carries ``X-Request-ID``: the client's own (when it sent a sane one: 1 to 64 of
``A-Za-z0-9._-``) or a new random one. While the request runs, the id sits in a context variable, so every log
line written on its behalf (on the event loop, and in the worker threads Starlette runs its blocking parts on)
carries it as ``request_id``. Lines from the shared search and ingest workers belong to no single request.

``COLSMOL_LOG_FORMAT=json`` writes one JSON object a line (``ts``, ``level``, ``logger``, ``message``,
``request_id``, and ``exc`` with a traceback), plus one ``request`` line per request (method, route, status,
seconds) in place of uvicorn's access log; ``text`` (the default) keeps the usual lines, with the id appended.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
REQUEST_ID: ContextVar[str | None] = ContextVar("colsmol_request_id", default=None)
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
access = logging.getLogger("colsmol.access")


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line.

    >>> r = logging.LogRecord("colsmol", logging.INFO, "f.py", 1, "hello %s", ("you",), None)
    >>> r.request_id = "abc"
    >>> json.loads(JsonFormatter().format(r))["message"], json.loads(JsonFormatter().format(r))["request_id"]
    ('hello you', 'abc')
    """

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": REQUEST_ID.get() or _record_id(record),
        }
        for key in ("method", "route", "status", "seconds"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _record_id(record: logging.LogRecord) -> str | None:
    value = getattr(record, "request_id", None)
    return None if value in (None, "-") else str(value)


def configure(log_format: str, level: int = logging.WARNING) -> None:
    """The server's log handler (on the root logger, replacing others), in ``text`` or ``json``: warnings from
    everything, plus uvicorn's and the access lines at info, and collections opening, loading and unloading."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s [request %(request_id)s]"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # JSON lines replace uvicorn's access log with ours (which carries the id); text keeps uvicorn's.
    access.disabled = log_format != "json"
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    for name in ("uvicorn", "colsmol.access", "rag.collections", "api.http.app"):
        logging.getLogger(name).setLevel(min(level, logging.INFO))


class RequestId:
    """ASGI middleware: gives each HTTP request its id (header and context variable) and logs one access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-request-id"), "")
        request_id = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            from api.http.metrics import route_template

            route = route_template(scope)
            access.info(
                "%s %s %d",
                scope.get("method", ""),
                route,
                status[0],
                extra={
                    "method": scope.get("method", ""),
                    "route": route,
                    "status": status[0],
                    "seconds": round(time.perf_counter() - started, 4),
                },
            )
            REQUEST_ID.reset(token)
