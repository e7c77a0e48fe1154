"""Ranking metrics with graded relevance, as BEIR computes them (through pytrec_eval / trec_eval).

``ranked`` is a list of corpus ids, best first; ``qrels`` maps corpus id -> relevance (an int; 0 or less means not
relevant). Definitions, at cutoff ``k``:

- ``DCG@k  = sum_{i=1..k} rel_i / log2(i + 1)`` with ``rel_i`` the judged relevance of the page at rank ``i``
  (0 when unjudged). This is the linear-gain form trec_eval's ``ndcg_cut`` uses (BEIR, MTEB and the ViDoRe
  leaderboard report it), not the exponential ``2^rel - 1`` gain; the two agree for binary relevance.
- ``nDCG@k = DCG@k / IDCG@k`` where IDCG@k is the DCG of the judged relevances sorted in decreasing order; 0 when
  the query has no relevant page.
- ``recall@k = |relevant in top k| / |relevant|`` (relevant: relevance > 0); 0 when nothing is relevant.
- ``MRR@k = 1 / rank`` of the first relevant page within the top ``k``, else 0.

Averages are over every query that has qrels (a query with none relevant counts as 0, as in pytrec_eval).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def dcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """``sum rel_i / log2(i + 1)`` over the first ``k`` ranks (rank ``i`` is 1-based).

    >>> round(dcg_at_k(["a", "b", "c"], {"b": 1, "c": 2}, 3), 6)  # 0/1 + 1/log2(3) + 2/log2(4) = 0.630930 + 1
    1.63093
    """
    _check_k(k)
    return sum(max(qrels.get(doc, 0), 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """Normalized DCG at ``k`` (linear gain, the pytrec_eval ``ndcg_cut_k`` definition).

    >>> ndcg_at_k(["a", "b"], {"a": 1}, 5)
    1.0
    >>> round(ndcg_at_k(["x", "a"], {"a": 1}, 5), 6)  # (1/log2(3)) / (1/log2(2))
    0.63093
    >>> round(ndcg_at_k(["a", "b"], {"a": 1, "b": 2}, 2), 6)  # (1 + 2/log2 3) / (2 + 1/log2 3)
    0.859719
    >>> ndcg_at_k(["x"], {"a": 0}, 5)  # nothing relevant
    0.0
    """
    _check_k(k)
    ideal = sorted((r for r in qrels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg_at_k(ranked, qrels, k) / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """Share of the relevant pages found in the top ``k``.

    >>> recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, 2)  # 1 of 3
    0.3333333333333333
    >>> recall_at_k(["a"], {}, 1)
    0.0
    """
    _check_k(k)
    relevant = {d for d, r in qrels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant page within the top ``k`` (0 if none).

    >>> mrr_at_k(["x", "y", "a"], {"a": 2}, 10)
    0.3333333333333333
    >>> mrr_at_k(["x", "y", "a"], {"a": 2}, 2)
    0.0
    """
    _check_k(k)
    for i, doc in enumerate(ranked[:k]):
        if qrels.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def metric_names(ks: Sequence[int]) -> list[str]:
    """Column names in report order.

    >>> metric_names([1, 5])
    ['ndcg@1', 'ndcg@5', 'recall@1', 'recall@5', 'mrr@10']
    """
    return [f"ndcg@{k}" for k in ks] + [f"recall@{k}" for k in ks] + ["mrr@10"]


def per_query(ranked: Sequence[str], qrels: Mapping[str, int], ks: Sequence[int]) -> dict[str, float]:
    """Every metric of :func:`metric_names` for one query."""
    out = {f"ndcg@{k}": ndcg_at_k(ranked, qrels, k) for k in ks}
    out.update({f"recall@{k}": recall_at_k(ranked, qrels, k) for k in ks})
    out["mrr@10"] = mrr_at_k(ranked, qrels, 10)
    return out


def evaluate_run(
    run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], ks: Sequence[int]
) -> dict[str, float]:
    """Mean of every metric over the queries of ``qrels`` (a query missing from ``run`` ranked nothing: 0).

    >>> qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    >>> evaluate_run({"q1": ["a", "b"], "q2": ["a", "b"]}, qrels, [1])
    {'ndcg@1': 0.5, 'recall@1': 0.5, 'mrr@10': 0.75}
    """
    if not qrels:
        raise ValueError("evaluate_run: no queries with relevance judgments")
    names = metric_names(ks)
    sums = dict.fromkeys(names, 0.0)
    for qid, judged in qrels.items():
        for name, value in per_query(list(run.get(qid, [])), judged, ks).items():
            sums[name] += value
    return {name: sums[name] / len(qrels) for name in names}
