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


class TopicMixture:
    """A corpus of any size, generated page by page, where neighbours are not trivial (``bench/scale.py``).

    How it is built (all vectors unit length, 128 d):

    - ``n_topics`` topic centres, each with ``subtopics`` sub-centres (``unit(topic + 0.7 * noise)``): a topic is
      a subject, a sub-centre one of its visual concepts.
    - A page mixes 2 to 5 topics with Dirichlet weights. It is cut into regions of ``region`` consecutive tokens
      (ColSmol's consecutive tokens are neighbouring cells of one tile); a region draws one topic from the mix and
      each of its tokens is one of that topic's sub-centres plus noise (``sigma``). A share ``background`` of the
      regions are page furniture drawn from 32 vectors that every page shares (margins, rules, running heads).
    - A query is 20 tokens: 1 to 2 topics, each token a sub-centre plus noise.

    Thousands of pages share each topic, so a query's top 10 are decided by which sub-centres a page holds and how
    many; means over regions (pooled vectors) blur exactly that, so a candidate stage can miss.
    """

    def __init__(
        self,
        seed: int = 0,
        n_topics: int = 512,
        subtopics: int = 24,
        region: int = 32,
        sigma: float = 0.9,
        background: float = 0.25,
        tokens: tuple[int, int] = (900, 1100),
    ) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        topics = unit(rng.standard_normal((n_topics, DIM)))
        self.sub = unit(topics[:, None, :] + 0.7 * unit(rng.standard_normal((n_topics, subtopics, DIM))))
        self.furniture = unit(rng.standard_normal((32, DIM)))
        self.region, self.sigma, self.background, self.tokens = region, sigma, background, tokens

    def _noisy(self, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal(centres.shape, dtype=np.float32) * (self.sigma / np.sqrt(DIM))
        return unit(centres + noise)

    def page(self, i: int) -> np.ndarray:
        """Page ``i`` ``(n_tokens, 128)`` float32: the same for the same seed and ``i``, whatever was made before."""
        rng = np.random.default_rng((self.seed, 1, i))
        n_topics, n_sub = self.sub.shape[:2]
        mix = rng.choice(n_topics, size=int(rng.integers(2, 6)), replace=False)
        weights = rng.dirichlet(np.ones(len(mix)))
        n = int(rng.integers(self.tokens[0], self.tokens[1] + 1))
        n_regions = -(-n // self.region)
        topic = mix[rng.choice(len(mix), size=n_regions, p=weights)]
        # a region uses a few of its topic's sub-centres, not all of them
        centre_of = rng.integers(0, n_sub, size=(n_regions, 3))
        picks = centre_of[np.arange(n_regions)[:, None], rng.integers(0, 3, size=(n_regions, self.region))]
        centres = self.sub[topic[:, None], picks].reshape(-1, DIM)[:n]
        furniture = np.repeat(rng.random(n_regions) < self.background, self.region)[:n]
        centres[furniture] = self.furniture[rng.integers(0, len(self.furniture), size=int(furniture.sum()))]
        return self._noisy(rng, centres)

    def queries(self, n: int, n_tokens: int = 20) -> np.ndarray:
        """``(n, n_tokens, 128)`` float32 queries."""
        rng = np.random.default_rng((self.seed, 2))
        n_topics, n_sub = self.sub.shape[:2]
        out = np.empty((n, n_tokens, DIM), dtype=np.float32)
        for q in range(n):
            topics = rng.choice(n_topics, size=int(rng.integers(1, 3)), replace=False)
            t = topics[rng.integers(0, len(topics), size=n_tokens)]
            out[q] = self._noisy(rng, self.sub[t, rng.integers(0, n_sub, size=n_tokens)])
        return out
