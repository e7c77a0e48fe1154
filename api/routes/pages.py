"""Stored page images (cached forever: point ids are content-derived) and their similarity maps."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response

from api.deps import PipelineDep
from indexer.errors import NotFound

router = APIRouter(tags=["pages"])

CACHE_FOREVER = "public, max-age=31536000, immutable"


@router.get(
    "/pages/{point_id}/image",
    response_class=FileResponse,
    responses={200: {"content": {"image/webp": {}}}, 304: {"description": "Not modified"}, 404: {}},
)
def page_image(
    point_id: str, pipeline: PipelineDep, request: Request, size: Literal["full", "thumb"] = "full"
) -> Response:
    """One page as WebP: ``size=full`` (as rendered) or ``size=thumb`` (longest side 256 px)."""
    try:
        path = pipeline.images.path(point_id, size)
    except ValueError:
        raise NotFound(f"no page with id {point_id!r}") from None
    if not path.is_file():
        raise NotFound(f"no page image for id {point_id!r}")
    etag = f'"{point_id}-{size}"'
    headers = {"Cache-Control": CACHE_FOREVER, "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="image/webp", headers=headers)


@router.get(
    "/pages/{point_id}/explain",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {}, 422: {}},
)
def page_explain(
    point_id: str,
    pipeline: PipelineDep,
    query: Annotated[str, Query(min_length=1, max_length=2000, description="The query whose matches to show.")],
    token: Annotated[int | None, Query(ge=0, description="One query token's map instead of the whole query.")] = None,
) -> Response:
    """The page with a heatmap of the regions that matched ``query`` (a similarity map), as PNG."""
    import io

    smap = pipeline.explain(query, point_id, token=token)
    buf = io.BytesIO()
    smap.overlay().save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})
