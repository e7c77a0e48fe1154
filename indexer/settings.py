"""The one settings object, read from ``COLSMOL_*`` environment variables.

Only the edges build it: the CLI, the API app factory and ``RAGPipeline.from_settings``.
Core classes take explicit constructor arguments instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DeviceName = Literal["auto", "cuda", "cpu", "mps"]
EncoderRuntime = Literal["auto", "fp32", "int8", "bf16", "openvino", "openvino-bf16"]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str:
    """A web origin as browsers send it in ``Origin``: ``scheme://host[:port]``, lower-cased, without its
    default port; ValueError for anything else.

    >>> normalize_origin("HTTPS://Example.COM:443/"), normalize_origin("http://127.0.0.1:8080")
    ('https://example.com', 'http://127.0.0.1:8080')
    """
    bad = ValueError(f"{origin!r} is not an origin: use scheme://host[:port], e.g. https://intranet.example.com")
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        raise bad from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        raise bad
    if parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        raise bad
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    keep_port = port is not None and port != _DEFAULT_PORTS[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if keep_port else "")


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
    generator_backend: Literal["smolvlm", "openai"] = Field(
        "smolvlm",
        description="Answer model backend: smolvlm (SmolVLM in process through transformers) or openai (any "
        "OpenAI-compatible vision-language server: vLLM, llama-server, Ollama, TGI; see generator_url).",
    )
    generator_model: str = Field(
        "HuggingFaceTB/SmolVLM-256M-Instruct", description="Hub id or local dir of the SmolVLM generator."
    )
    generator_url: str | None = Field(
        None, description="openai backend: the server's API base, e.g. http://127.0.0.1:8080/v1 (/v1 added if no path)."
    )
    generator_api_key: str | None = Field(None, description="openai backend: the server's API key, if it has one.")
    generator_model_name: str | None = Field(
        None, description="openai backend: the served model's name; unset takes the server's only model."
    )
    generator_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="openai backend: connect + per-read timeout of one request, in seconds."
    )
    generator_max_retries: int = Field(
        2, ge=0, le=10, description="openai backend: retries (with backoff) on connection errors, 429 and 5xx."
    )
    device: DeviceName = Field("auto", description="auto picks cuda, then mps, then cpu.")
    page_batch_size: int = Field(8, ge=1, description="Pages per encoder forward pass.")
    preprocess: Literal["tensor", "reference", "fast"] = Field(
        "tensor",
        description="Page tiling: torch ops on the encoder's device (same tiles and tokens as the reference, "
        "pixels equal on CUDA, at most two 8-bit levels off on a CPU), colpali-engine's PIL processor, or fast "
        "(one antialiased bicubic resize per view: same tiles and tokens, pixels only close).",
    )
    query_batch_size: int = Field(32, ge=1, description="Queries per encoder forward pass.")
    page_longest_edge: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Page resolution: the longest edge, in pixels, pages are scaled to before Idefics3 cuts them "
        "into 512 px tiles (rounded to whole tiles). Unset: the model's own (2048 for ColSmol: 17 tiles a Letter "
        "page; 1536: 10; 1024: 5). Fewer tiles embed faster and store fewer vectors, at some retrieval quality. "
        "A collection remembers the value it was indexed with, and refuses another.",
    )
    encoder_runtime: EncoderRuntime = Field(
        "auto",
        description="What runs the encoder's vision tower on a CPU: auto (each runtime timed once on one tile and "
        "checked against fp32, the fastest kept; remembered in the data dir per machine), fp32, int8, bf16, "
        "openvino or openvino-bf16. Not used on CUDA (bf16).",
    )
    dpi: int = Field(150, ge=36, le=600, description="Rendering resolution for PDF pages.")
    renderer: Literal["pdfium", "poppler"] = Field("pdfium", description="PDF renderer.")
    index_dtype: Literal["fp16", "int8"] = Field("fp16", description="Token index precision on the device.")
    pool_factor: int = Field(1, ge=1, le=8, description="Token pooling factor of the search index (1 = exact).")
    search_mode: Literal["exact", "two-stage", "tiered", "auto"] = Field(
        "exact",
        description="exact: every page's tokens resident and scored; tiered: pooled vectors resident (about 9 KB a "
        "page) propose prefetch_candidates pages, ranked exactly from the token file on local disk (corpora beyond "
        "memory); auto: exact while the exact index fits index_memory_gb, else tiered (chosen at start, logged, "
        "shown in /readyz); two-stage: Qdrant prefetch on pooled vectors, then exact rerank of vectors read back "
        "from the store.",
    )
    prefetch_candidates: int = Field(
        200, ge=1, le=10_000, description="Candidates per query that tiered and two-stage search rank exactly."
    )
    index_memory_gb: float = Field(
        8.0,
        gt=0,
        le=100_000,
        description="The memory a collection's search index may take (GB). auto search mode: exact while the exact "
        "index fits (pages x 1,100 tokens x 256 B in fp16, 132 B in int8), else tiered. On an accelerator: the "
        "index's device-memory budget; a write that would pass it is refused before the store changes.",
    )
    index_sync_interval_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="How often searches check the store for writes by other processes (server backend); 0: always.",
    )
    generator_decode: Literal["auto", "eager", "static", "lean", "lean-fp16"] = Field(
        "auto",
        description="SmolVLM decoding: eager generate; static (a static KV cache, CUDA graphs on CUDA); lean "
        "(colsmol's CPU loop: cached page features, preallocated KV cache, eager's tokens) or lean-fp16 (the same "
        "with fp16 decoder weights); auto = lean-fp16 on a CPU, eager on a GPU until static is verified there.",
    )
    generator_page_edge: int = Field(
        1536,
        ge=512,
        le=4096,
        description="Longest edge (px) of each page shown to the answer model: 1536 is 3 x 3 tiles of 512 px plus "
        "a global view; 1024 is 2 x 2 + 1 (about half the vision work on a CPU, smaller text harder to read).",
    )
    generator_page_features: Literal["memory", "disk"] = Field(
        "memory",
        description="lean decoding: keep each page's vision features in memory only, or also on disk beside the "
        "page image (about 1.5 MB a page, kept across restarts, deleted with the page).",
    )
    generator_precompute: bool = Field(
        False,
        description="lean decoding: compute the answer model's page features at ingest (about 20-30 s a page on "
        "2 CPU cores) so questions pay for their text only; implies generator_page_features=disk.",
    )
    ocr: Literal["auto", "off", "on"] = Field(
        "auto",
        description="OCR (Tesseract) for pages without a text layer (scans, photos): auto runs it when the tesseract "
        "command is installed, on requires it, off never runs it.",
    )
    text_max_chars: int = Field(
        20_000, ge=0, le=1_000_000, description="Most characters of text kept per page (payload size bound)."
    )
    query_mode: Literal["hybrid", "visual", "text"] = Field(
        "hybrid",
        description="Default search mode: hybrid (page images and page text, fused by RRF), visual (page images by "
        "MaxSim) or text (BM25 over page text). A collection without a text index is searched by images.",
    )
    fusion_k: int = Field(60, ge=1, le=10_000, description="hybrid: the RRF constant (score = sum of 1/(k + rank)).")
    fusion_depth: int = Field(
        50, ge=1, le=1000, description="hybrid: pages each side (images, text) contributes to the fusion."
    )
    answer_page_text: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Give the answer model the cited pages' text besides their images: auto = on for the openai "
        "backend (tokens are cheap there), off for smolvlm (a small context window).",
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
    convert_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Office, web, Markdown, EPUB and text files: seconds one LibreOffice conversion may take before "
        "its whole process group is killed (the file fails, the batch goes on).",
    )
    convert_workers: int | None = Field(
        None,
        ge=1,
        le=32,
        description="Office conversions run at the same time (each LibreOffice takes about one core); unset: half "
        "the cores, 1 to 4.",
    )
    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1, description="Largest file one upload may carry.")
    max_upload_files: int = Field(20, ge=1, description="Most files in one upload request.")
    search_batch_window_ms: float = Field(
        3.0, ge=0, le=1000, description="How long the API waits to gather concurrent searches into one batch."
    )
    search_max_batch: int = Field(64, ge=1, description="Most queries the API scores in one batch.")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web origins (scheme://host[:port], comma-separated) whose pages may upload and delete through "
        "the API besides its own page; other cross-origin browser requests to those routes get 403.",
    )
    answer_queue: int = Field(
        4, ge=0, le=1000, description="Answers that may wait for the generator besides the one running; more get 503."
    )
    explain_queue: int = Field(
        2, ge=0, le=1000, description="Heatmaps that may wait besides the one being computed; more get 503."
    )
    index_memory_budget_mb: int | None = Field(
        None,
        ge=1,
        description="Memory the search indexes of all collections may hold together (MB); the least recently used "
        "are unloaded past it and load again on their next search. Unset: half the machine's RAM (CPU) or 80% of "
        "the GPU's memory.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Server log lines: text, or json (one object a line, with the request's id)."
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve GET /metrics on this separate port (no key) instead of on the API port behind the "
        "admin key.",
    )

    @field_validator(
        "qdrant_url",
        "qdrant_api_key",
        "api_key",
        "generator_url",
        "generator_api_key",
        "generator_model_name",
        "qdrant_shard_number",
        "qdrant_replication_factor",
        "qdrant_write_consistency_factor",
        "page_longest_edge",
        "index_memory_budget_mb",
        "metrics_port",
        "convert_workers",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `COLSMOL_QDRANT_URL=` in a compose file or shell means "not set", not "connect to ''".
        return None if value == "" else value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        # COLSMOL_ALLOWED_ORIGINS="https://a.example, https://b.example" (a JSON list works too).
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [p for p in text.split(",") if p.strip()]
        if isinstance(value, list | tuple):
            return [normalize_origin(str(v)) for v in value]
        return value

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "pages"

    @property
    def runtimes_dir(self) -> Path:
        """Measured encoder runtime choices (``choices.json``) and converted models, per machine."""
        return self.data_dir / "runtimes"
