"""Similarity maps: which parts of a page a query matches, token by token.

``similarity_map(encoder, page, query)`` re-embeds the page and the query with the ColSmolVLM
encoder, scores every query token against every image token (the dot products MaxSim takes its
maxima over) and maps the image tokens back to the page's pixels.

The token layout (tiles, global view, pixel-shuffle cells; checked against transformers' code and in
``tests/test_explain.py``) is :mod:`indexer.models.token_layout`'s: the page's ``input_ids`` are parsed with
:func:`~indexer.models.token_layout.image_token_layout`. The tiles form a ``(rows*k, cols*k)`` grid over the
page and the global view a ``k x k`` grid; each global cell covers exactly ``rows x cols`` tile cells,
so the two combine without resampling.

By default (``combine="max"``) a cell's value is the larger of its tile token's and its global
token's similarity. With that choice the maximum of a query token's map over the page equals that
token's MaxSim term restricted to image tokens: the map shows where MaxSim finds its match.
``combine="tiles"`` or ``"global"`` shows one source alone.

The whole-query map is the **sum over the kept query tokens of their raw similarity maps**: at each
cell, the MaxSim score the page would get if that cell were its only token. Raw sums (not per-token
normalized maps) keep tokens that match strongly weighted as MaxSim weights them.

Kept query tokens: the query's real tokens that are not special tokens. colpali-engine appends ten
``<end_of_utterance>`` augmentation tokens (and tokenizers may add BOS/EOS); they take part in
MaxSim but mean nothing to a reader, so they are left out of ``query_tokens``, ``per_token`` and the
whole-query map unless ``include_special=True``.

The page's text tokens (the "Describe the image." prompt around the image) also take part in MaxSim
but have no place on the page; they are not shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from indexer.errors import ColsmolError, InvalidRequest
from indexer.models.token_layout import ImageTokenLayout, image_token_layout

__all__ = ["ImageTokenLayout", "SimilarityMap", "grid_similarities", "image_token_layout", "similarity_map"]

if TYPE_CHECKING:
    from PIL import Image

Combine = Literal["max", "tiles", "global"]

# Viridis, sampled at 9 evenly spaced points; linear interpolation between them is close enough.
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [72, 40, 120],
        [62, 74, 137],
        [49, 104, 142],
        [38, 130, 142],
        [31, 158, 137],
        [53, 183, 121],
        [110, 206, 88],
        [253, 231, 37],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True, eq=False)
class SimilarityMap:
    """Where a query matches a page.

    ``heatmap`` is ``(H, W)`` float32 at the page image's pixel size (``image.size == (W, H)``): the
    whole-query map, or one token's map when ``token`` was given. ``per_token`` is
    ``(len(query_tokens), gh, gw)`` at the token-grid resolution (``grid_shape``: ``rows*k x cols*k``
    for a split page, ``k x k`` for an unsplit one); each grid cell covers an equal share of the page.
    """

    heatmap: np.ndarray
    query_tokens: list[str]
    per_token: np.ndarray
    tiles: tuple[int, int]  # (rows, cols); (0, 0) when the page was not split
    token: int | None = None
    image: Image.Image | None = field(default=None, repr=False)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return int(self.per_token.shape[1]), int(self.per_token.shape[2])

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The page in RGB with the heatmap (min-max normalized, viridis) blended over it."""
        from PIL import Image

        if not 0.0 <= alpha <= 1.0:
            raise InvalidRequest(f"alpha must be between 0 and 1, got {alpha}")
        h, w = self.heatmap.shape
        if self.image is None:
            page = np.full((h, w, 3), 255.0, dtype=np.float32)
        else:
            page = np.asarray(self.image.convert("RGB"), dtype=np.float32)
        colors = colormap(normalize(self.heatmap))
        out = (1.0 - alpha) * page + alpha * colors
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


def normalize(x: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant array maps to zeros."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> float32 RGB in [0, 255] (viridis), shape ``x.shape + (3,)``."""
    x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, len(_VIRIDIS) - 1)
    frac = (x - lo)[..., None].astype(np.float32)
    out: np.ndarray = _VIRIDIS[lo] * (1.0 - frac) + _VIRIDIS[hi] * frac
    return out


