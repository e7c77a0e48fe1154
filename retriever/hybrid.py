"""Search modes: ``visual`` (MaxSim over page images), ``text`` (BM25 over page text) and ``hybrid`` (both, fused).

The two sides:

- **visual**: the pipeline's :class:`~retriever.search.Searcher` (exact over the resident token index, or two-stage);
- **text**: the store's BM25 search over the sparse ``text`` vectors (:meth:`VectorStore.text_search`).

Fusion is Reciprocal Rank Fusion, as Qdrant computes it: a page's score is ``sum 1 / (k + rank)`` over the sides
that returned it, ranks counted from 0, each side cut at ``depth`` pages. With the exact searcher the visual side
runs in process and the two lists are fused here; with the two-stage searcher the store does the whole search,
both sides and the fusion, in one Qdrant query (:meth:`VectorStore.hybrid_search`). The same
:class:`~indexer.filters.Filter` is applied to both sides, so a filter means the same in every mode.

A hit says which side(s) found it (``Hit.found_by``). When only one side has anything for a query (pages without
a text layer, or text-only pages before their embedding), the fused list is that side's list, and its hits keep
that side's own scores. Cited regions: a page the text side found cites the word boxes of the matched terms
(:func:`text_regions`); a page only the visual side found cites its MaxSim regions.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, Literal, cast

import numpy as np

from indexer.errors import InvalidRequest
from indexer.filters import Filter
from indexer.store.base import VectorStore
from indexer.store.sparse import ENCODER
from retriever.regions import MAX_REGIONS, Region
from retriever.search import ExactSearcher, Hit, Searcher, TwoStageSearcher, _hit

logger = logging.getLogger(__name__)

Mode = Literal["visual", "text", "hybrid"]
MODES: tuple[Mode, ...] = ("visual", "text", "hybrid")
#: In a fusion, the text side keeps only pages scoring at least this share of its best page's BM25 score. RRF
#: looks at ranks only: without a floor, a query such as an identifier ("QX-00012-1234": the rare part matches one
#: page, "qx" matches them all) hands the fusion fifty weak text matches, and any of them that the visual side also
#: ranks beats the one page that holds the identifier (bench/hybrid.py measured it: top 1 in 1 of 12 queries).
TEXT_FLOOR = 0.5
VISUAL: Final = "visual"
TEXT: Final = "text"


def parse_mode(mode: Any) -> Mode | None:
    """A search mode as a caller wrote it (None: the default); InvalidRequest naming the bad value."""
    if mode is None or mode == "":
        return None
    if isinstance(mode, str) and mode.strip().lower() in MODES:
        return cast(Mode, mode.strip().lower())
    raise InvalidRequest(f"mode must be one of {', '.join(MODES)}; got {mode!r}")


def rrf(sides: Sequence[Sequence[str]], k: int) -> list[tuple[str, float, tuple[int, ...]]]:
    """Reciprocal Rank Fusion of ranked id lists: ``(id, sum 1 / (k + rank), which sides)``, best first
    (ranks from 0, as Qdrant's ``Fusion.Rrf``). A tie goes to the page a later side found (the text side, whose
    exact term match is the sharper evidence: an identifier's one page against the visual side's best guess), then
    to the page seen first. (Qdrant's own fusion, used by two-stage search, may order such a tie the other way.)

    >>> [(i, round(s, 4), by) for i, s, by in rrf([["a", "b"], ["b", "c"]], k=60)]
    [('b', 0.0331, (0, 1)), ('a', 0.0167, (0,)), ('c', 0.0164, (1,))]
    >>> [i for i, _, _ in rrf([["v"], ["t"]], k=60)]
    ['t', 'v']
    """
    scores: dict[str, float] = {}
    found: dict[str, list[int]] = {}
    for side, ids in enumerate(sides):
        for rank, pid in enumerate(ids):
            scores[pid] = scores.get(pid, 0.0) + 1.0 / (k + rank)
            found.setdefault(pid, []).append(side)
    order = sorted(scores, key=lambda p: (-scores[p], -max(found[p])))  # stable: then first seen
    return [(p, scores[p], tuple(found[p])) for p in order]


def text_regions(query: str, payload: Mapping[str, Any], max_regions: int = MAX_REGIONS) -> tuple[Region, ...]:
    """The word boxes of ``query``'s terms on a page, in the regions format (page-relative, y down).

    A word matches when Qdrant's BM25 tokenizer (same stemmer, stopwords, languages) turns it into a term of the
    query. Matched words that follow each other on one line merge into one box; a box's ``score`` is the number
    of matched words in it. The best ``max_regions`` boxes, most words first, then top to bottom.
    """
    text, flat = payload.get("text"), payload.get("word_boxes")
    if not isinstance(text, str) or not isinstance(flat, list) or not text:
        return ()
    words = text.split()
    if len(flat) < 4 * len(words):
        return ()
    languages = [_language(payload)]
    wanted = ENCODER.terms(query, languages)
    if not wanted:
        return ()
    memo: dict[str, bool] = {}
    boxes: list[list[float]] = []  # [x0, y0, x1, y1, score, last word index]
    for i, word in enumerate(words):
        hit = memo.get(word)
        if hit is None:
            hit = memo[word] = bool(ENCODER.terms(word, languages) & wanted)
        if not hit:
            continue
        x0, y0, x1, y1 = (v / 1000.0 for v in flat[4 * i : 4 * i + 4])
        last = boxes[-1] if boxes else None
        same_line = last is not None and last[5] == i - 1 and abs(last[1] - y0) < 0.5 * max(y1 - y0, 1e-3)
        if last is not None and same_line:
            last[0], last[1], last[2], last[3] = min(last[0], x0), min(last[1], y0), max(last[2], x1), max(last[3], y1)
            last[4] += 1
            last[5] = i
        else:
            boxes.append([x0, y0, x1, y1, 1.0, i])
    boxes.sort(key=lambda b: (-b[4], b[1], b[0]))
    return tuple(Region(b[0], b[1], max(b[2], b[0]), max(b[3], b[1]), b[4]) for b in boxes[:max_regions])


def _language(payload: Mapping[str, Any]) -> str:
    from indexer.store.sparse import language_of

    return language_of(payload.get("metadata"))


class HybridSearcher:
    """Runs a search in one of the three modes over a visual ``Searcher`` and the ``store``'s text index.

    ``rrf_k`` is the RRF constant, ``depth`` how many pages each side contributes (at least ``k``);
    ``default_mode`` is used when a call names none. On a collection without a text index, ``hybrid`` is
    ``visual`` and ``text`` is refused.
    """

    def __init__(
        self,
        visual: Searcher,
        store: VectorStore,
        *,
        rrf_k: int = 60,
        depth: int = 50,
        default_mode: Mode = "hybrid",
    ) -> None:
        self.visual = visual
        self.store = store
        self.rrf_k = int(rrf_k)
        self.depth = int(depth)
        self.default_mode: Mode = default_mode

    def mode(self, mode: Mode | None) -> Mode:
        """The mode a search really runs in (the default when None; visual without a text index)."""
        chosen = mode or self.default_mode
        if chosen != VISUAL and not self.store.text_enabled:
            if chosen == TEXT:
                raise InvalidRequest(
                    f"collection {self.store.collection!r} has no text index (it was created before colsmol had one); "
                    "search it with mode=visual, or ingest into a new collection (COLSMOL_COLLECTION) for text search"
                )
            return "visual"
        return chosen

    def search_batch(
        self, queries: Sequence[str], k: int = 10, filter: Filter | None = None, mode: Mode | None = None
    ) -> list[list[Hit]]:
        chosen = self.mode(mode)
        if chosen == VISUAL:
            rows = self.visual.search_batch(queries, k, filter)
            return [[replace(h, found_by=(VISUAL,)) for h in row] for row in rows]
        if chosen == TEXT:
            return [self._text(q, k, filter) for q in queries]
        if isinstance(self.visual, TwoStageSearcher):
            return self._fused_in_store(queries, k, filter)
        return self._fused_here(queries, k, filter)

    # ------------------------------------------------------------------ text side
    def _text_ranked(self, query: str, limit: int, filter: Filter | None) -> list[tuple[str, float]]:
        return self.store.text_search(query, limit, filter)

    def _text_side(self, query: str, limit: int, filter: Filter | None) -> list[tuple[str, float]]:
        """The text side of a fusion: BM25 results down to ``TEXT_FLOOR`` of the best score."""
        ranked = self._text_ranked(query, limit, filter)
        if not ranked:
            return ranked
        floor = TEXT_FLOOR * ranked[0][1]
        return [(pid, s) for pid, s in ranked if s >= floor]

    def _text(self, query: str, k: int, filter: Filter | None) -> list[Hit]:
        ranked = self._text_ranked(query, k, filter)
        payloads = self.store.get_payloads([pid for pid, _ in ranked])
        return [self._text_hit(query, pid, score, payloads.get(pid, {}), (TEXT,)) for pid, score in ranked]

    @staticmethod
    def _text_hit(query: str, pid: str, score: float, payload: Mapping[str, Any], by: tuple[str, ...]) -> Hit:
        return replace(_hit(pid, score, payload), regions=text_regions(query, payload), found_by=by)

    # ------------------------------------------------------------------ fusion
    def _fused_here(self, queries: Sequence[str], k: int, filter: Filter | None) -> list[list[Hit]]:
        """Exact visual side in process, BM25 side from the store, RRF here. Cited regions are computed for the
        ``k`` fused hits only, not for every page of the visual side's ``depth``."""
        depth = max(self.depth, k)
        exact = self.visual if isinstance(self.visual, ExactSearcher) else None
        encoded: list[np.ndarray] | None = None
        if exact is not None and exact.encode_queries is not None:
            encoded = exact.encode_queries(list(queries))
            plain = copy.copy(exact)
            plain.regions = None
            visual_rows = plain.search_vectors(encoded, depth, filter)
        else:
            visual_rows = self.visual.search_batch(queries, depth, filter)
        out = []
        for i, (query, visual) in enumerate(zip(queries, visual_rows, strict=True)):
            text = self._text_side(query, depth, filter)
            fused = rrf([[h.point_id for h in visual], [pid for pid, _ in text]], self.rrf_k)[:k]
            by_id = {h.point_id: h for h in visual}
            own_score = dict(text) if not visual else {h.point_id: h.score for h in visual} if not text else None
            need = [pid for pid, _, sides in fused if 1 in sides]
            payloads = self.store.get_payloads(need) if need else {}
            hits = []
            for pid, score, sides in fused:
                by = tuple((VISUAL, TEXT)[s] for s in sides)
                shown = own_score[pid] if own_score is not None else score  # one side only: its own score
                if TEXT in by:
                    hits.append(replace(self._text_hit(query, pid, shown, payloads.get(pid, {}), by), score=shown))
                else:
                    hits.append(replace(by_id[pid], score=shown, found_by=by))
            if encoded is not None and exact is not None and exact.regions is not None:
                hits = self._add_visual_regions(exact, encoded[i], hits)
            out.append(hits)
        return out

    @staticmethod
    def _add_visual_regions(exact: ExactSearcher, query: np.ndarray, hits: list[Hit]) -> list[Hit]:
        """Append the MaxSim regions of the hits the visual side found (after any text regions)."""
        seen = [replace(h, regions=()) for h in hits if VISUAL in h.found_by]
        if not seen:
            return hits
        found = exact._with_regions([query], [seen], exact.live.get().get_vectors)[0]
        regions = {h.point_id: h.regions for h in found}
        return [
            replace(h, regions=(h.regions + regions.get(h.point_id, ()))[:MAX_REGIONS]) if VISUAL in h.found_by else h
            for h in hits
        ]

    def _fused_in_store(self, queries: Sequence[str], k: int, filter: Filter | None) -> list[list[Hit]]:
        """Two-stage: Qdrant runs both sides and the fusion; which side found a hit comes from the BM25 list and
        the RRF score (the part the text rank does not explain came from the visual side)."""
        visual = cast(TwoStageSearcher, self.visual)
        if visual.encode_queries is None:
            raise ValueError("this searcher has no query encoder")
        depth = max(self.depth, k)
        encoded = visual.encode_queries(list(queries))
        out = []
        for query, q in zip(queries, encoded, strict=True):
            qn = np.asarray(q, dtype=np.float32)
            text_side = self._text_side(query, depth, filter)
            fused = self.store.hybrid_search(
                qn, query, k, filter, depth=depth, rrf_k=self.rrf_k, candidates=max(visual.candidates, depth),
                text_depth=len(text_side) or None,  # BM25 order is the same: the pages above the floor
            )
            text_rank = {pid: r for r, (pid, _) in enumerate(text_side)}
            payloads = self.store.get_payloads([pid for pid, _ in fused])
            hits: list[Hit] = []
            for pid, score in fused:
                from_text = 1.0 / (self.rrf_k + text_rank[pid]) if pid in text_rank else 0.0
                by = ((VISUAL,) if score - from_text > 1e-7 else ()) + ((TEXT,) if pid in text_rank else ())
                payload = payloads.get(pid, {})
                if TEXT in by:
                    hits.append(self._text_hit(query, pid, score, payload, by))
                else:
                    hits.append(replace(_hit(pid, score, payload), found_by=by))
            if visual.regions is not None:
                visual.regions.sizes.remember(payloads)
                ids = [h.point_id for h in hits if h.found_by == (VISUAL,)]
                vectors = self.store.get_vectors(ids) if ids else {}
                hits = visual._with_regions([qn], [hits], _lookup(vectors))[0]
            out.append(hits)
        return out


def _lookup(vectors: Mapping[str, Any]) -> Callable[[Sequence[str]], Mapping[str, Any]]:
    return lambda ids: {p: vectors[p] for p in ids if p in vectors}
