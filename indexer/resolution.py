"""The page resolution a collection was indexed at, kept with the collection, so searches use the same one.

A query is scored against page tokens; pages embedded at another resolution (``COLSMOL_PAGE_LONGEST_EDGE``)
have other tiles and other tokens, and mixing them would silently skew every ranking. So the first ingest
records the longest edge in the collection's metadata (``VectorStore.update_meta``), and ingest and search
refuse an encoder set to another value. A collection without the record (made before it existed) was
indexed at the model's own resolution.
"""

from __future__ import annotations

from indexer.errors import ConfigError
from indexer.store.base import VectorStore

META_KEY = "page_longest_edge"
ENV = "COLSMOL_PAGE_LONGEST_EDGE"


def recorded_longest_edge(store: VectorStore, model_default: int) -> int | None:
    """The collection's page longest edge; ``model_default`` for an older collection with embedded pages but no
    record; None for a collection without embedded pages (text-only pages, stored before the encoder loads, say
    nothing about a resolution)."""
    value = store.get_meta().get(META_KEY)
    if value is not None:
        return int(value)
    return model_default if store.visual_page_count() else None


def check_longest_edge(store: VectorStore, longest_edge: int, model_default: int, *, record: bool = False) -> None:
    """Raise ``ConfigError`` when the collection was indexed at another longest edge than ``longest_edge``.

    With ``record`` (ingest), a collection without the record gets it, so the next search can check it.
    """
    indexed = recorded_longest_edge(store, model_default)
    if indexed is not None and indexed != longest_edge:
        raise ConfigError(
            f"this collection was indexed at page longest edge {indexed} px, but the encoder is set to "
            f"{longest_edge} px: set {ENV}={indexed} to use it (or COLSMOL_COLLECTION=another name to index "
            f"at {longest_edge} px)"
        )
    if record and store.get_meta().get(META_KEY) is None:
        store.update_meta({META_KEY: int(longest_edge)})