def grid_similarities(sims: np.ndarray, layout: ImageTokenLayout, combine: Combine = "max") -> np.ndarray:
    """``sims (n_q, seq)`` over the page's token sequence -> ``(n_q, gh, gw)`` spatial grid."""
    n_q, k = sims.shape[0], layout.k
    glob = sims[:, layout.global_view].reshape(n_q, k, k)
    if layout.rows == 0:  # not split: the single view is the page
        if combine == "tiles":
            raise InvalidRequest("this page was not split into tiles; use combine='max' or 'global'")
        return glob
    grid = np.empty((n_q, layout.rows * k, layout.cols * k), dtype=sims.dtype)
    for (r, c), pos in layout.tiles.items():
        grid[:, r * k : (r + 1) * k, c * k : (c + 1) * k] = sims[:, pos].reshape(n_q, k, k)
    if combine == "tiles":
        return grid
    up = np.repeat(np.repeat(glob, layout.rows, axis=1), layout.cols, axis=2)
    if combine == "global":
        return up
    combined: np.ndarray = np.maximum(grid, up)
    return combined


def upsample_nearest(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(..., gh, gw)`` -> ``(..., height, width)``: pixel ``(y, x)`` takes cell ``(y*gh//H, x*gw//W)``."""
    gh, gw = grid.shape[-2:]
    ys = (np.arange(height) * gh) // height
    xs = (np.arange(width) * gw) // width
    return grid[..., ys[:, None], xs[None, :]]


def similarity_map(
    encoder: Any,
    image: Image.Image,
    query: str,
    token: int | None = None,
    *,
    combine: Combine = "max",
    include_special: bool = False,
) -> SimilarityMap:
    """Where ``query`` matches ``image`` according to ``encoder`` (a loaded ``ColSmolEncoder``).

    ``token`` picks one entry of the returned ``query_tokens`` for ``heatmap``; ``None`` gives the
    whole-query map (sum of the kept tokens' maps). ``combine`` chooses how the tiles and the global
    view make one map (see the module docstring). ``include_special`` keeps the augmentation and
    special query tokens.
    """
    if combine not in ("max", "tiles", "global"):
        raise InvalidRequest(f"combine must be 'max', 'tiles' or 'global', got {combine!r}")
    processor = encoder.processor
    tokenizer = processor.tokenizer
    page = image.convert("RGB")
    width, height = page.size

    batch = encoder.preprocess_pages([page])
    page_vectors = encoder.embed_preprocessed(batch)[0]
    page_ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].cpu().numpy()
    if len(page_ids) != len(page_vectors):
        raise ColsmolError("page token ids and vectors disagree in length")
    image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    layout = image_token_layout(page_ids, tokenizer, image_token_id, int(processor.image_seq_len))

    query_vectors = encoder.embed_queries([query])[0]
    enc = processor.process_queries([query])
    query_ids = enc["input_ids"][0][enc["attention_mask"][0].bool()].cpu().numpy()
    if len(query_ids) != len(query_vectors):
        raise ColsmolError("query token ids and vectors disagree in length")
    special = set(tokenizer.all_special_ids)
    keep = np.array([include_special or int(i) not in special for i in query_ids], dtype=bool)
    if not keep.any():
        raise InvalidRequest("the query has no content tokens to explain")
    tokens = [tokenizer.decode([int(i)]) for i in query_ids[keep]]

    sims = query_vectors[keep] @ page_vectors.T  # (n_kept, n_page_tokens)
    per_token = grid_similarities(sims.astype(np.float32), layout, combine)

    if token is None:
        low = per_token.sum(axis=0)
    else:
        if not -len(tokens) <= token < len(tokens):
            raise InvalidRequest(f"token {token} is out of range for {len(tokens)} query tokens")
        low = per_token[token]
    heatmap = np.ascontiguousarray(upsample_nearest(low, height, width), dtype=np.float32)
    return SimilarityMap(
        heatmap=heatmap,
        query_tokens=tokens,
        per_token=np.ascontiguousarray(per_token, dtype=np.float32),
        tiles=(layout.rows, layout.cols),
        token=token,
        image=page,
    )
