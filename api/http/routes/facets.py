"""GET /v1/facets: what searches can be filtered on, from what the collection holds (the web page's filters).

Documents (``doc_id``) by name, and user metadata keys with their values and how many documents have each.
Booleans are left out: a filter cannot match them (indexer.filters says why).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from api.http.deps import PipelineDep
from api.http.routes.common import shown_name
from api.http.schemas import DocumentFacet, Facets, FacetValue, MetadataFacet
from indexer.types import DocumentInfo

router = APIRouter(tags=["documents"])


def facets_of(docs: Iterable[DocumentInfo], limit: int, values: int) -> Facets:
    """Facets of ``docs``: at most ``limit`` documents (by name) and ``values`` values per metadata key.

    >>> d = DocumentInfo("d1", "upload:a.pdf", "a.pdf", 2, 2, "h", "t", True, {"team": "x", "ok": True})
    >>> f = facets_of([d], 10, 10)
    >>> [(m.key, [(v.value, v.documents) for v in m.values]) for m in f.metadata], f.pages
    ([('team', [('x', 1)])], 2)
    """
    docs = list(docs)
    counts: dict[str, Counter[Any]] = {}
    for d in docs:
        for key, value in (d.metadata or {}).items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                continue
            counts.setdefault(key, Counter())[(type(value).__name__, value)] += 1
    metadata = [
        MetadataFacet(
            key=key,
            values=[FacetValue(value=v, documents=n) for (_, v), n in c.most_common(values)],
            values_total=len(c),
        )
        for key, c in sorted(counts.items())
    ]
    named = sorted(docs, key=lambda d: ((shown_name(d.file_name, d.metadata) or d.file_name).lower(), d.doc_id))
    return Facets(
        documents=[
            DocumentFacet(
                doc_id=d.doc_id,
                file_name=shown_name(d.file_name, d.metadata) or d.file_name,
                page_count=d.page_count,
                complete=d.complete,
            )
            for d in named[:limit]
        ],
        documents_total=len(docs),
        pages=sum(d.pages_stored for d in docs),
        metadata=metadata,
    )


@router.get("/facets", response_model=Facets)
async def facets(
    pipeline: PipelineDep,
    limit: int = Query(1000, ge=0, le=10_000, description="Most documents listed."),
    values: int = Query(100, ge=1, le=1000, description="Most values listed per metadata key."),
) -> Facets:
    """Filterable values: documents (filter key ``doc_id``) and metadata (``metadata.<key>``), with counts."""
    docs = await run_in_threadpool(pipeline.documents, True)
    return facets_of(docs, limit, values)
