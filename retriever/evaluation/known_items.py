"""A known-item set from PDFs with a text layer: each query is a rare term of one page, and that page is the answer.

For every page, the candidate queries are its words that occur on no other page of the corpus (after Qdrant's BM25
tokenizer: same stemming, stopwords dropped), at least ``min_chars`` long, preferring identifiers (a digit inside)
and longer words. Up to ``per_page`` of them become single-term queries, and one two-word phrase (the rare term with
its neighbour) when the page has one. The queries come from the corpus at run time, so nothing is written by hand,
and the answer is known by construction: this measures whether a search finds an exact string on its page, the
case visual retrieval alone misses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from indexer.store.sparse import ENCODER
from retriever.evaluation.metrics import mrr_at_k, recall_at_k


@dataclass(frozen=True)
class KnownItem:
    """One query and the page (``(source, page_number)``) that holds it."""

    query: str
    source: str
    page_number: int


def _clean(word: str) -> str:
    return word.strip(".,;:!?()[]{}\"'")


def known_items(
    pages: Mapping[tuple[str, int], str], per_page: int = 2, min_chars: int = 5, phrases: bool = True
) -> list[KnownItem]:
    """Queries from ``pages`` (``{(source, page_number): page text}``), sorted by page, deterministic."""
    terms_of = {key: [(w, ENCODER.terms(_clean(w))) for w in text.split()] for key, text in pages.items()}
    spread: Counter[int] = Counter()
    for words in terms_of.values():
        spread.update({t for _, terms in words for t in terms})
    items: list[KnownItem] = []
    for key in sorted(pages):
        words = terms_of[key]
        rare = []
        for i, (word, terms) in enumerate(words):
            w = _clean(word)
            if len(w) >= min_chars and terms and all(spread[t] == 1 for t in terms):
                rare.append((not any(c.isdigit() for c in w), -len(w), w, i))
        seen: set[str] = set()
        chosen = []
        for *_, w, i in sorted(rare):
            if w.lower() not in seen:
                seen.add(w.lower())
                chosen.append((w, i))
            if len(chosen) == per_page:
                break
        for w, _ in chosen:
            items.append(KnownItem(w, key[0], key[1]))
        if phrases and chosen:
            w, i = chosen[0]
            if i + 1 < len(words):
                items.append(KnownItem(f"{w} {_clean(words[i + 1][0])}".strip(), key[0], key[1]))
    return items


def score_known_items(
    items: Sequence[KnownItem], ranked: Sequence[Sequence[tuple[str, int]]], k: int = 10
) -> dict[str, float]:
    """MRR@k and recall@k of ranked ``(source, page_number)`` lists, one per item."""
    if not items:
        return {f"mrr@{k}": 0.0, f"recall@{k}": 0.0, "queries": 0}
    mrr = recall = 0.0
    for item, row in zip(items, ranked, strict=True):
        ids = [f"{s}#{n}" for s, n in row]
        qrels = {f"{item.source}#{item.page_number}": 1}
        mrr += mrr_at_k(ids, qrels, k)
        recall += recall_at_k(ids, qrels, k)
    return {f"mrr@{k}": mrr / len(items), f"recall@{k}": recall / len(items), "queries": len(items)}
