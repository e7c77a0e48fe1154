"""Pages in: rendering, ColSmolVLM encoding, the Qdrant store and folder ingest.

Heavy modules (torch, transformers, colpali-engine, qdrant) are imported lazily by the
classes that need them, so importing this package stays cheap.
"""

from indexer.errors import (
    ColsmolError,
    ConfigError,
    DocumentError,
    InvalidRequest,
    ModelUnavailable,
    NotFound,
    SchemaMismatch,
    StoreUnavailable,
)

__all__ = [
    "ColsmolError",
    "ConfigError",
    "DocumentError",
    "InvalidRequest",
    "ModelUnavailable",
    "NotFound",
    "SchemaMismatch",
    "StoreUnavailable",
]
