"""``colsmol eval --mode text,hybrid``: the same dataset ranked by page text (BM25) and by both sides fused.

The pages' visual embeddings are the ones ``exact`` used. Page text: Tesseract OCR of each page image (an
evaluation corpus is images; ViDoRe pages have no text layer), made once per corpus page and kept in the
evaluation's temporary store only. Pages and their text go into an ephemeral Qdrant Edge shard, searched as
``colsmol search --mode`` searches: :class:`~retriever.hybrid.HybridSearcher` over the exact index and the store's
BM25 (RRF with ``COLSMOL_FUSION_K`` / ``COLSMOL_FUSION_DEPTH``'s defaults). Queries keep the embeddings computed
once for ``exact``, so latency here is search time only, as for the other configurations.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import ConfigError
from retriever.evaluation.datasets import EvalDataset

Progress = Callable[[str, int, int], None]
SEARCH_MODES = ("visual", "text", "hybrid")


def parse_modes(spec: str | Sequence[str]) -> list[str]:
    """``"visual,text,hybrid"`` -> the modes, in order; ConfigError for an unknown one."""
    parts = [p.strip().lower() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
    bad = [p for p in parts if p not in SEARCH_MODES]
    if bad or not parts:
        raise ConfigError(f"--mode: {', '.join(bad) or 'nothing'} is not a mode; use {', '.join(SEARCH_MODES)}")
    return list(dict.fromkeys(parts))


def page_texts(dataset: EvalDataset, progress: Progress | None = None) -> list[str]:
    """Each corpus page's text by OCR (Tesseract must be installed)."""
    from indexer.text import check_ocr, ocr_image

    if not check_ocr("auto"):
        raise ConfigError(
            "--mode text/hybrid needs each page's text, read by OCR: install Tesseract (Debian/Ubuntu: "
            "apt-get install tesseract-ocr)"
        )
    texts = []
    for i, page in enumerate(dataset.corpus):
        texts.append(ocr_image(page.image(), i + 1).text)
        if progress is not None:
            progress("OCR pages", i + 1, len(dataset.corpus))
    return texts


def rank_by_mode(
    modes: Sequence[str],
    pids: Sequence[str],
    vectors: Sequence[np.ndarray],
    payloads: Sequence[dict[str, Any]],
    texts: Sequence[str],
    queries: Sequence[str],
    qvecs: Sequence[np.ndarray],
    depth: int,
    device: str,
    progress: Progress | None = None,
) -> dict[str, tuple[list[list[str]], list[float], float]]:
    """``{mode: (ranked point ids per query, search seconds per query, store build seconds)}`` for text/hybrid."""
    from indexer.store.edge import EdgeStore
    from indexer.types import PageRecord
    from retriever.hybrid import HybridSearcher
    from retriever.live_index import LiveIndex
    from retriever.pooling import prefetch_vectors
    from retriever.search import ExactSearcher

    out: dict[str, tuple[list[list[str]], list[float], float]] = {}
    by_text = {q: v for q, v in zip(queries, qvecs, strict=True)}
    with tempfile.TemporaryDirectory(prefix="colsmol-eval-modes-") as tmp:
        t = time.perf_counter()
        store = EdgeStore(Path(tmp), f"eval-{uuid.uuid4().hex[:8]}")
        try:
            records = [
                PageRecord(pid, v, {**pay, "text": text}, prefetch_vectors(v, 16))
                for pid, v, pay, text in zip(pids, vectors, payloads, texts, strict=True)
            ]
            for s in range(0, len(records), 64):
                store.upsert_pages(records[s : s + 64])
            build_s = time.perf_counter() - t
            live = LiveIndex(store, device=device)
            searcher = HybridSearcher(ExactSearcher(live, lambda qs: [by_text[q] for q in qs]), store)
            live.load()
            for mode in modes:
                if mode == "visual":
                    continue
                ranked: list[list[str]] = []
                times: list[float] = []
                searcher.search_batch(list(queries[:1]), k=depth, mode=mode)  # type: ignore[arg-type]  # warm-up
                for i, q in enumerate(queries):
                    t = time.perf_counter()
                    hits = searcher.search_batch([q], k=depth, mode=mode)[0]  # type: ignore[arg-type]
                    times.append(time.perf_counter() - t)
                    ranked.append([h.point_id for h in hits])
                    if progress is not None:
                        progress(f"search mode:{mode}", i + 1, len(queries))
                out[mode] = (ranked, times, build_s)
        finally:
            store.close()
    return out
