"""Synthetic page multivectors for tests and benchmarks, shaped like ColSmolVLM's output.

Speed depends on shapes, not values, so benchmarks score random unit vectors; recall measurements need a
signal, which :func:`structured_corpus` gives (pages of one document share topic centres, queries are noisy
copies of one page's tokens).
"""

from __future__ import annotations

import numpy as np

DIM = 128


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32."""
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_pages(n_pages: int, seed: int = 0, lo: int = 800, hi: int = 1200) -> list[np.ndarray]:
    """``n_pages`` pages of ``lo..hi`` random unit tokens ``(n, 128)``."""
    rng = np.random.default_rng(seed)
    return [unit(rng.standard_normal((int(rng.integers(lo, hi + 1)), DIM))) for _ in range(n_pages)]


def random_queries(n: int, seed: int = 1, lo: int = 18, hi: int = 30) -> list[np.ndarray]:
    """``n`` queries of ``lo..hi`` random unit tokens (ColSmol queries are ~20 tokens with augmentation)."""
    rng = np.random.default_rng(seed)
    return [unit(rng.standard_normal((int(rng.integers(lo, hi + 1)), DIM))) for _ in range(n)]


def structured_corpus(
    n_pages: int, n_queries: int, seed: int = 0, group: int = 8, lo: int = 800, hi: int = 1200
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pages in documents of ``group`` pages that share topic centres; each token is a centre plus noise (real pages
    are redundant: blank margins, repeated glyphs). A query is 24 noisy copies of tokens of one target page, so the
    target and its document's pages carry a real, graded signal."""
    rng = np.random.default_rng(seed)
    pages = []
    for g in range(0, n_pages, group):
        doc_centres = unit(rng.standard_normal((48, DIM)))
        for _ in range(min(group, n_pages - g)):
            centres = np.concatenate(
                [doc_centres[rng.choice(48, 24, replace=False)], unit(rng.standard_normal((16, DIM)))]
            )
            n = int(rng.integers(lo, hi + 1))
            pages.append(unit(centres[rng.integers(0, len(centres), n)] + 0.035 * rng.standard_normal((n, DIM))))
    queries = []
    for _ in range(n_queries):
        target = pages[int(rng.integers(len(pages)))]
        sel = target[rng.choice(len(target), 24, replace=False)]
        queries.append(unit(sel + 0.08 * rng.standard_normal(sel.shape)))
    return pages, queries
