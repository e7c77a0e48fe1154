"""The HTTP API: ``create_app`` builds the FastAPI app, ``serve`` runs it under uvicorn.

Models load once, in the lifespan, and are warmed up before ``/readyz`` says ready. Every collection
(rag.collections) has its routes under ``/v1/collections/{collection}/``, the default one also at ``/v1/``;
each has one batching search thread (api.http.batcher) and one ingest thread (api.http.jobs) whose job records
survive restarts (api.http.collections); answers and heatmaps go through one bounded worker each
(api.http.limits: a short line, then 503). Who may reach which collection: api.http.deps and api.keys.
Metrics at ``/metrics`` (api.http.metrics); request ids and JSON logs (api.http.logs).
Every ``ColsmolError`` and every validation failure maps to a 4xx/503 JSON body in api.http.errors; uploads and
deletes refuse cross-origin browser requests, and every response carries security headers (api.http.security).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from api.cli.advert import publish as advertise
from api.cli.advert import withdraw
from api.http import errors, metrics
from api.http.collections import CollectionServices
from api.http.deps import principal_for, require_api_key
from api.http.docs import add_docs
from api.http.limits import WorkQueue
from api.http.logs import RequestId
from api.http.logs import configure as configure_logs
from api.http.routes import answer, collections, documents, facets, health, local, pages, search
from api.http.routes import openai as openai_compat
from api.http.security import SecurityHeaders
from api.keys import KeyStore
from api.mcp import mount as mcp_mount
from indexer.errors import ColsmolError, ConfigError
from indexer.models.device import resolve_device
from indexer.settings import Settings
from rag.collections import NAME_HELP, NAME_PATTERN, Collections
from rag.pipeline import RAGPipeline

log = logging.getLogger(__name__)
STATIC = FsPath(__file__).parent / "static"

#: How long a client told "busy" (503) should wait before trying again.
ANSWER_RETRY_AFTER_S = 5
EXPLAIN_RETRY_AFTER_S = 2


def create_app(
    settings: Settings | None = None, pipeline: RAGPipeline | None = None, local_token: str | None = None
) -> FastAPI:
    """The app. ``pipeline`` (already built, e.g. by a test) is used as is and not closed on shutdown.
    ``local_token`` opens ``/v1/local`` (see :mod:`api.http.routes.local`; ``serve`` advertises it)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = pipeline is None
        rag = pipeline if pipeline is not None else await run_in_threadpool(RAGPipeline.from_settings, settings)
        registry = Collections(settings, default=rag)
        metrics.watch(registry)
        try:
            await run_in_threadpool(metrics.load_models, rag)
            app.state.answers = WorkQueue("answer", settings.answer_queue, ANSWER_RETRY_AFTER_S)
            app.state.explains = WorkQueue("explain", settings.explain_queue, EXPLAIN_RETRY_AFTER_S)
            app.state.collections = CollectionServices(registry, settings)
            default = await run_in_threadpool(app.state.collections.get, settings.collection)
            # The default collection's workers, where single-collection code and tests look for them.
            app.state.doc_names, app.state.batcher, app.state.jobs = default.doc_names, default.batcher, default.jobs
            app.state.pipeline = rag
            app.state.ready = True
            log.info("colsmol API ready")
            yield
        finally:
            app.state.ready = False
            for name in ("collections", "answers", "explains"):
                worker = getattr(app.state, name, None)
                if worker is not None:
                    await run_in_threadpool(worker.close)
            app.state.pipeline = app.state.collections = None
            app.state.doc_names = app.state.batcher = app.state.jobs = None
            await run_in_threadpool(registry.close)
            if owned:
                await run_in_threadpool(rag.close)

    app = FastAPI(
        title="colsmol",
        summary="Visual document search and question answering: ColSmolVLM + Qdrant + SmolVLM.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        default_response_class=errors.SafeJSONResponse,
    )
    app.state.settings = settings
    app.state.pipeline = None
    app.state.ready = False
    app.state.local_token = local_token

    app.add_exception_handler(ColsmolError, errors.colsmol_error)
    app.add_exception_handler(RequestValidationError, errors.validation_error)
    app.add_exception_handler(HTTPException, errors.http_error)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(metrics.RequestMetrics)
    app.add_middleware(RequestId)  # outermost: the id is set for everything inside

    app.state.keys = KeyStore(settings.data_dir)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
    for module in (documents, facets, search, answer, pages, local, openai_compat, collections):
        v1.include_router(module.router)
    # Every collection's routes: the same functions, the collection taken from the path (api.http.deps).
    scoped = APIRouter(prefix="/collections/{collection}", dependencies=[Depends(_collection_param)])
    for module in (documents, facets, search, answer, pages, local):
        scoped.include_router(module.router)
    v1.include_router(scoped)
    app.include_router(v1)
    app.include_router(health.router)
    mcp_mount.mount(app)
    add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    if settings.metrics_port is None:

        @app.get("/metrics", include_in_schema=False)
        def metrics_route(request: Request) -> Response:
            """Prometheus metrics (api.http.metrics), for the admin key (COLSMOL_API_KEY)."""
            keys = request.app.state.keys
            auth = request.headers.get("authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            if not principal_for(settings, keys, token).may("admin", None):
                raise HTTPException(403, "GET /metrics needs the admin key (COLSMOL_API_KEY)")
            body, content_type = metrics.exposition()
            return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _collection_param(
    collection: Annotated[str, Path(pattern=f"^{NAME_PATTERN}$", description=f"The collection: {NAME_HELP}.")],
) -> None:
    """Declares (and checks) the ``{collection}`` of the collection-scoped routes; api.http.deps reads it."""


def app_from_env() -> FastAPI:
    """uvicorn factory for multi-worker serving: each worker process builds its app from COLSMOL_* vars."""
    return create_app()


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Run the API under uvicorn. Several workers need the Qdrant server backend (``COLSMOL_QDRANT_URL``)."""
    import uvicorn

    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    configure_logs(settings.log_format)
    if workers > 1 and resolve_device(settings.device).type == "cuda":
        raise ConfigError(
            f"--workers {workers} would load {workers} copies of the encoder, the answer model and the search index "
            "into one GPU's memory; use --workers 1 (it batches concurrent searches), or run one server per GPU "
            "(CUDA_VISIBLE_DEVICES) behind a load balancer"
        )
    if workers == 1:
        # Build and warm the pipeline before uvicorn starts, so a missing model or a store held by
        # another process is one clear line from the CLI, not a traceback from the lifespan.
        rag = RAGPipeline.from_settings(settings)
        try:
            if rag.live_index is not None:
                rag.live_index.progress = progress  # a first start builds the search index: say so
            metrics.load_models(rag)
            if settings.metrics_port is not None:
                metrics.serve_separately(settings.metrics_port, host)
            # Tell colsmol commands on this machine that this process owns the data dir (api.cli.advert).
            advert = advertise(settings.data_dir, settings.collection, host, port, auth=settings.api_key is not None)
            try:
                app = create_app(settings, pipeline=rag, local_token=advert.token)
                uvicorn.run(app, host=host, port=port, log_config=None, access_log=settings.log_format != "json")
            finally:
                withdraw(settings.data_dir, settings.collection, advert)
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
            os.environ[f"COLSMOL_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    uvicorn.run(
        "api.http.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=settings.log_format != "json",
    )
