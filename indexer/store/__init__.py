"""The Qdrant store: embedded Qdrant Edge by default, a Qdrant server when a URL is set.

>>> from indexer.store import open_store  # doctest: +SKIP
>>> with open_store(Settings()) as store:  # doctest: +SKIP
...     store.list_documents()

The backends import ``qdrant_edge`` / ``qdrant_client`` only when constructed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from indexer.store.base import StoredPage, VectorStore
from indexer.store.edge import EdgeStore
from indexer.store.server import ServerStore

if TYPE_CHECKING:
    from indexer.settings import Settings


def open_store(settings: Settings, *, timeout: int | None = None) -> VectorStore:
    """The collection ``settings`` name: :class:`EdgeStore` under ``settings.qdrant_path`` when no
    ``qdrant_url`` is set, else a :class:`ServerStore` with the cluster settings (used only when
    colsmol creates the collection). ``timeout`` (seconds) applies to the server backend.
    """
    if settings.qdrant_url:
        return ServerStore(
            settings.qdrant_url,
            settings.collection,
            api_key=settings.qdrant_api_key,
            shard_number=settings.qdrant_shard_number,
            replication_factor=settings.qdrant_replication_factor,
            write_consistency_factor=settings.qdrant_write_consistency_factor,
            **({} if timeout is None else {"timeout": timeout}),
        )
    return EdgeStore(settings.qdrant_path, settings.collection)


__all__ = ["EdgeStore", "ServerStore", "StoredPage", "VectorStore", "open_store"]
