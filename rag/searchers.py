"""The searcher a pipeline runs, built from settings: the one place ``COLSMOL_SEARCH_MODE`` is decided.

``exact`` and ``tiered`` search a :class:`~retriever.live_index.LiveIndex` that follows the store (tiered: a
:class:`~retriever.tiered_index.TieredIndex`); ``two-stage`` keeps nothing resident. ``auto`` is exact while the
exact index of the collection fits ``index_memory_gb`` and tiered beyond it; the choice is made when the
pipeline is built (from the store's page count), logged, and shown by ``/readyz``. A collection that outgrows
the budget while a server runs is searched tiered from the next start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from indexer.settings import Settings
from indexer.store.base import VectorStore
from retriever.live_index import LiveIndex
from retriever.regions import RegionFinder
from retriever.search import EncodeQueries, ExactSearcher, Searcher, TwoStageSearcher

log = logging.getLogger(__name__)

#: What ``auto`` assumes a page costs in the exact index: ColSmol pages are about 1,100 tokens of 128 dims.
TOKENS_PER_PAGE = 1100
BYTES_PER_TOKEN = {"fp16": 128 * 2, "int8": 128 + 4}


@dataclass(frozen=True)
class BuiltSearcher:
    searcher: Searcher
    live: LiveIndex | None
    #: the mode searches run in: exact, tiered or two-stage (never auto)
    mode: str
    #: why: "set", or auto's estimate against the budget
    reason: str


def exact_index_bytes(pages: int, dtype: str) -> int:
    """What the exact index of ``pages`` pages takes in memory (an estimate: 1,100 tokens a page)."""
    return pages * TOKENS_PER_PAGE * BYTES_PER_TOKEN[dtype]


def choose_mode(settings: Settings, pages: int) -> tuple[str, str]:
    """``(mode, reason)`` for ``settings.search_mode`` and a collection of ``pages`` pages."""
    if settings.search_mode != "auto":
        return settings.search_mode, "set"
    need = exact_index_bytes(pages, settings.index_dtype) / max(1, settings.pool_factor)
    budget = settings.index_memory_gb * 2**30
    mode = "exact" if need <= budget else "tiered"
    return mode, f"auto: {pages} pages need about {need / 2**30:.1f} GB exact, budget {settings.index_memory_gb:g} GB"


def build_searcher(
    settings: Settings,
    store: VectorStore,
    encode_queries: EncodeQueries | None,
    regions: RegionFinder | None,
) -> BuiltSearcher:
    """The searcher ``settings`` ask for over ``store`` (and the live index it searches, if any)."""
    s = settings
    pages = store.count_pages() if s.search_mode == "auto" else 0
    mode, reason = choose_mode(s, pages)
    log.info("search mode: %s (%s)", mode, reason)
    if mode == "two-stage":
        # Nothing resident: Qdrant proposes candidates from the pooled vectors, the device reranks them.
        searcher: Searcher = TwoStageSearcher(store, encode_queries, s.prefetch_candidates, regions=regions)
        return BuiltSearcher(searcher, None, mode, reason)
    live = LiveIndex(
        store,
        device=s.device,
        dtype=s.index_dtype,
        pool_factor=s.pool_factor,
        tiered=mode == "tiered",
        candidates=s.prefetch_candidates,
        cache_dir=s.data_dir / "index-cache" / s.collection,
        sync_interval_s=s.index_sync_interval_s,
        # ``auto``'s budget is also what the index may hold on an accelerator: growth past it is refused
        memory_budget_bytes=int(s.index_memory_gb * 2**30),
    )
    return BuiltSearcher(ExactSearcher(live, encode_queries, regions=regions), live, mode, reason)
