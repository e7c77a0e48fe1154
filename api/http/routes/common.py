"""Turning core results into response bodies, shared by the search, answer and document routes."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.http.schemas import HitOut, RegionOut
from retriever.search import Hit

#: The MCP resource of a page image (:mod:`api.mcp.server` serves it).
PAGE_URI = "colsmol://pages/{point_id}"
#: The same for a page of another collection than the default one.
COLLECTION_PAGE_URI = "colsmol://collections/{collection}/pages/{point_id}"


def page_urls(point_id: str, prefix: str = "/v1") -> tuple[str, str]:
    """A page image's URLs (full size, thumbnail) under ``prefix``: ``/v1`` or a collection's
    ``/v1/collections/{name}``."""
    base = f"{prefix}/pages/{point_id}/image"
    return f"{base}?size=full", f"{base}?size=thumb"


def shown_name(file_name: str | None, metadata: dict[str, Any] | None) -> str | None:
    """The name shown for a document: its ``file_name`` (an upload's is the client's name). Uploads made before
    sources named them (``upload:<name>``) kept the client's name in ``metadata.original_name``."""
    original = (metadata or {}).get("original_name")
    return original if isinstance(original, str) and original else file_name


class DocNames:
    """Shapes hits into response bodies. A hit's ``file_name`` is current (renames update the pages); only
    uploads from before sources named them need their document's ``metadata.original_name``, looked up once
    per document and cached."""

    def __init__(self, store: Any, prefix: str = "/v1", collection: str | None = None) -> None:
        self.store = store
        #: A collection other than the default one (its pages' MCP resources name it), else None.
        self.collection = collection
        #: Where this collection's routes are (page image URLs are built under it).
        self.prefix = prefix
        self._names: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def forget(self, doc_id: str) -> None:
        with self._lock:
            self._names.pop(doc_id, None)

    def _lookup(self, doc_ids: list[str]) -> None:
        for doc_id in doc_ids:
            info = self.store.get_document(doc_id)
            original = (info.metadata or {}).get("original_name") if info is not None else None
            name = original if isinstance(original, str) and original else None
            with self._lock:
                self._names[doc_id] = name

    async def hits_out(self, hits: Sequence[Hit], base_url: str | None = "") -> list[HitOut]:
        """The one mapping from ranked core hits to their output model. ``base_url`` prefixes the image links:
        ``""`` keeps them relative (the /v1 routes), a server address makes them absolute (OpenAI citations,
        MCP over HTTP), ``None`` leaves them out (MCP over stdio, where no HTTP server exists)."""
        missing = sorted({h.doc_id for h in hits if h.doc_id and h.doc_id not in self._names})
        if missing:
            await run_in_threadpool(self._lookup, missing)
        out = []
        for rank, hit in enumerate(hits, 1):
            image_url, thumb_url = page_urls(hit.point_id, self.prefix)
            out.append(
                HitOut(
                    rank=rank,
                    point_id=hit.point_id,
                    doc_id=hit.doc_id,
                    source=hit.source,
                    file_name=self._names.get(hit.doc_id or "") or hit.file_name,
                    page_number=hit.page_number,
                    score=round(float(hit.score), 6),
                    image_url=None if base_url is None else base_url + image_url,
                    thumb_url=None if base_url is None else base_url + thumb_url,
                    page_uri=(
                        COLLECTION_PAGE_URI.format(collection=self.collection, point_id=hit.point_id)
                        if self.collection
                        else PAGE_URI.format(point_id=hit.point_id)
                    ),
                    regions=[RegionOut(**r.to_dict()) for r in hit.regions],
                    found_by=list(hit.found_by),
                )
            )
        return out


def sources_text(hits: Sequence[HitOut]) -> str:
    """The ``[n]`` list appended to an answer's text (Markdown that reads as plain text too).

    >>> h = HitOut(rank=1, point_id="p", doc_id="d", file_name="a.pdf", page_number=2, score=1.0,
    ...            image_url=None, thumb_url=None, page_uri="colsmol://pages/p")
    >>> sources_text([h])
    '\\n\\nSources:\\n- [1] a.pdf, page 2'
    """
    if not hits:
        return ""
    lines = [f"- [{h.rank}] {h.file_name or h.doc_id}, page {h.page_number}" for h in hits]
    return "\n\nSources:\n" + "\n".join(lines)
