"""Query -> ranked pages, by one of two strategies chosen once, when the pipeline is built.

:class:`ExactSearcher`: exhaustive MaxSim over the resident token index (a :class:`~retriever.live_index.LiveIndex`),
with filters applied as a page mask *before* top-k (so a filter returns ``k`` hits whenever ``k`` pages match).

:class:`TwoStageSearcher`: nothing resident. Qdrant takes ``candidates`` pages per query by the pooled vectors and
ranks them by exact MaxSim over their tokens in the same query (``store.search_two_stage``): no vectors travel.

Both take encoded queries (``search_vectors``) or texts with a query encoder (``search`` / ``search_batch``), and a
:class:`~indexer.filters.Filter` with the same keys and meaning in both. Given a
:class:`~retriever.regions.RegionFinder`, both attach each hit's cited ``regions`` (where on the page the query
matched).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from indexer.filters import Filter
from indexer.store.base import VectorStore
from retriever.live_index import LiveIndex
from retriever.regions import Region, RegionFinder, VectorsOf

logger = logging.getLogger(__name__)

EncodeQueries = Callable[[Sequence[str]], list[np.ndarray]]


@dataclass(frozen=True)
class Hit:
    """One ranked page. ``regions``: where on the page the query matched best, best first
    (:mod:`retriever.regions`; empty when the searcher has no region finder or the page has no layout)."""

    point_id: str
    doc_id: str | None
    source: str | None
    file_name: str | None
    page_number: int | None
    score: float
    regions: tuple[Region, ...] = ()
    #: Which side(s) of the search found the page: ``("visual",)``, ``("text",)`` or both (:mod:`retriever.hybrid`).
    found_by: tuple[str, ...] = ()


def _hit(point_id: str, score: float, bits: Mapping[str, Any]) -> Hit:
    return Hit(
        point_id=point_id,
        doc_id=bits.get("doc_id"),
        source=bits.get("source"),
        file_name=bits.get("file_name"),
        page_number=bits.get("page_number"),
        score=float(score),
    )


class Searcher(ABC):
    """Texts -> hits through ``encode_queries(texts) -> [(n_q, dim) float32]``; subclasses rank encoded queries.
    ``regions`` (optional) gives every hit its cited regions."""

    def __init__(self, encode_queries: EncodeQueries | None = None, regions: RegionFinder | None = None) -> None:
        self.encode_queries = encode_queries
        self.regions = regions

    def _with_regions(
        self, queries: Sequence[np.ndarray], hits: list[list[Hit]], vectors: VectorsOf
    ) -> list[list[Hit]]:
        if self.regions is None or not any(hits):
            return hits
        found = self.regions.find(queries, [[h.point_id for h in row] for row in hits], vectors)
        return [
            [replace(h, regions=r) if r else h for h, r in zip(row, regs, strict=True)]
            for row, regs in zip(hits, found, strict=True)
        ]

    def search(self, query: str, k: int = 10, filter: Filter | None = None) -> list[Hit]:
        """Top-``k`` hits for one query, best first."""
        return self.search_batch([query], k=k, filter=filter)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, filter: Filter | None = None) -> list[list[Hit]]:
        """Top-``k`` hits for each query (one encoder pass, one scoring pass)."""
        if self.encode_queries is None:
            raise ValueError("this searcher has no query encoder; use search_vectors")
        return self.search_vectors(self.encode_queries(list(queries)), k=k, filter=filter)

    @abstractmethod
    def search_vectors(
        self, queries: Sequence[np.ndarray], k: int = 10, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each encoded query ``(n_q, dim)``."""


class ExactSearcher(Searcher):
    """Exact MaxSim over every page of the live token index."""

    def __init__(
        self, live: LiveIndex, encode_queries: EncodeQueries | None = None, regions: RegionFinder | None = None
    ) -> None:
        super().__init__(encode_queries, regions)
        self.live = live

    def search_vectors(
        self, queries: Sequence[np.ndarray], k: int = 10, filter: Filter | None = None
    ) -> list[list[Hit]]:
        index = self.live.get()
        if not len(index):
            return [[] for _ in queries]
        ranked = index.score(list(queries), k=k, where=filter or None)
        hits = [[_hit(r.point_id, r.score, r.bits) for r in row] for row in ranked]
        return self._with_regions(queries, hits, index.get_vectors)


class TwoStageSearcher(Searcher):
    """Nothing resident: one store query per query ranks the ``candidates`` best pages by the pooled vectors by
    exact MaxSim over their tokens (:meth:`~indexer.store.base.VectorStore.search_two_stage`), inside Qdrant.

    No page vectors come back for ranking; only the hits' payloads, and the tokens of the hits themselves when
    cited regions are asked for.
    """

    def __init__(
        self,
        store: VectorStore,
        encode_queries: EncodeQueries | None = None,
        candidates: int = 200,
        regions: RegionFinder | None = None,
    ) -> None:
        super().__init__(encode_queries, regions)
        self.store = store
        self.candidates = int(candidates)

    def search_vectors(
        self, queries: Sequence[np.ndarray], k: int = 10, filter: Filter | None = None
    ) -> list[list[Hit]]:
        out: list[list[Hit]] = []
        for q in queries:
            ranked = self.store.search_two_stage(np.asarray(q, dtype=np.float32), k, self.candidates, filter)
            payloads = self.store.get_payloads([pid for pid, _ in ranked])
            if self.regions is not None:
                self.regions.sizes.remember(payloads)
            out.append([_hit(pid, score, payloads.get(pid, {})) for pid, score in ranked])
        return self._with_regions(queries, out, self.store.get_vectors)
