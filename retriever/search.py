"""Query -> ranked pages, by one of two strategies chosen once, when the pipeline is built.

:class:`ExactSearcher`: exhaustive MaxSim over the resident token index (a :class:`~retriever.live_index.LiveIndex`),
with filters applied as a page mask *before* top-k (so a filter returns ``k`` hits whenever ``k`` pages match).

:class:`TwoStageSearcher`: for corpora over the memory budget. Qdrant prefetches ``candidates`` pages per query on
the pooled vectors (``store.prefetch``), then the candidates are reranked by exact MaxSim on the device with their
full vectors from ``store.get_vectors``. Nothing is resident.

Both take encoded queries (``search_vectors``) or texts with a query encoder (``search`` / ``search_batch``), and a
:class:`~indexer.filters.Filter` with the same keys and meaning in both.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.device import resolve_device
from indexer.filters import Filter
from indexer.store.base import VectorStore
from retriever.live_index import LiveIndex

logger = logging.getLogger(__name__)

EncodeQueries = Callable[[Sequence[str]], list[np.ndarray]]


@dataclass(frozen=True)
class Hit:
    """One ranked page."""

    point_id: str
    doc_id: str | None
    source: str | None
    file_name: str | None
    page_number: int | None
    score: float


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
    """Texts -> hits through ``encode_queries(texts) -> [(n_q, dim) float32]``; subclasses rank encoded queries."""

    def __init__(self, encode_queries: EncodeQueries | None = None) -> None:
        self.encode_queries = encode_queries

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

    def __init__(self, live: LiveIndex, encode_queries: EncodeQueries | None = None) -> None:
        super().__init__(encode_queries)
        self.live = live

    def search_vectors(
        self, queries: Sequence[np.ndarray], k: int = 10, filter: Filter | None = None
    ) -> list[list[Hit]]:
        index = self.live.get()
        if not len(index):
            return [[] for _ in queries]
        ranked = index.score(list(queries), k=k, where=filter or None)
        return [[_hit(r.point_id, r.score, r.bits) for r in row] for row in ranked]


class TwoStageSearcher(Searcher):
    """Qdrant prefetch on pooled vectors, then exact MaxSim rerank of the candidates on the device."""

    def __init__(
        self,
        store: VectorStore,
        encode_queries: EncodeQueries | None = None,
        candidates: int = 200,
        device: str = "auto",
    ) -> None:
        super().__init__(encode_queries)
        self.store = store
        self.candidates = int(candidates)
        self.device = resolve_device(device)

    def search_vectors(
        self, queries: Sequence[np.ndarray], k: int = 10, filter: Filter | None = None
    ) -> list[list[Hit]]:
        import torch

        from retriever.maxsim import maxsim, pack, pad_queries, topk

        out: list[list[Hit]] = []
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
            out.append(
                [
                    _hit(ids[r], float(s), payloads.get(ids[r], {}))
                    for s, r, ok in zip(vals[0], idx[0], valid[0], strict=True)
                    if ok
                ]
            )
        return out
