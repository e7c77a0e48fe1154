"""The one Filter: parsing at the edge, and the host mask agreeing with Qdrant on both backends."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.errors import InvalidRequest
from indexer.filters import Filter
from indexer.store.base import DIM, page_point_id
from indexer.types import PageRecord
from tests.test_store import make_store

# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"lang": "en"}, "unknown field 'lang'"),
        ({"metadata.": "x"}, "unknown field 'metadata.'"),
        ({"": 1}, "not a field"),
        ({"page_number": "3"}, "needs an integer"),
        ({"page_number": True}, "needs an integer"),
        ({"page_number": 2.0}, "needs an integer"),
        ({"doc_id": 3}, "needs a string"),
        ({"doc_id": ["a", 1]}, "needs a string"),
        ({"metadata.n": [1, "a"]}, "all strings or all integers"),
        ({"metadata.n": [1.5]}, "all strings or all integers"),
        ({"metadata.n": {"nested": 1}}, "needs a string or a number"),
        ({"metadata.n": float("nan")}, "not a finite number"),
        ({"metadata.n": None}, "needs a string or a number"),
        ({"metadata.flag": True}, "boolean values cannot be filtered on"),
    ],
)
def test_bad_filters_are_invalid_requests_naming_the_key(raw, match):
    with pytest.raises(InvalidRequest, match=match):
        Filter.parse(raw)


def test_not_an_object():
    with pytest.raises(InvalidRequest, match="must be an object"):
        Filter.parse(["doc_id"])  # type: ignore[arg-type]


def test_command_line_pairs():
    f = Filter.from_pairs(["doc_id=a,b", "page_number=3", "metadata.year=2024"])
    assert f.to_dict() == {"doc_id": ["a", "b"], "page_number": 3, "metadata.year": "2024"}
    assert Filter.from_pairs(["page_number=1,2"]).to_dict() == {"page_number": [1, 2]}
    with pytest.raises(InvalidRequest, match="not an integer"):
        Filter.from_pairs(["page_number=three"])
    with pytest.raises(InvalidRequest, match="not key=value"):
        Filter.from_pairs(["doc_id"])
    with pytest.raises(InvalidRequest, match="unknown field 'lang'"):
        Filter.from_pairs(["lang=en"])


def test_filters_are_values():
    a = Filter.parse({"doc_id": ["x"], "metadata.lang": "en"})
    assert a == Filter.parse(a.to_dict()) and hash(a) == hash(Filter.parse(a.to_dict()))
    assert Filter.parse(a) is a
    assert not Filter.parse(None) and not Filter.parse({})
    assert Filter.parse({"doc_id": []}).matches_nothing


# ---------------------------------------------------------------------------------------------- congruence

PAYLOAD_METADATA = [
    {"lang": "en", "n": 3, "flag": True, "score": 2.5},
    {"lang": "fr", "n": "3", "flag": False, "score": 3},
    {"lang": "en", "n": 3.0, "flag": 1, "score": 2.5},
    {"lang": "de", "n": 4},
    {"lang": "EN", "tags": ["a", "b"]},
    {},
]

FILTERS = [
    {},
    {"metadata.lang": "en"},
    {"metadata.lang": ["en", "fr"]},
    {"metadata.n": 3},
    {"metadata.n": "3"},
    {"metadata.n": [3, 4]},
    {"metadata.n": 3.0},
    {"metadata.flag": 1},
    {"metadata.score": 2.5},
    {"metadata.tags": "a"},
    {"metadata.tags": ["b", "z"]},
    {"metadata.missing": "x"},
    {"page_number": 2},
    {"page_number": [1, 3, 5]},
    {"doc_id": "doc-b", "page_number": [1, 2]},
    {"file_name": "doc-a.pdf", "metadata.lang": "en"},
    {"source": "/docs/doc-a.pdf"},
    {"doc_id": []},
]


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_host_mask_agrees_with_qdrant(backend, tmp_path):
    """Exact search filters with ``Filter.mask``, two-stage and listings with Qdrant: they must select the same."""
    store = make_store(backend, tmp_path)
    try:
        rng = np.random.default_rng(0)
        records = []
        for i, meta in enumerate(PAYLOAD_METADATA):
            doc = "doc-a" if i < 3 else "doc-b"
            payload = {
                "doc_id": doc,
                "source": f"/docs/{doc}.pdf",
                "file_name": f"{doc}.pdf",
                "page_number": i % 3 + 1,
                "page_count": 3,
                "metadata": meta,
            }
            vectors = rng.standard_normal((4, DIM)).astype(np.float32)
            records.append(PageRecord(page_point_id(doc, i), vectors, payload, vectors[:2].copy()))
        store.upsert_pages(records)
        query = rng.standard_normal((3, DIM)).astype(np.float32)
        for raw in FILTERS:
            flt = Filter.parse(raw)
            host = {r.point_id for r, keep in zip(records, flt.mask([r.payload for r in records]), strict=True) if keep}
            got = {pid for pid, _ in store.prefetch(query, 100, flt, using="tokens")}
            assert got == host, (backend, raw)
    finally:
        store.close()


def test_why_booleans_are_refused(tmp_path):
    """qdrant-edge-py turns a boolean match value into the integer 1: embedded Qdrant cannot match booleans.

    If this starts failing, the binding was fixed: booleans can then be allowed in ``Filter``.
    """
    qe = pytest.importorskip("qdrant_edge")
    assert qe.MatchValue(True).value == 1 and not isinstance(qe.MatchValue(True).value, bool)
