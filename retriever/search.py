"""Query -> ranked pages.

:class:`Searcher`: exhaustive MaxSim over the resident :class:`~retriever.token_index.TokenIndex`, with filters
applied as a page mask *before* top-k (so a filter returns ``k`` hits whenever ``k`` pages match).

:class:`TwoStageSearcher`: for corpora over the memory budget. Qdrant prefetches ``candidates`` pages per query on
the pooled vectors (``store.prefetch``), then the candidates are reranked by exact MaxSim on the device, with their
full vectors taken from the index when resident, else from ``store.get_vectors`` when the store offers it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EncodeQueries = Callable[[list[str]], list[np.ndarray]]


@dataclass(frozen=True)
class Hit:
    """One ranked page."""

    point_id: str
    doc_id: str | None
    source: str | None
    file_name: str | None
    page_number: int | None
    score: float


def _hit(point_id: str, score: float, bits: dict[str, Any]) -> Hit:
    return Hit(
        point_id=point_id,
        doc_id=bits.get("doc_id"),
        source=bits.get("source"),
        file_name=bits.get("file_name"),
        page_number=bits.get("page_number"),
        score=float(score),
    )


def _as_query_list(query_vectors: Any) -> tuple[list[np.ndarray], bool]:
    """``(n_q, dim)`` -> ([it], single=True); a list / ``(Q, n_q, dim)`` -> (list, single=False)."""
    if isinstance(query_vectors, np.ndarray) and query_vectors.ndim == 2:
        return [query_vectors], True
    if hasattr(query_vectors, "ndim") and not isinstance(query_vectors, np.ndarray) and query_vectors.ndim == 2:
        return [np.asarray(query_vectors.detach().cpu().float())], True
    return [np.asarray(q, dtype=np.float32) if isinstance(q, np.ndarray) else q for q in query_vectors], False


class Searcher:
    """Exact MaxSim search over a resident token index.

    ``encode_queries(texts) -> [ (n_q, dim) float32 ]`` is the query encoder (ColSmolVLM in production).
    """

    def __init__(self, store: Any, index: Any, encode_queries: EncodeQueries | None = None) -> None:
        self.store = store
        self.index = index
        self.encode_queries = encode_queries

    def _encode(self, query: str | list[str]) -> tuple[list[np.ndarray], bool]:
        if self.encode_queries is None:
            raise ValueError("this Searcher has no query encoder; use search_vectors")
        single = isinstance(query, str)
        texts = [query] if single else list(query)
        return list(self.encode_queries(texts)), single

    def search(
        self, query: str | list[str], k: int = 10, filter: dict[str, Any] | None = None
    ) -> list[Hit] | list[list[Hit]]:
        """Top-``k`` hits for one query (a list of hits) or several (a list of lists)."""
        vecs, single = self._encode(query)
        res = self.search_vectors(vecs, k=k, filter=filter)
        return res[0] if single else res

    def search_vectors(
        self, query_vectors: np.ndarray | Sequence[np.ndarray], k: int = 10, filter: dict[str, Any] | None = None
    ) -> list[Hit] | list[list[Hit]]:
        """As :meth:`search` with encoded queries: one ``(n_q, dim)`` array or a list of them."""
        qs, single = _as_query_list(query_vectors)
        ranked = self.index.score(qs, k=k, where=filter)
        hits = [[_hit(r.point_id, r.score, r.bits) for r in row] for row in ranked]
        return hits[0] if single else hits


class TwoStageSearcher(Searcher):
    """Qdrant prefetch on pooled vectors, then exact MaxSim rerank of the candidates on the device.

    ``index`` may be ``None`` or hold only part of the corpus; candidates not resident are fetched with
    ``store.get_vectors(ids) -> {id: (n_tokens, dim)}``.
    """

    def __init__(
        self,
        store: Any,
        index: Any = None,
        encode_queries: EncodeQueries | None = None,
        candidates: int = 200,
        device: str = "auto",
    ) -> None:
        super().__init__(store, index, encode_queries)
        self.candidates = int(candidates)
        from retriever.token_index import _resolve_device

        self.device = _resolve_device(device)

    def search_vectors(
        self, query_vectors: np.ndarray | Sequence[np.ndarray], k: int = 10, filter: dict[str, Any] | None = None
    ) -> list[Hit] | list[list[Hit]]:
        import torch

        from retriever.maxsim import maxsim, pack, pad_queries, topk

        qs, single = _as_query_list(query_vectors)
        out: list[list[Hit]] = []
        for q in qs:
            qn = np.asarray(q.detach().cpu() if hasattr(q, "detach") else q, dtype=np.float32)
            cands = [pid for pid, _ in self.store.prefetch(qn, limit=max(self.candidates, k), doc_filter=filter)]
            if not cands:
                out.append([])
                continue
            vecs: dict[str, Any] = self.index.get_vectors(cands) if self.index is not None else {}
            missing = [c for c in cands if c not in vecs]
            if missing:
                getter = getattr(self.store, "get_vectors", None)
                if getter is None:
                    raise RuntimeError(
                        f"{len(missing)} prefetch candidates are not in the token index and the store has no "
                        "get_vectors(ids); build the index from the store or use a store that can fetch vectors"
                    )
                vecs.update(getter(missing))
            ids = [c for c in cands if c in vecs]
            tokens, offsets = pack([torch.as_tensor(vecs[c]).float() for c in ids])
            tokens = tokens.to(self.device, torch.float16 if self.device.type == "cuda" else torch.float32)
            qt, qm = pad_queries(qn, device=self.device)
            scores = maxsim(qt, tokens, offsets.to(self.device), qm)
            vals, idx, valid = topk(scores, k)
            payloads = self._bits(ids)
            out.append(
                [
                    _hit(ids[r], float(s), payloads.get(ids[r], {}))
                    for s, r, ok in zip(vals[0], idx[0], valid[0], strict=True)
                    if ok
                ]
            )
        return out[0] if single else out

    def _bits(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        bits: dict[str, dict[str, Any]] = {}
        if self.index is not None:
            for pid in ids:
                b = self.index.payload_bits(pid)
                if b is not None:
                    bits[pid] = b
        missing = [pid for pid in ids if pid not in bits]
        if missing:
            bits.update(self.store.get_payloads(missing))
        return bits
