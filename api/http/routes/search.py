"""POST /v1/search: the query joins the next batch of the search worker (api.http.batcher)."""

from __future__ import annotations

from fastapi import APIRouter

from api.http.deps import BatcherDep, DocNamesDep
from api.http.schemas import SearchRequest, SearchResponse
from indexer.filters import Filter

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse)
async def search(body: SearchRequest, batcher: BatcherDep, names: DocNamesDep) -> SearchResponse:
    """Top-k pages, best first: by page images (MaxSim), page text (BM25) or both fused (``mode``)."""
    hits = await batcher.search(body.query, body.k, Filter.parse(body.filter), body.mode)
    return SearchResponse(hits=await names.hits_out(hits))
