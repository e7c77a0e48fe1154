"""The HTTP API: ``create_app`` builds the FastAPI app, ``serve`` runs it under uvicorn.

Models load once, in the lifespan, and are warmed up before ``/readyz`` says ready. Searches go through
one batching worker thread (api.batcher), uploads through one ingest worker thread (api.jobs), answers
through one generation thread. Every ``ColsmolError`` maps to a 4xx/503 JSON body in one handler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from api.batcher import SearchBatcher
from api.deps import require_api_key
from api.jobs import JobRunner
from api.routes import answer, documents, health, pages, search
from api.routes import mcp as mcp_routes
from api.routes import openai as openai_compat
from api.routes.common import DocNames
from indexer.errors import (
    ColsmolError,
    ConfigError,
    DocumentError,
    InvalidRequest,
    ModelUnavailable,
    NotFound,
    StoreUnavailable,
)
from indexer.settings import Settings
from rag.pipeline import RAGPipeline

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"

ERROR_STATUS: list[tuple[type[ColsmolError], int]] = [
    (NotFound, 404),
    (InvalidRequest, 422),
    (DocumentError, 400),
    (ConfigError, 400),
    (ModelUnavailable, 503),
    (StoreUnavailable, 503),
]


def status_for(exc: ColsmolError) -> int:
    for cls, code in ERROR_STATUS:
        if isinstance(exc, cls):
            return code
    return 400


def create_app(settings: Settings | None = None, pipeline: RAGPipeline | None = None) -> FastAPI:
    """The app. ``pipeline`` (already built, e.g. by a test) is used as is and not closed on shutdown."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = pipeline is None
        rag = pipeline if pipeline is not None else await run_in_threadpool(RAGPipeline.from_settings, settings)
        try:
            await run_in_threadpool(rag.warm_up)
            app.state.doc_names = DocNames(rag.store)
            app.state.answer_executor = ThreadPoolExecutor(1, thread_name_prefix="colsmol-answer")
            app.state.batcher = SearchBatcher(rag, settings.search_batch_window_ms / 1000, settings.search_max_batch)
            app.state.jobs = JobRunner(rag)
            app.state.pipeline = rag
            app.state.ready = True
            log.info("colsmol API ready")
            yield
        finally:
            app.state.ready = False
            for name in ("jobs", "batcher"):
                worker = getattr(app.state, name, None)
                if worker is not None:
                    await run_in_threadpool(worker.close)
            executor = getattr(app.state, "answer_executor", None)
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
            app.state.pipeline = None
            if owned:
                await run_in_threadpool(rag.close)

    app = FastAPI(
        title="colsmol",
        summary="Visual document search and question answering: ColSmolVLM + Qdrant + SmolVLM.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pipeline = None
    app.state.ready = False

    @app.exception_handler(ColsmolError)
    async def colsmol_error(request: Request, exc: ColsmolError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse(
            {"detail": "; ".join(problems) or "invalid request", "errors": jsonable(exc.errors())}, status_code=422
        )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
    for module in (documents, search, answer, pages, openai_compat):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    mcp_routes.mount(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def jsonable(errors: object) -> object:
    """Validation errors echo the bad input; make it JSON-safe (NaN/Infinity are not JSON, and an
    unencodable 422 body would turn bad input into a 500).

    >>> jsonable([{"input": float("nan"), "loc": ("body", "k")}])
    [{'input': 'nan', 'loc': ['body', 'k']}]
    """
    import math

    from fastapi.encoders import jsonable_encoder

    def finite(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, list):
            return [finite(v) for v in value]
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        return value

    return finite(
        jsonable_encoder(errors, custom_encoder={Exception: str, bytes: lambda b: b.decode("utf-8", "replace")})
    )


def app_from_env() -> FastAPI:
    """uvicorn factory for multi-worker serving: each worker process builds its app from COLSMOL_* vars."""
    return create_app()


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the API under uvicorn. Several workers need the Qdrant server backend (``COLSMOL_QDRANT_URL``)."""
    import uvicorn

    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if workers == 1:
        # Build and warm the pipeline before uvicorn starts, so a missing model or a store held by
        # another process is one clear line from the CLI, not a traceback from the lifespan.
        rag = RAGPipeline.from_settings(settings)
        try:
            rag.warm_up()
            uvicorn.run(create_app(settings, pipeline=rag), host=host, port=port, log_level="info")
        finally:
            rag.close()
        return
    if not settings.qdrant_url:
        raise ConfigError(
            f"--workers {workers} needs the Qdrant server backend: embedded Qdrant Edge lives in one process. "
            "Set COLSMOL_QDRANT_URL (docker compose starts a server), or use --workers 1."
        )
    # Worker processes rebuild their settings from the environment: hand this object's values down.
    for name, value in settings.model_dump().items():
        if value is not None:
            os.environ[f"COLSMOL_{name.upper()}"] = str(value)
    uvicorn.run("api.app:app_from_env", factory=True, host=host, port=port, workers=workers, log_level="info")
