"""Stored page images (cached forever: point ids are content-derived) and their similarity maps."""

from __future__ import annotations

import io
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response

from api.http.deps import ExplainsDep, PipelineDep, SettingsDep
from indexer.errors import NotFound

router = APIRouter(tags=["pages"])

# A page's bytes never change under its id. Behind an API key they are not for shared caches.
CACHE_FOREVER = "public, max-age=31536000, immutable"
CACHE_FOREVER_PRIVATE = "private, max-age=31536000, immutable"


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header matches ``etag`` (RFC 9110 weak comparison: a comma-separated list of
    entity tags, each maybe ``W/``-prefixed, or ``*``).

    >>> etag_matches('"a", W/"b"', '"b"'), etag_matches("*", '"b"'), etag_matches('"xb"', '"b"')
    (True, True, False)
    >>> etag_matches('x"b"', '"b"'), etag_matches(None, '"b"')
    (False, False)
    """
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    want = etag.removeprefix("W/")
    return any(tag == want for tag in _entity_tags(if_none_match))


def _entity_tags(header: str) -> list[str]:
    """The opaque tags (with their quotes, without ``W/``) of a comma-separated list; malformed members skipped."""
    tags: list[str] = []
    i, n = 0, len(header)
    while i < n:
        while i < n and header[i] in " \t,":
            i += 1
        start = i
        if header.startswith("W/", i):
            i += 2
        if i < n and header[i] == '"':
            end = header.find('"', i + 1)
            if end < 0:
                break
            after = end + 1
            if after == n or header[after] in " \t,":
                tags.append(header[i : end + 1])
                i = after
                continue
        # not an entity tag: skip to the next comma
        comma = header.find(",", max(i, start + 1))
        i = n if comma < 0 else comma + 1
    return tags


@router.get(
    "/pages/{point_id}/image",
    response_class=FileResponse,
    responses={200: {"content": {"image/webp": {}}}, 304: {"description": "Not modified"}, 404: {}},
)
def page_image(
    point_id: str,
    pipeline: PipelineDep,
    settings: SettingsDep,
    request: Request,
    size: Literal["full", "thumb"] = "full",
) -> Response:
    """One page as WebP: ``size=full`` (as rendered) or ``size=thumb`` (longest side 256 px)."""
    try:
        path = pipeline.images.path(point_id, size)
    except ValueError:
        raise NotFound(f"no page with id {point_id!r}") from None
    if not path.is_file():
        raise NotFound(f"no page image for id {point_id!r}")
    etag = f'"{point_id}-{size}"'
    cache = CACHE_FOREVER_PRIVATE if settings.api_key is not None else CACHE_FOREVER
    headers = {"Cache-Control": cache, "ETag": etag}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="image/webp", headers=headers)


@router.get(
    "/pages/{point_id}/explain",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {}, 422: {}, 503: {"description": "Busy: retry later"}},
)
async def page_explain(
    point_id: str,
    request: Request,
    pipeline: PipelineDep,
    explains: ExplainsDep,
    query: Annotated[str, Query(min_length=1, max_length=2000, description="The query whose matches to show.")],
    token: Annotated[int | None, Query(ge=0, description="One query token's map instead of the whole query.")] = None,
) -> Response:
    """The page with a heatmap of the regions that matched ``query`` (a similarity map), as PNG. The header
    ``X-Query-Tokens`` lists the query tokens shown (JSON), in the order ``token`` indexes them.

    One heatmap is computed at a time, with a short line behind it; when that is full the answer is 503 with
    ``Retry-After``."""

    def render(stop: object) -> tuple[bytes, list[str]]:
        smap = pipeline.explain(query, point_id, token=token)
        buf = io.BytesIO()
        smap.overlay().save(buf, format="PNG")
        return buf.getvalue(), list(smap.query_tokens)

    png, tokens = await explains.run(request, render)
    headers = {"Cache-Control": "no-store", "X-Query-Tokens": json.dumps(tokens)}  # ASCII: json escapes the rest
    return Response(png, media_type="image/png", headers=headers)
