"""Liveness and readiness probes (outside /v1: never behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.http.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and serving HTTP."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> Health | JSONResponse:
    """Models are loaded and warmed up, and the vector store answers. ``collections`` gives each collection's
    search index state: ``ready``, ``cold`` (loads on its first request, which waits for it), ``loading`` or
    ``failed: <why>``."""
    pipeline = getattr(request.app.state, "pipeline", None)
    if pipeline is None or not getattr(request.app.state, "ready", False):
        return JSONResponse({"status": "starting", "detail": "models are loading"}, status_code=503)
    try:
        pages = await run_in_threadpool(pipeline.store.count_pages)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "detail": f"vector store: {exc}"}, status_code=503)
    services = getattr(request.app.state, "collections", None)
    # Ready means the default collection serves; the others load on their first request (their state here).
    states = await run_in_threadpool(services.registry.states) if services is not None else None
    return Health(
        status="ready",
        detail=f"{pages} pages indexed",
        collections=states,
        search_mode=getattr(pipeline, "search_mode", None),
    )
