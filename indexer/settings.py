"""The one settings object, read from ``COLSMOL_*`` environment variables.

Only the edges build it: the CLI, the API app factory and ``RAGPipeline.from_settings``.
Core classes take explicit constructor arguments instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DeviceName = Literal["auto", "cuda", "cpu", "mps"]


class Settings(BaseSettings):
    """Every knob colsmol has, with the default a new user gets.

    >>> Settings(data_dir="/tmp/x").qdrant_path
    PosixPath('/tmp/x/qdrant')
    """

    model_config = SettingsConfigDict(env_prefix="COLSMOL_", extra="ignore")

    data_dir: Path = Field(Path("./colsmol_data"), description="Where embedded Qdrant and page images live.")
    qdrant_url: str | None = Field(None, description="Qdrant server URL; unset means embedded Qdrant Edge.")
    qdrant_api_key: str | None = Field(None, description="API key for the Qdrant server.")
    collection: str = Field("colsmol", description="Qdrant collection name.")
    encoder_model: str = Field("vidore/colSmol-256M", description="Hub id or local dir of the ColSmolVLM encoder.")
    generator_model: str = Field(
        "HuggingFaceTB/SmolVLM-256M-Instruct", description="Hub id or local dir of the SmolVLM generator."
    )
    device: DeviceName = Field("auto", description="auto picks cuda, then mps, then cpu.")
    page_batch_size: int = Field(8, ge=1, description="Pages per encoder forward pass.")
    preprocess: Literal["tensor", "reference"] = Field(
        "tensor",
        description="Page tiling: torch ops on the encoder's device (same tiles and tokens as the reference, "
        "pixels equal on CUDA, at most two 8-bit levels off on a CPU), or colpali-engine's PIL processor.",
    )
    query_batch_size: int = Field(32, ge=1, description="Queries per encoder forward pass.")
    dpi: int = Field(150, ge=36, le=600, description="Rendering resolution for PDF pages.")
    renderer: Literal["pdfium", "poppler"] = Field("pdfium", description="PDF renderer.")
    index_dtype: Literal["fp16", "int8"] = Field("fp16", description="Token index precision on the device.")
    pool_factor: int = Field(1, ge=1, le=8, description="Token pooling factor of the search index (1 = exact).")
    search_mode: Literal["exact", "two-stage"] = Field(
        "exact",
        description="exact: every page scored on the device; two-stage: Qdrant prefetch on pooled vectors, "
        "then exact rerank (for corpora larger than the device's memory).",
    )
    prefetch_candidates: int = Field(200, ge=1, le=10_000, description="Candidates per query in two-stage mode.")
    generator_decode: Literal["auto", "eager", "static"] = Field(
        "auto",
        description="SmolVLM decoding: eager generate, or a static KV cache compiled into CUDA graphs on CUDA; "
        "auto = eager until the static path is verified on a GPU.",
    )
    max_new_tokens: int = Field(256, ge=1, le=4096, description="Answer length limit.")
    api_key: str | None = Field(None, description="When set, /v1 routes need 'Authorization: Bearer <key>'.")
    qdrant_shard_number: int | None = Field(
        None, ge=1, description="Shards of a new server collection (server default when unset)."
    )
    qdrant_replication_factor: int | None = Field(
        None, ge=1, description="Copies of each shard in a new server collection (server default when unset)."
    )
    qdrant_write_consistency_factor: int | None = Field(
        None, ge=1, description="Replicas that must confirm a write to a new server collection (default 1)."
    )
    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1, description="Largest file one upload may carry.")
    max_upload_files: int = Field(20, ge=1, description="Most files in one upload request.")
    search_batch_window_ms: float = Field(
        3.0, ge=0, le=1000, description="How long the API waits to gather concurrent searches into one batch."
    )
    search_max_batch: int = Field(64, ge=1, description="Most queries the API scores in one batch.")

    @field_validator(
        "qdrant_url",
        "qdrant_api_key",
        "api_key",
        "qdrant_shard_number",
        "qdrant_replication_factor",
        "qdrant_write_consistency_factor",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `COLSMOL_QDRANT_URL=` in a compose file or shell means "not set", not "connect to ''".
        return None if value == "" else value

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "pages"
