"""The Qdrant store: embedded Qdrant Edge by default, a Qdrant server when a URL is given.

>>> from indexer.store import open_store  # doctest: +SKIP
>>> store = open_store(Path("colsmol_data/qdrant"), "colsmol")  # doctest: +SKIP

The backends import ``qdrant_edge`` / ``qdrant_client`` only when constructed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.store.base import VectorStore
from indexer.store.edge import EdgeStore
from indexer.store.server import ServerStore


def open_store(
    data_dir: Path, collection: str, url: str | None = None, api_key: str | None = None, **cluster: Any
) -> VectorStore:
    """Open the collection: :class:`EdgeStore` under ``data_dir`` when ``url`` is None, else a
    :class:`ServerStore` on ``url``. ``cluster`` (``shard_number``, ``replication_factor``,
    ``write_consistency_factor``, used at collection creation; also ``timeout`` in seconds) applies
    to the server backend only.
    """
    if url:
        return ServerStore(url, collection, api_key=api_key, **cluster)
    return EdgeStore(Path(data_dir), collection)


__all__ = ["EdgeStore", "ServerStore", "VectorStore", "open_store"]
