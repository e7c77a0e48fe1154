"""Where a page's tokens lie on the page: ColSmolVLM's (Idefics3's) image-token layout, in one place.

A page's stored multivector is one vector per token of its prompt, in order (padding removed)::

    <|im_start|>User:  [<fake_token_around_image> <row_1_col_1> <image>*seq_len] ... (one run per tile, row-major)
                       <fake_token_around_image> <global-img> <image>*seq_len <fake_token_around_image>
                       Describe the image.<end_of_utterance> ...

* The page is cut into ``rows x cols`` tiles that cover it exactly (it was stretched to whole tiles), so
  tile ``(r, c)`` is the page region ``[r/rows, (r+1)/rows) x [c/cols, (c+1)/cols)``. A page that fits in one
  tile is not split (``rows = cols = 0``): it has the global view only.
* The global view is the whole page squeezed into one tile.
* Within a view the connector's pixel shuffle leaves ``k x k`` tokens (``k = sqrt(seq_len)``; 8 for the real
  model), row-major: token ``t`` covers cell ``(t // k, t % k)`` of its view.

So the tiles form a fine ``(rows*k, cols*k)`` grid over the page, and global cell ``(a, b)`` covers fine cells
``[a*rows, (a+1)*rows) x [b*cols, (b+1)*cols)``; an unsplit page's grid is its ``k x k`` global view. The text
tokens of the prompt (markers, "Describe the image.") have no place on the page.

Two ways to the layout, used by two readers:

* :func:`image_token_layout` parses a page's ``input_ids`` (``retriever.explain``, which re-embeds the page and has
  them);
* :class:`PageLayouts` rebuilds the ids from the page's stored width and height and the encoder processor's
  configuration (``retriever.regions``, which has only the stored vectors): the same tile arithmetic the
  processor uses (:mod:`indexer.models.preprocess`), so pages indexed by any earlier version get a layout too.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.errors import ColsmolError
from indexer.models.preprocess import MAX_IMAGE_SIZE, prompt_ids, tile_layout

_ROW_COL = re.compile(r"^<row_(\d+)_col_(\d+)>$")
_GLOBAL = "<global-img>"


@dataclass(frozen=True)
class ImageTokenLayout:
    """Where a page's image tokens sit in its (padding-free) token sequence.

    ``tiles[(r, c)]`` (0-based) and ``global_view`` are arrays of ``seq_len`` sequence positions,
    in the view's row-major ``k x k`` cell order.
    """

    rows: int
    cols: int
    k: int
    tiles: dict[tuple[int, int], np.ndarray]
    global_view: np.ndarray


def image_token_layout(input_ids: np.ndarray, tokenizer: Any, image_token_id: int, seq_len: int) -> ImageTokenLayout:
    """Parse a page's ``input_ids`` (1-D, padding removed) into tiles and the global view.

    The tile of each run of ``<image>`` tokens is read from the marker token right before it, so the
    processor's resize arithmetic is never needed here.
    """
    k = math.isqrt(seq_len)
    if k * k != seq_len:
        raise ColsmolError(f"image_seq_len {seq_len} is not a square; cannot lay image tokens out in a grid")
    ids = np.asarray(input_ids).reshape(-1)
    is_img = ids == image_token_id
    # Runs of consecutive image tokens.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], is_img.astype(np.int8), [0]])))
    starts, ends = edges[0::2], edges[1::2]
    tiles: dict[tuple[int, int], np.ndarray] = {}
    global_view: np.ndarray | None = None
    for s, e in zip(starts, ends, strict=True):
        if e - s != seq_len:
            raise ColsmolError(f"a run of {e - s} image tokens at position {s}; expected {seq_len} per view")
        marker = tokenizer.convert_ids_to_tokens(int(ids[s - 1])) if s > 0 else None
        positions = np.arange(s, e)
        m = _ROW_COL.match(marker or "")
        if m:
            rc = (int(m.group(1)) - 1, int(m.group(2)) - 1)
            if rc in tiles:
                raise ColsmolError(f"tile {marker} appears twice in the page's tokens")
            tiles[rc] = positions
        elif marker == _GLOBAL:
            if global_view is not None:
                raise ColsmolError("more than one global view in the page's tokens (one page at a time)")
            global_view = positions
        else:
            raise ColsmolError(f"image tokens at position {s} follow {marker!r}, not a tile or global-view marker")
    if global_view is None:
        raise ColsmolError("the page's tokens have no global view")
    rows = 1 + max((r for r, _ in tiles), default=-1)
    cols = 1 + max((c for _, c in tiles), default=-1)
    if len(tiles) != rows * cols:
        raise ColsmolError(f"tiles {sorted(tiles)} do not form a full {rows} x {cols} grid")
    return ImageTokenLayout(rows=rows, cols=cols, k=k, tiles=tiles, global_view=global_view)


@dataclass(frozen=True, eq=False)
class TokenCells:
    """The page cell of every token of a page's sequence, on the page's fine grid.

    ``grid`` is ``(gh, gw)``: ``(rows*k, cols*k)`` for a split page, ``(k, k)`` for an unsplit one; every cell
    covers an equal share of the page. ``boxes`` is ``(n_tokens, 4)`` int32, ``[gy0, gx0, gy1, gx1)`` in grid
    cells (a tile token covers one cell, a global-view token ``rows x cols`` of them); ``is_image`` is
    ``(n_tokens,)`` bool, False for the prompt's text tokens (their boxes are zeros and mean nothing).
    """

    rows: int
    cols: int
    k: int
    grid: tuple[int, int]
    boxes: np.ndarray
    is_image: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.is_image.shape[0])

    @classmethod
    def from_layout(cls, layout: ImageTokenLayout, n_tokens: int) -> TokenCells:
        """Cells of a sequence of ``n_tokens`` whose image tokens sit where ``layout`` says.

        >>> lay = ImageTokenLayout(0, 0, 2, {}, np.array([1, 2, 3, 4]))  # unsplit: one 2 x 2 view after a marker
        >>> cells = TokenCells.from_layout(lay, 6)
        >>> cells.grid, cells.is_image.tolist()
        ((2, 2), [False, True, True, True, True, False])
        >>> cells.boxes[4].tolist()  # the view's last token: bottom-right cell
        [1, 1, 2, 2]
        """
        k, rows, cols = layout.k, layout.rows, layout.cols
        boxes = np.zeros((n_tokens, 4), dtype=np.int32)
        is_image = np.zeros(n_tokens, dtype=bool)
        t = np.arange(k * k)
        cy, cx = t // k, t % k
        for (r, c), pos in layout.tiles.items():
            y, x = r * k + cy, c * k + cx
            boxes[pos] = np.stack([y, x, y + 1, x + 1], axis=1)
            is_image[pos] = True
        sy, sx = max(rows, 1), max(cols, 1)  # fine cells per global cell along each axis
        boxes[layout.global_view] = np.stack([cy * sy, cx * sx, (cy + 1) * sy, (cx + 1) * sx], axis=1)
        is_image[layout.global_view] = True
        grid = (rows * k, cols * k) if rows else (k, k)
        return cls(rows=rows, cols=cols, k=k, grid=grid, boxes=boxes, is_image=is_image)


class PageLayouts:
    """``(width, height, n_tokens) -> TokenCells`` of stored pages, for the encoder's processor.

    ``processor`` returns the loaded ``ColIdefics3Processor`` (called lazily: the encoder loads it once). The
    tile layout comes from the page's size and the image processor's settings; the token ids from the
    processor's own prompt expansion (:func:`indexer.models.preprocess.prompt_ids`). A page stored with another
    resolution setting (another ``longest_edge``) has another token count: the count is checked, and the
    other edge lengths a processor can be set to are tried before giving up (``None``: no layout explains
    this many tokens, e.g. a token-pooled index). Thread-safe; results are cached.
    """

    def __init__(self, processor: Callable[[], Any]) -> None:
        self._processor = processor
        self._ids: dict[tuple[int, int], tuple[int, ImageTokenLayout | None]] = {}
        self._cells: dict[tuple[int, int, int], TokenCells | None] = {}
        self._lock = threading.Lock()

    def cells(self, width: int, height: int, n_tokens: int) -> TokenCells | None:
        key = (int(width), int(height), int(n_tokens))
        with self._lock:
            if key in self._cells:
                return self._cells[key]
        found = self._resolve(*key)
        with self._lock:
            if len(self._cells) > 4096:
                self._cells.clear()
            self._cells[key] = found
        return found

    def _resolve(self, width: int, height: int, n_tokens: int) -> TokenCells | None:
        if width <= 0 or height <= 0:
            return None
        p = self._processor()
        ip = p.image_processor
        tile = int(ip.max_image_size["longest_edge"])
        current = int(ip.size["longest_edge"])
        if not ip.do_image_splitting:
            candidates = [(0, 0)]
        else:
            edges = [current] + [e for e in range(tile, MAX_IMAGE_SIZE + 1, tile) if e != current]
            candidates = list(dict.fromkeys(tile_layout(height, width, e, tile) for e in edges))
        seq_len = int(p.image_seq_len)
        for rows, cols in candidates:
            if (rows * cols + 1) * seq_len > n_tokens:  # more image tokens than the page has: skip the tokenizer
                continue
            length, layout = self._layout(p, rows, cols)
            if length == n_tokens and layout is not None:
                return TokenCells.from_layout(layout, n_tokens)
        return None

    def _layout(self, processor: Any, rows: int, cols: int) -> tuple[int, ImageTokenLayout | None]:
        with self._lock:
            hit = self._ids.get((rows, cols))
        if hit is not None:
            return hit
        tok = processor.tokenizer
        ids = np.asarray(prompt_ids(processor, (rows, cols)))
        image_id = tok.convert_tokens_to_ids(processor.image_token)
        try:
            made: tuple[int, ImageTokenLayout | None] = (
                len(ids),
                image_token_layout(ids, tok, image_id, int(processor.image_seq_len)),
            )
        except ColsmolError:  # more tiles than the tokenizer has <row_i_col_j> markers for: never a stored page
            made = (-1, None)
        with self._lock:
            self._ids[(rows, cols)] = made
        return made
