"""Cited regions: the few page rectangles where a query's tokens found their MaxSim matches.

MaxSim scores a page as ``sum_i max_j q_i . d_j``. Each query token ``i`` has a winning page token
``argmax_j q_i . d_j``: the place its term of the score came from. The winners that are image tokens are put
on the page through its token layout (:mod:`indexer.models.token_layout`: tiles, global view, pixel-shuffle cells;
derived from the page's stored width and height and the encoder processor's configuration, so pages indexed
before regions existed get them too). Winners among the prompt's text tokens have no place on the page and
are left out.

Winning cells merge into boxes when they overlap, touch, or lie within ``gap`` empty cells of each other
(a global-view cell covers a ``rows x cols`` block of tile cells, so it merges with the tile cells it
overlaps). A box's ``score`` is the sum of the MaxSim terms won inside it; the best ``max_regions`` boxes are
returned, best first, as page-relative ``x0, y0, x1, y1`` in ``[0, 1]`` (x to the right, y down). The scores
of all boxes plus the terms won by text tokens add up to the page's MaxSim score.

Cost per hit: one ``(n_q, n_tokens)`` product with the page's resident vectors
(:meth:`~retriever.token_index.TokenIndex.get_vectors`) and a few numpy operations on ``n_q`` winners
(BENCHMARKS.md: "Cited regions").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.models.token_layout import PageLayouts, TokenCells
from indexer.store.base import VectorStore

logger = logging.getLogger(__name__)

MAX_REGIONS = 3
GAP = 1


@dataclass(frozen=True)
class Region:
    """A page rectangle, page-relative (``0 <= x0 < x1 <= 1``, y down), and the MaxSim terms won inside it."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    def to_dict(self, digits: int = 4) -> dict[str, float]:
        """Rounded for JSON output (coordinates to ``digits``, the score to 6 like hit scores)."""
        r = round
        return {"x0": r(self.x0, digits), "y0": r(self.y0, digits), "x1": r(self.x1, digits),
                "y1": r(self.y1, digits), "score": r(self.score, 6)}  # fmt: skip


def merge_cells(
    boxes: np.ndarray,
    scores: np.ndarray,
    grid: tuple[int, int],
    max_regions: int = MAX_REGIONS,
    gap: int = GAP,
) -> tuple[Region, ...]:
    """Winning cells -> the best ``max_regions`` merged boxes.

    ``boxes`` is ``(n, 4)`` grid boxes ``[gy0, gx0, gy1, gx1)`` on a ``grid = (gh, gw)`` grid, ``scores`` the
    ``(n,)`` MaxSim terms won there. Two boxes merge when at most ``gap`` empty cells separate them along both
    axes (so touching diagonal neighbours merge with ``gap=0``).

    Two touching cells in the top-left corner and a lone one at the bottom right of a 4 x 4 grid:

    >>> b = np.array([[0, 0, 1, 1], [0, 1, 1, 2], [3, 3, 4, 4]])
    >>> [(r.x0, r.y0, r.x1, r.y1, r.score) for r in merge_cells(b, np.array([0.5, 0.25, 1.0]), (4, 4))]
    [(0.75, 0.75, 1.0, 1.0, 1.0), (0.0, 0.0, 0.5, 0.25, 0.75)]
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.shape[0] == 0 or max_regions <= 0:
        return ()
    # Several query tokens often win the same cell: one box each, their terms added (boxes keyed as one integer).
    side = int(boxes.max()) + 1
    keys = ((boxes[:, 0] * side + boxes[:, 1]) * side + boxes[:, 2]) * side + boxes[:, 3]
    _, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    uniq = boxes[first]
    won = np.bincount(inv.reshape(-1), weights=scores, minlength=len(uniq))
    y0, x0, y1, x1 = uniq[:, 0], uniq[:, 1], uniq[:, 2], uniq[:, 3]
    # Empty cells between two boxes along each axis (negative when they overlap).
    sep_y = np.maximum(y0[:, None] - y1[None, :], y0[None, :] - y1[:, None])
    sep_x = np.maximum(x0[:, None] - x1[None, :], x0[None, :] - x1[:, None])
    near = (sep_y <= gap) & (sep_x <= gap)
    labels = np.arange(len(uniq))
    # Connected components: each box takes its neighbours' smallest label, then the label of that label (pointer
    # jumping: a chain of n boxes settles in about log n rounds, not n), until nothing changes.
    while True:
        new = np.where(near, labels[None, :], len(uniq)).min(axis=1)
        new = new[new]
        if np.array_equal(new, labels):
            break
        labels = new
    gh, gw = grid
    regions = []
    for label in np.unique(labels):
        m = labels == label
        regions.append(
            Region(
                x0=float(x0[m].min()) / gw,
                y0=float(y0[m].min()) / gh,
                x1=float(x1[m].max()) / gw,
                y1=float(y1[m].max()) / gh,
                score=float(won[m].sum()),
            )
        )
    regions.sort(key=lambda r: (-r.score, r.y0, r.x0))
    return tuple(regions[:max_regions])


def page_regions(
    winners: np.ndarray, terms: np.ndarray, cells: TokenCells, max_regions: int = MAX_REGIONS, gap: int = GAP
) -> tuple[Region, ...]:
    """Regions of one page from its MaxSim winners: ``winners (n_q,)`` page-token positions, ``terms (n_q,)`` the
    query tokens' maxima. Winners among the page's text tokens are dropped."""
    winners = np.asarray(winners, dtype=np.int64)
    on_page = cells.is_image[winners]
    return merge_cells(cells.boxes[winners[on_page]], np.asarray(terms)[on_page], cells.grid, max_regions, gap)


def maxsim_winners(query: Any, pages: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``query (n_q, dim)``, ``pages`` of ``(n_tokens, dim)`` (numpy or torch, any float dtype) -> per page the
    argmax token of each query token and its dot product, ``(n_q,)`` int64 and ``(n_q,)`` float32.

    Page by page, on the page's device, in float32: the tall ``tokens @ q.T`` product and a max over its
    contiguous rows (no copy of all the pages into one buffer, no strided reduction).
    """
    import torch

    out = []
    q32: dict[torch.device, torch.Tensor] = {}
    with torch.inference_mode():
        for page in pages:
            t = page if isinstance(page, torch.Tensor) else torch.from_numpy(np.asarray(page))
            q = q32.get(t.device)
            if q is None:
                base = query if isinstance(query, torch.Tensor) else torch.from_numpy(np.asarray(query))
                q = q32[t.device] = base.to(t.device, torch.float32).T.contiguous()
            vals, idx = (t.to(torch.float32) @ q).max(dim=0)
            out.append((idx.cpu().numpy(), vals.cpu().numpy()))
    return out


