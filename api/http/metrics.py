"""What an operator watches: Prometheus metrics through ``prometheus-client``, at ``GET /metrics``.

``GET /metrics`` on the API port needs the admin key (``COLSMOL_API_KEY``; open on a server without keys); with
``COLSMOL_METRICS_PORT`` set it is served on that port instead (no key: bind it where only the scraper reaches),
and the API port has none. docs/operations.md lists every metric, a scrape config and what to alert on.

- ``colsmol_http_requests_total`` and ``colsmol_http_request_duration_seconds`` by method, route template
  (``/v1/collections/{collection}/search``, never the raw path, so ids cannot explode the label set) and status;
- ``colsmol_search_batch_size`` and ``colsmol_search_queue_wait_seconds`` (api.http.batcher);
- ``colsmol_ingest_pages_total`` and ``colsmol_ingest_stage_seconds_total`` by collection and stage (the busy
  view of :mod:`indexer.stages`: load, calibrate, render, text, preprocess, encode, images, store);
- ``colsmol_index_bytes``, ``colsmol_index_pages`` and ``colsmol_index_loaded`` by collection (read at scrape time),
  ``colsmol_index_load_seconds`` by collection;
- ``colsmol_model_load_seconds`` by model (encoder, generator);
- ``colsmol_answer_first_token_seconds``, ``colsmol_answer_tokens_per_second`` (streamed answers: the generator's
  streamed text pieces after the first, per second of decoding) and ``colsmol_answer_seconds`` (every answer);
- the process's own (``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ...).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from indexer.ingest import IngestReport
    from rag.collections import Collections
    from rag.pipeline import RAGPipeline

T = TypeVar("T")
#: One registry per process, as Prometheus scrapes processes (not the global default one, which libraries fill).
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REQUESTS = Counter(
    "colsmol_http_requests_total", "HTTP requests answered.", ["method", "route", "status"], registry=REGISTRY
)
REQUEST_SECONDS = Histogram(
    "colsmol_http_request_duration_seconds",
    "Time to answer an HTTP request (to the end of the body, streams included).",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
SEARCH_BATCH = Histogram(
    "colsmol_search_batch_size",
    "Queries scored together in one batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
SEARCH_WAIT = Histogram(
    "colsmol_search_queue_wait_seconds",
    "Time a search waited for its batch to start.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
    registry=REGISTRY,
)
INGEST_PAGES = Counter("colsmol_ingest_pages_total", "Pages embedded and stored.", ["collection"], registry=REGISTRY)
INGEST_STAGE = Counter(
    "colsmol_ingest_stage_seconds_total",
    "Busy seconds of each ingest stage, summed over its threads.",
    ["collection", "stage"],
    registry=REGISTRY,
)
INDEX_LOAD = Histogram(
    "colsmol_index_load_seconds",
    "Time to load a collection's search index (from its cache, or built from the store).",
    ["collection"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
    registry=REGISTRY,
)
MODEL_LOAD = Gauge(
    "colsmol_model_load_seconds", "Time the last load of each model took.", ["model"], registry=REGISTRY
)
FIRST_TOKEN = Histogram(
    "colsmol_answer_first_token_seconds",
    "Time from a streamed answer's start to its first text (search, page loading and prefill).",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TOKENS_PER_SECOND = Histogram(
    "colsmol_answer_tokens_per_second",
    "Decode speed of a streamed answer: text pieces after the first, per second.",
    buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    registry=REGISTRY,
)
ANSWER_SECONDS = Histogram(
    "colsmol_answer_seconds",
    "Time to a whole answer (search and generation; streamed ones to their last text).",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)


class _IndexCollector(Collector):
    """Per-collection index figures, read from every live registry when scraped."""

    def __init__(self) -> None:
        self.registries: weakref.WeakSet[Collections] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily(
            "colsmol_index_bytes", "Memory the collection's search index holds.", labels=["collection"]
        )
        pages = GaugeMetricFamily("colsmol_index_pages", "Pages in the collection's store.", labels=["collection"])
        loaded = GaugeMetricFamily(
            "colsmol_index_loaded", "1 when the collection's search index is in memory.", labels=["collection"]
        )
        for registry in list(self.registries):
            for name, rag in registry.opened():
                size.add_metric([name], registry.index_bytes(name))
                loaded.add_metric([name], 1.0 if rag.live_index is None or rag.live_index.loaded else 0.0)
                try:
                    pages.add_metric([name], rag.store.count_pages())
                except Exception:  # noqa: BLE001, S112 - a store that cannot answer now is left out of this scrape
                    continue
        yield from (size, pages, loaded)


_INDEXES = _IndexCollector()
REGISTRY.register(_INDEXES)


def watch(registry: Collections) -> None:
    """Report this registry's collections (and time their index loads)."""
    _INDEXES.registries.add(registry)
    registry.on_load = lambda name, seconds: INDEX_LOAD.labels(name).observe(seconds)


