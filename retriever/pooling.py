"""Token pooling: fewer vectors per page, one family behind one base, so production, eval and bench agree.

Two poolings, for two jobs:

- :class:`HierarchicalPooler` (as colpali-engine's / PyLate's ``HierarchicalTokenPooler``) shrinks the
  *search index* (``TokenIndex(pool_factor=N)``): a ColSmolVLM page is 512 px tiles plus a global view,
  so tokens have no single row/column grid, and pooling clusters token vectors by similarity instead.
  Ward linkage on the cosine distance ``1 - <a, b>`` groups the ``n`` tokens into ``ceil(n / factor)``
  clusters; each becomes the mean of its members, re-normalized. 45 to 60 ms a page on one core.
- :class:`SequentialMeanPooler` builds the *prefetch vectors* stored with every page in Qdrant (the
  ``pooled`` multivector the two-stage search queries): means of ``factor`` consecutive tokens,
  re-normalized. Consecutive ColSmol tokens are neighbouring cells of one 512 px tile (8 x 8 cells a
  tile, row major), so this is a cheap spatial pooling: 0.17 ms a 1,100-token page on this 2-core
  machine, which keeps up with a GPU encoder on the ingest writer thread, where clustering would not.
  The pooled set only proposes candidates; exact MaxSim over all tokens ranks them.

:func:`prefetch_vectors` is the one prefetch pooling: ingest writes it, and ``colsmol eval --config
two-stage``, ``bench/search.py`` and the two-stage recall test measure it.

>>> v = np.random.default_rng(0).standard_normal((33, 128)).astype(np.float32)
>>> v /= np.linalg.norm(v, axis=1, keepdims=True)  # ColSmol's token vectors are unit length
>>> prefetch_vectors(v).shape, HierarchicalPooler(2)(v).shape
((3, 128), (17, 128))
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

#: Tokens averaged into one prefetch vector: ~70 vectors for a 1,100-token page.
PREFETCH_POOL_FACTOR = 16


class TokenPooler(ABC):
    """Pools one page ``(n_tokens, dim)`` into at most ``ceil(n_tokens / factor)`` unit vectors, float32.

    The base checks the input and handles the trivial cases; subclasses implement :meth:`_pool`.
    """

    def __init__(self, factor: int) -> None:
        if int(factor) < 1:
            raise ValueError(f"pool factor must be at least 1, got {factor}")
        self.factor = int(factor)

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        v = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if v.ndim != 2:
            raise ValueError(f"{type(self).__name__}: expected (n_tokens, dim), got {v.shape}")
        if self.factor <= 1 or v.shape[0] <= 1 or math.ceil(v.shape[0] / self.factor) >= v.shape[0]:
            return v
        return self._pool(v)

    @abstractmethod
    def _pool(self, v: np.ndarray) -> np.ndarray:
        """``v (n, dim)`` float32 contiguous, ``n > 1`` -> ``(m, dim)`` float32 unit vectors."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.factor})"


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class SequentialMeanPooler(TokenPooler):
    """Means of ``factor`` consecutive tokens (the last group may be shorter), re-normalized."""

    def _pool(self, v: np.ndarray) -> np.ndarray:
        n, dim = v.shape
        groups = -(-n // self.factor)
        padded = np.zeros((groups * self.factor, dim), dtype=np.float32)
        padded[:n] = v
        counts = np.full(groups, self.factor, dtype=np.float32)
        counts[-1] = n - (groups - 1) * self.factor
        return _unit_rows(padded.reshape(groups, self.factor, dim).sum(axis=1) / counts[:, None])


class HierarchicalPooler(TokenPooler):
    """Ward clustering on cosine distance into ``ceil(n / factor)`` clusters; cluster means, re-normalized."""

    def _pool(self, v: np.ndarray) -> np.ndarray:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform

        n_clusters = max(1, math.ceil(v.shape[0] / self.factor))
        dist = 1.0 - (v @ v.T).astype(np.float64)
        np.clip(dist, 0.0, None, out=dist)
        np.fill_diagonal(dist, 0.0)
        z = linkage(squareform(dist, checks=False), method="ward")
        labels = fcluster(z, t=n_clusters, criterion="maxclust") - 1  # 0-based, in [0, n_clusters)
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        return _unit_rows(np.add.reduceat(v[order], starts, axis=0))  # one row per non-empty cluster


def prefetch_vectors(vectors: np.ndarray, factor: int = PREFETCH_POOL_FACTOR) -> np.ndarray:
    """The pooled vectors stored with a page for Qdrant prefetch: ``(n, dim) -> (ceil(n / factor), dim)``."""
    return SequentialMeanPooler(factor)(vectors)


def pool_tokens(vectors: np.ndarray, pool_factor: int) -> np.ndarray:
    """Index-time pooling of one page (``TokenIndex(pool_factor=...)``); ``pool_factor <= 1`` returns it as is."""
    if pool_factor <= 1:
        return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    return HierarchicalPooler(pool_factor)(vectors)