class PageSizes:
    """Stored page width and height by point id, read from the store's payloads once per page.

    A point id names one page of one content (``uuid5(doc_id, page_number)``, ``doc_id`` from the file's hash),
    so a page's size never changes under its id and the cache needs no invalidation.
    """

    def __init__(self, store: VectorStore, capacity: int = 200_000) -> None:
        self.store = store
        self.capacity = capacity
        self._sizes: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def remember(self, payloads: Mapping[str, Mapping[str, Any]]) -> None:
        with self._lock:
            if len(self._sizes) + len(payloads) > self.capacity:
                self._sizes.clear()
            for pid, p in payloads.items():
                w, h = p.get("width"), p.get("height")
                if isinstance(w, int) and isinstance(h, int):
                    self._sizes[pid] = (w, h)

    def get(self, point_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        with self._lock:
            missing = [p for p in point_ids if p not in self._sizes]
        if missing:
            self.remember(self.store.get_payloads(missing))
        with self._lock:
            return {p: self._sizes[p] for p in point_ids if p in self._sizes}


VectorsOf = Callable[[Sequence[str]], Mapping[str, Any]]


class RegionFinder:
    """Regions of ranked pages: their MaxSim winners mapped through their token layout (module docstring).

    ``processor`` returns the encoder's loaded processor (the layout's configuration). Page vectors come from
    the caller (the resident index); a page whose vectors no layout explains (a token-pooled index) is read
    from ``store`` instead. Never raises: a page without a layout, or any failure, gives no regions.
    """

    def __init__(
        self,
        store: VectorStore,
        processor: Callable[[], Any],
        max_regions: int = MAX_REGIONS,
        gap: int = GAP,
    ) -> None:
        self.store = store
        self.layouts = PageLayouts(processor)
        self.sizes = PageSizes(store)
        self.max_regions = max_regions
        self.gap = gap
        self._warned = False

    def find(
        self, queries: Sequence[np.ndarray], point_ids: Sequence[Sequence[str]], vectors: VectorsOf
    ) -> list[list[tuple[Region, ...]]]:
        """For each query ``queries[i] (n_q, dim)``, the regions of each page of ``point_ids[i]``."""
        try:
            return self._find(queries, point_ids, vectors)
        except Exception:
            if not self._warned:
                self._warned = True
                logger.warning("cited regions could not be computed; hits go without them", exc_info=True)
            return [[() for _ in row] for row in point_ids]

    def _find(
        self, queries: Sequence[np.ndarray], point_ids: Sequence[Sequence[str]], vectors: VectorsOf
    ) -> list[list[tuple[Region, ...]]]:
        wanted = list(dict.fromkeys(p for row in point_ids for p in row))
        if not wanted:
            return [[] for _ in point_ids]
        sizes = self.sizes.get(wanted)
        vecs = dict(vectors(wanted))
        cells: dict[str, TokenCells] = {}
        unexplained = []
        for pid in wanted:
            size, v = sizes.get(pid), vecs.get(pid)
            c = self.layouts.cells(size[0], size[1], int(v.shape[0])) if size and v is not None else None
            if c is not None:
                cells[pid] = c
            elif size is not None:
                unexplained.append(pid)
        if unexplained:  # e.g. pooled resident vectors: the stored ones have one vector per token
            for pid, v in self.store.get_vectors(unexplained).items():
                size = sizes[pid]
                c = self.layouts.cells(size[0], size[1], int(v.shape[0]))
                if c is not None:
                    cells[pid], vecs[pid] = c, v
        out = []
        for q, row in zip(queries, point_ids, strict=True):
            have = [p for p in row if p in cells]
            found = dict(zip(have, maxsim_winners(q, [vecs[p] for p in have]), strict=True))
            out.append(
                [page_regions(*found[p], cells[p], self.max_regions, self.gap) if p in found else () for p in row]
            )
        return out