def observe_ingest(collection: str) -> Callable[[IngestReport], None]:
    def observe(report: IngestReport) -> None:
        INGEST_PAGES.labels(collection).inc(report.pages_embedded)
        # The busy view (indexer.stages): each stage's own work, so a stage's rate shows what it costs.
        for stage, seconds in report.stages.get("busy", {}).items():
            INGEST_STAGE.labels(collection, stage).inc(seconds)

    return observe


def observe_answer(timings: dict[str, float]) -> None:
    """A whole (not streamed) answer: its search and generation time."""
    if "generate" in timings:
        ANSWER_SECONDS.observe(timings.get("search", 0.0) + timings["generate"])


def observe_batch(size: int, waits: Iterable[float]) -> None:
    SEARCH_BATCH.observe(size)
    for w in waits:
        SEARCH_WAIT.observe(w)


def load_models(rag: RAGPipeline) -> None:
    """Load the pipeline's models, timing each one that was not loaded yet, then warm the pipeline up."""
    for model, part in (("encoder", rag.encoder), ("generator", rag.generator)):
        if part is not None and not part.loaded:
            started = time.perf_counter()
            part.load()
            MODEL_LOAD.labels(model).set(time.perf_counter() - started)
    rag.warm_up()


def timed_stream(pieces: Iterable[T]) -> Iterator[T]:
    """Pass a streamed answer through (text pieces, then its final Answer), observing its first-text time,
    decode speed and total time when the final item passes (a consumer need not exhaust the iterator)."""
    started = time.perf_counter()
    first: float | None = None
    count = 0
    try:
        for piece in pieces:
            now = time.perf_counter()
            if isinstance(piece, str):
                if piece:
                    if first is None:
                        first = now
                        FIRST_TOKEN.observe(now - started)
                    count += 1
            else:
                ANSWER_SECONDS.observe(now - started)
                if first is not None and count > 1 and now > first:
                    TOKENS_PER_SECOND.observe((count - 1) / (now - first))
            yield piece
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # a client that went away stops the generation now, not when this is collected


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_separately(port: int, host: str) -> Any:
    """``COLSMOL_METRICS_PORT``: the metrics on their own port (a thread), no key."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=REGISTRY)


def route_template(scope: Scope) -> str:
    """The matched route's template: the path with each path parameter's value put back as ``{name}`` (the
    routes of nested routers do not carry their full template); ``unmatched`` for a path no route took.

    >>> route_template({"route": object(), "path": "/v1/collections/a/pages/p1/image",
    ...                 "path_params": {"collection": "a", "point_id": "p1"}})
    '/v1/collections/{collection}/pages/{point_id}/image'
    >>> route_template({"path": "/nope"})
    'unmatched'
    """
    path: str = scope.get("path", "")
    if scope.get("route") is None:
        return "/static" if path.startswith("/static/") else "unmatched"
    params = scope.get("path_params") or {}
    for name, value in sorted(params.items(), key=lambda kv: -len(str(kv[1]))):
        value = str(value)
        if value:
            path = path.replace(f"/{value}/", f"/{{{name}}}/", 1) if f"/{value}/" in path else (
                path[: -len(value)] + f"{{{name}}}" if path.endswith(f"/{value}") else path
            )
    return path


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            labels = (scope.get("method", "GET"), route_template(scope), str(status[0]))
            REQUESTS.labels(*labels).inc()
            REQUEST_SECONDS.labels(*labels).observe(time.perf_counter() - started)
