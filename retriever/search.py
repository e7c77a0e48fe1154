"""Query -> ranked pages, by one of two strategies chosen once, when the pipeline is built.

:class:`ExactSearcher`: exhaustive MaxSim over the resident token index (a :class:`~retriever.live_index.LiveIndex`),
with filters applied as a page mask *before* top-k (so a filter returns ``k`` hits whenever ``k`` pages match).

:class:`TwoStageSearcher`: for corpora over the memory budget. Qdrant prefetches ``candidates`` pages per query on
the pooled vectors (``store.prefetch``), then the candidates are reranked by exact MaxSim on the device with their
full vectors from ``store.get_vectors``. Nothing is resident.

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
from indexer.models.device import resolve_device
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
    """Qdrant prefetch on pooled vectors, then exact MaxSim rerank of the candidates on the device."""

    def __init__(
        self,
        store: VectorStore,
        encode_queries: EncodeQueries | None = None,
        candidates: int = 200,
        device: str = "auto",
        regions: RegionFinder | None = None,
    ) -> None:
        super().__init__(encode_queries, regions)
        self.store = store
        self.candidates = int(candidates)
        self.device = resolve_device(device)

    def search_vectors(
        self, queries: Sequence[np.ndarray], k: int = 10, filter: Filter | None = None
    ) -> list[list[Hit]]:
        import torch

        from retriever.maxsim import maxsim, pack, pad_queries, topk

        out: list[list[Hit]] = []
        reranked: dict[str, np.ndarray] = {}  # the candidates' vectors, for the hits' regions
        for q in queries:
            qn = np.asarray(q, dtype=np.float32)
            cands = [pid for pid, _ in self.store.prefetch(qn, limit=max(self.candidates, k), doc_filter=filter)]
            vecs = self.store.get_vectors(cands) if cands else {}
            ids = [c for c in cands if c in vecs]
            if not ids:
                out.append([])
                continue
            tokens, offsets = pack([torch.from_numpy(vecs[c]) for c in ids])
            tokens = tokens.to(self.device, torch.float16 if self.device.type == "cuda" else torch.float32)
            qt, qm = pad_queries([qn], device=self.device)
            scores = maxsim(qt, tokens, offsets.to(self.device), qm)
            vals, idx, valid = topk(scores, k)
            payloads = self.store.get_payloads([ids[r] for r, ok in zip(idx[0], valid[0], strict=True) if ok])
            if self.regions is not None:
                self.regions.sizes.remember(payloads)
                reranked.update((pid, vecs[pid]) for pid in payloads)
            out.append(
                [
                    _hit(ids[r], float(s), payloads.get(ids[r], {}))
                    for s, r, ok in zip(vals[0], idx[0], valid[0], strict=True)
                    if ok
                ]
            )
        return self._with_regions(queries, out, lambda ids: {p: reranked[p] for p in ids if p in reranked})
