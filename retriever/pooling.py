"""Hierarchical token pooling at index time (as colpali-engine's / PyLate's ``HierarchicalTokenPooler``).

A ColSmolVLM page is 512 px tiles plus a global view, so tokens have no single row/column grid: pooling
clusters token vectors by similarity instead. Ward linkage on the cosine distance ``1 - <a, b>`` groups the
``n`` tokens into ``ceil(n / pool_factor)`` clusters; each cluster becomes the mean of its members,
re-normalized to unit length.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)


def pool_tokens(vectors: np.ndarray, pool_factor: int) -> np.ndarray:
    """Pool one page ``(n_tokens, dim)`` into ``(ceil(n_tokens / pool_factor), dim)`` float32 unit vectors.

    ``pool_factor <= 1`` returns the input unchanged (as float32).
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    v = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if v.ndim != 2:
        raise ValueError(f"pool_tokens: expected (n_tokens, dim), got {v.shape}")
    n = v.shape[0]
    if pool_factor <= 1 or n <= 1:
        return v
    n_clusters = max(1, math.ceil(n / pool_factor))
    if n_clusters >= n:
        return v
    dist = 1.0 - (v @ v.T).astype(np.float64)
    np.clip(dist, 0.0, None, out=dist)
    np.fill_diagonal(dist, 0.0)
    dist = squareform(dist, checks=False)  # condensed upper triangle
    z = linkage(dist, method="ward")
    labels = fcluster(z, t=n_clusters, criterion="maxclust") - 1  # 0-based, labels in [0, n_clusters)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sums = np.add.reduceat(v[order], starts, axis=0)  # one row per non-empty cluster
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def pool_pages(pages: list[np.ndarray], pool_factor: int) -> list[np.ndarray]:
    """:func:`pool_tokens` over a list of pages, each ``(n_tokens, dim)``."""
    return [pool_tokens(p, pool_factor) for p in pages]
