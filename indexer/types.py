"""Frozen records that flow through the pipeline: a rendered page in, a stored page out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@dataclass(frozen=True)
class RenderedPage:
    """One page of one input file, rendered to RGB pixels.

    ``page_number`` is 1-based. ``width``/``height`` are the rendered pixel size.
    """

    image: Image.Image
    page_number: int
    page_count: int
    width: int
    height: int


@dataclass(frozen=True)
class PageRecord:
    """What the store keeps for one page.

    ``vectors`` is the page multivector, shape ``(n_tokens, 128)``, float32, finite, padding removed.
    ``pooled`` is a small ``(n_pooled, 128)`` set used for candidate prefetch at scale (may be ``None``).
    ``payload`` holds document id, source path, file name, page number, page count, page size,
    content hash, ingest time and user metadata (see ``indexer.store.base.PAYLOAD_FIELDS``).
    """

    point_id: str
    vectors: np.ndarray
    payload: dict[str, Any]
    pooled: np.ndarray | None = None


@dataclass(frozen=True)
class DocumentInfo:
    """One indexed document as listed by ``colsmol documents``.

    A document is its content (``doc_id`` comes from the file's hash), so identical copies are one document:
    ``sources`` lists every path it was last seen at (``source``, the first, is the one shown; an upload's is
    ``upload:<its name>``), and ``file_name`` is the last part of ``source``.
    """

    doc_id: str
    source: str
    file_name: str
    page_count: int
    pages_stored: int
    content_hash: str
    ingested_at: str
    complete: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    #: Pages with their visual embedding stored (the rest are searchable by text only, so far).
    pages_visual: int | None = None

    @property
    def state(self) -> str:
        """``complete`` (every page embedded, the document listed), ``visual`` (embedding under way: some pages
        searchable by pictures) or ``text`` (only the pages' text is stored yet: searchable by text)."""
        if self.complete:
            return "complete"
        visual = self.pages_stored if self.pages_visual is None else self.pages_visual
        return "visual" if visual > 0 else "text"

    @property
    def paths(self) -> tuple[str, ...]:
        """Every known source, ``source`` first (older records have only ``source``)."""
        return self.sources or (self.source,)
