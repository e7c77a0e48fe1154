"""Error bodies: every ``ColsmolError`` and every validation failure becomes a 4xx/503 JSON body here.

Bad input must never turn into a 500 on its way back out. Validation errors echo what was wrong, so the
echo is built here, bounded (a 1 MB query comes back as its first 200 characters, a JSON value nested
900 levels deep as its first few levels) and made encodable (NaN, lone surrogates). Every JSON body is
rendered by :class:`SafeJSONResponse`, which never fails on a string Python holds but UTF-8 cannot encode.
"""

from __future__ import annotations

import json
import math
import re
from itertools import islice
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from api.cli.advert import CLIENT_HEADER
from indexer.errors import (
    ColsmolError,
    ConfigError,
    Conflict,
    DeviceOutOfMemory,
    DocumentError,
    IndexBudgetExceeded,
    Interface,
    InvalidRequest,
    ModelUnavailable,
    NotFound,
    StoreUnavailable,
    for_interface,
)

ERROR_STATUS: list[tuple[type[ColsmolError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (InvalidRequest, 422),
    (DocumentError, 400),
    (ConfigError, 400),
    (ModelUnavailable, 503),
    (DeviceOutOfMemory, 503),
    (StoreUnavailable, 503),
    (IndexBudgetExceeded, 507),  # Insufficient Storage: the search index has no room for it under its budget
]

MAX_ECHO_CHARS = 200  # of one echoed string
MAX_ECHO_ITEMS = 10  # of one echoed list or object
MAX_ECHO_DEPTH = 3  # levels of nesting echoed
MAX_ERRORS = 20  # validation errors listed
MAX_DETAIL_CHARS = 2000


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: a lone surrogate (``"\\ud800"``, valid in JSON text and in a Python str, not in
    UTF-8) is written back as its JSON escape instead of raising ``UnicodeEncodeError`` mid-response.

    >>> SafeJSONResponse({"q": "\\ud800x"}).body
    b'{"q":"\\\\ud800x"}'
    """

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        # Surrogates only ever sit inside JSON strings, where "\\udXXX" is their valid escape.
        return text.encode("utf-8", "backslashreplace")


_SURROGATES = re.compile("[\ud800-\udfff]")


def status_for(exc: ColsmolError) -> int:
    for cls, code in ERROR_STATUS:
        if isinstance(exc, cls):
            return code
    return 400


def clean(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters (saying how long it was), lone surrogates replaced by U+FFFD.

    >>> clean("x" * 500)[-25:]
    'xxxxxxx… (500 characters)'
    >>> clean("\\ud800ok")
    '\\ufffdok'
    """
    cut = text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
    return _SURROGATES.sub("\ufffd", cut) if _has_surrogate(cut) else cut


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def echo(value: Any, depth: int = 0) -> Any:
    """A bounded, JSON-safe copy of a request value for an error body (no recursion past ``MAX_ECHO_DEPTH``).

    >>> echo({"a": [[[[1]]]], "b": float("nan"), "c": list(range(20))})
    {'a': [['…']], 'b': 'nan', 'c': [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, '… 10 more']}
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, bytes | bytearray):
        return clean(bytes(value[: MAX_ECHO_CHARS * 4]).decode("utf-8", "replace"))
    if isinstance(value, dict | list | tuple | set | frozenset):
        if depth >= MAX_ECHO_DEPTH:
            return "…"
        first = list(islice(value.items() if isinstance(value, dict) else value, MAX_ECHO_ITEMS))
        more = len(value) - len(first)
        if isinstance(value, dict):
            out: dict[str, Any] = {clean(str(k), 100): echo(v, depth + 1) for k, v in first}
            if more > 0:
                out["…"] = f"{more} more"
            return out
        seq = [echo(v, depth + 1) for v in first]
        return seq + [f"… {more} more"] if more > 0 else seq
    try:
        return clean(str(value))
    except Exception:  # noqa: BLE001 - an object whose str() fails is still not the client's 500
        return f"<{type(value).__name__}>"


def describe(errors: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """The one-line ``detail`` and the bounded ``errors`` list of a validation failure."""
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    for err in errors[:MAX_ERRORS]:
        if not isinstance(err, dict):
            continue
        loc = [p if isinstance(p, int) else clean(str(p), 100) for p in err.get("loc", ())]
        msg = clean(str(err.get("msg", "invalid")), 500)
        where = ".".join(str(p) for p in loc if p != "body") or "body"
        problems.append(f"{where}: {msg}")
        item: dict[str, Any] = {"type": clean(str(err.get("type", "")), 100), "loc": loc, "msg": msg}
        if "input" in err:
            item["input"] = echo(err["input"])
        if isinstance(err.get("ctx"), dict):
            item["ctx"] = echo(err["ctx"])
        out.append(item)
    if len(errors) > MAX_ERRORS:
        problems.append(f"and {len(errors) - MAX_ERRORS} more")
    return clean("; ".join(problems) or "invalid request", MAX_DETAIL_CHARS), out


def client_interface(request: Request) -> Interface:
    """Whose hints a message gets: the CLI's when colsmol's CLI is the client, else the HTTP API's."""
    return "cli" if request.headers.get(CLIENT_HEADER, "").lower() == "cli" else "http"


async def colsmol_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ColsmolError)
    detail = clean(for_interface(exc, client_interface(request)), MAX_DETAIL_CHARS)
    # The GPU was full for this request: usually another one held the memory, so the client may try again.
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, DeviceOutOfMemory) else None
    return SafeJSONResponse({"detail": detail}, status_for(exc), headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own handler, rendered safely (a detail may quote the client's input)."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    detail = clean(exc.detail, MAX_DETAIL_CHARS) if isinstance(exc.detail, str) else echo(exc.detail)
    return SafeJSONResponse({"detail": detail}, exc.status_code, headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    try:
        detail, errors = describe(list(exc.errors()))
    except RecursionError:  # a pathological input that even the bounded echo could not walk
        detail, errors = "the request body is invalid (nested too deeply to describe)", []
    return SafeJSONResponse({"detail": detail, "errors": errors}, status_code=422)
