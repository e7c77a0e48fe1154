"""``RAGPipeline``: the Python object users import. Ingest, search, answer, stream, explain.

A question's path: ``answer`` validates it -> ``search`` embeds it with the ColSmolVLM encoder and
scores it by MaxSim against the device-resident ``TokenIndex`` (rebuilt from Qdrant on first use,
then kept in step) -> the top-k page images come from the ``PageImageStore`` -> ``SmolVLMGenerator``
answers over them. Sources are the retrieval hits themselves, never parsed out of generated text.

Models load lazily, once. Reads (search, answer) may run on several threads at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.encoder import ColSmolEncoder
from indexer.errors import InvalidRequest, NotFound
from indexer.images import PageImageStore
from indexer.ingest import Ingestor, IngestReport, ProgressEvent
from indexer.settings import Settings
from indexer.store import open_store
from indexer.store.base import VectorStore
from rag.generator import SmolVLMGenerator
from rag.types import Answer
from retriever.search import Hit

log = logging.getLogger(__name__)

MAX_K = 100
MAX_ANSWER_K = 8
MAX_QUESTION_CHARS = 2000
NO_DOCUMENTS = "No documents are indexed yet. Ingest some first (colsmol ingest PATH)."
# Pages shown to SmolVLM are capped at this longest edge: 1,536 px is 3 x 3 tiles of 512 px plus the
# global view, 640 image tokens a page with SmolVLM-256M, so 3 pages stay near 2k tokens of context.
ANSWER_IMAGE_LONGEST_EDGE = 1536


class RAGPipeline:
    """Visual RAG over a Qdrant collection.

    Build it from the environment with :meth:`from_settings`, or pass the parts explicitly::

        with RAGPipeline.from_settings() as rag:
            rag.ingest(["docs/"])
            answer = rag.answer("What was the 2023 revenue?")
            answer.text, [(hit.file_name, hit.page_number) for hit in answer.sources]
    """

    def __init__(
        self,
        store: VectorStore,
        images: PageImageStore,
        encoder: ColSmolEncoder,
        generator: SmolVLMGenerator | None = None,
        index_device: str = "auto",
        index_dtype: str = "fp16",
        pool_factor: int = 1,
        renderer: str = "pdfium",
        dpi: int = 150,
        prefetch_pool_factor: int = 16,
        index_cache: Path | None = None,
        search_mode: str = "exact",
        prefetch_candidates: int = 200,
    ) -> None:
        self.store = store
        self.images = images
        self.encoder = encoder
        self.generator = generator
        self.index_device = index_device
        self.index_dtype = index_dtype
        self.pool_factor = pool_factor
        self.renderer = renderer
        self.dpi = dpi
        self.prefetch_pool_factor = prefetch_pool_factor
        self.index_cache = index_cache
        if search_mode not in ("exact", "two-stage"):
            raise InvalidRequest(f"search_mode must be 'exact' or 'two-stage', got {search_mode!r}")
        self.search_mode = search_mode
        self.prefetch_candidates = prefetch_candidates
        self._index_dirty = False
        self._index: Any = None
        self._index_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> RAGPipeline:
        s = settings or Settings()
        store = open_settings_store(s)
        images = PageImageStore(s.images_dir / s.collection)
        encoder = ColSmolEncoder(
            s.encoder_model, device=s.device, batch_size=s.page_batch_size, query_batch_size=s.query_batch_size,
            preprocess=s.preprocess,
        )
        generator = SmolVLMGenerator(s.generator_model, device=s.device, decode=s.generator_decode)
        kwargs: dict[str, Any] = {
            "index_device": s.device,
            "index_dtype": s.index_dtype,
            "pool_factor": s.pool_factor,
            "renderer": s.renderer,
            "dpi": s.dpi,
            "index_cache": s.data_dir / "index-cache" / s.collection,
            "search_mode": s.search_mode,
            "prefetch_candidates": s.prefetch_candidates,
        }
        kwargs.update(overrides)
        return cls(store, images, encoder, generator, **kwargs)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> RAGPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store (and its Edge lock), the models and the index."""
        if self._closed:
            return
        self._closed = True
        self._save_index_cache()
        self._index = None
        self.encoder.close()
        if self.generator is not None:
            self.generator.close()
        self.store.close()

    # ------------------------------------------------------------------ ingest
    def ingestor(self, password: str | None = None, renderer: str | None = None, dpi: int | None = None) -> Ingestor:
        factor = self.prefetch_pool_factor
        return Ingestor(
            self.store,
            self.encoder,
            self.images,
            renderer=renderer or self.renderer,
            dpi=dpi or self.dpi,
            password=password,
            batch_size=self.encoder.batch_size,
            pool=lambda v: prefetch_vectors(v, factor),
            on_upsert=self._index_upsert,
            on_delete=self._index_delete,
        )

    def _index_upsert(self, records: Sequence[Any]) -> None:
        if self._index is not None:
            self._index.add([r.point_id for r in records], [r.vectors for r in records], [r.payload for r in records])
            self._index_dirty = True

    def _index_delete(self, point_ids: Sequence[str]) -> None:
        if self._index is not None and point_ids:
            self._index.remove(point_ids)
            self._index_dirty = True

    def ingest(
        self,
        paths: Sequence[str | Path] | str | Path,
        metadata: dict[str, Any] | None = None,
        prune: bool = False,
        password: str | None = None,
        renderer: str | None = None,
        dpi: int | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
    ) -> IngestReport:
        """Index files and folders (incremental: unchanged files are skipped without the encoder)."""
        if isinstance(paths, str | Path):
            paths = [paths]
        with self._write_lock:
            self._sync_index()  # take in foreign writes first, so marking the version below loses none
            try:
                report = self.ingestor(password, renderer, dpi).ingest(
                    paths, metadata, prune=prune, progress=progress
                )
            finally:
                self._mark_index_synced()
        return report

    def delete(self, doc_id: str) -> int:
        """Remove one document (pages, marker and page images); NotFound if it is not indexed."""
        if self.store.get_document(doc_id) is None and not self.store.page_ids(doc_id):
            raise NotFound(f"no document with id {doc_id!r}; `colsmol documents` lists them")
        with self._write_lock:
            self._sync_index()
            try:
                n = self.ingestor().delete(doc_id)
            finally:
                self._mark_index_synced()
        return n

    def documents(self) -> list[Any]:
        return self.store.list_documents()

    # ------------------------------------------------------------------ search
    @property
    def index(self) -> Any:
        """The token index: loaded from the on-disk cache and brought up to date from the store (a
        payload-only scan), or built from the store's vectors when there is no usable cache."""
        with self._index_lock:
            if self._index is None:
                self._index = self._load_index_cache() or self._build_index()
            return self._index

    def _build_index(self) -> Any:
        from retriever.token_index import TokenIndex

        idx = TokenIndex(device=self.index_device, dtype=self.index_dtype, pool_factor=self.pool_factor)
        idx.build(self.store)
        self._index_dirty = True
        return idx

    def _load_index_cache(self) -> Any:
        """Rebuilding from Qdrant is bound by converting its float lists (about 100 pages/s from Edge),
        so the index is also kept as a cache file. Qdrant stays the source of truth: the cache is only
        used after ``sync`` has reconciled it with the store's pages."""
        cache = self.index_cache
        if cache is None or not (cache / "meta.json").is_file():
            return None
        from retriever.token_index import TokenIndex

        try:
            idx = TokenIndex.load(cache, device=self.index_device)
            if idx.dtype != self.index_dtype or idx.pool_factor != self.pool_factor:
                return None
            if idx.sync(self.store):
                self._index_dirty = True
            return idx
        except Exception as exc:  # noqa: BLE001 - a stale or corrupt cache is rebuilt, never fatal
            log.warning("ignoring the token index cache in %s (%s); rebuilding from the store", cache, exc)
            return None

    def _save_index_cache(self) -> None:
        if self._index is None or self.index_cache is None or not self._index_dirty:
            return
        try:
            self._index.save(self.index_cache)
            self._index_dirty = False
        except OSError as exc:
            log.warning("could not write the token index cache to %s: %s", self.index_cache, exc)

    def _sync_index(self) -> None:
        if self._index is not None and self._index.sync(self.store):
            self._index_dirty = True

    def _mark_index_synced(self) -> None:
        if self._index is not None:
            self._index.mark_synced(self.store.version())

    def search(
        self, query: str | list[str], k: int = 10, filter: dict[str, Any] | None = None
    ) -> list[Hit] | list[list[Hit]]:
        """Top-k pages by exact MaxSim; a list of queries gives a list of hit lists."""
        texts = [query] if isinstance(query, str) else list(query)
        _check_k(k, MAX_K)
        for t in texts:
            _check_text(t, "query")
        if self.search_mode == "two-stage":
            # Nothing resident: Qdrant proposes candidates from the pooled vectors, the device reranks
            # them exactly with their full vectors fetched from the store.
            from retriever.search import TwoStageSearcher

            two = TwoStageSearcher(
                self.store, None, self.encoder.embed_queries, self.prefetch_candidates, self.index_device
            )
            return two.search(query, k=k, filter=filter)
        index = self.index
        self._sync_index()  # cheap version check: picks up other processes' writes
        if not len(index):
            return [] if isinstance(query, str) else [[] for _ in texts]
        from retriever.search import Searcher

        searcher = Searcher(self.store, index, self.encoder.embed_queries)
        return searcher.search(query, k=k, filter=filter)

    # ------------------------------------------------------------------ answer
    def _prepare_answer(
        self, question: str, k: int, filter: dict[str, Any] | None
    ) -> tuple[list[Hit], list[Any], list[str], dict[str, float]]:
        _check_text(question, "question")
        _check_k(k, MAX_ANSWER_K)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        hits = self.search(question, k=k, filter=filter)
        timings["search"] = time.perf_counter() - t
        sources: list[Hit] = []
        pages: list[Any] = []
        warnings: list[str] = []
        for hit in hits:  # type: ignore[union-attr]
            try:
                img = self.images.load(hit.point_id)
            except (FileNotFoundError, OSError):
                warnings.append(f"page image missing for {hit.file_name} page {hit.page_number}; skipped")
                continue
            img.thumbnail((ANSWER_IMAGE_LONGEST_EDGE, ANSWER_IMAGE_LONGEST_EDGE))
            sources.append(hit)
            pages.append(img)
        return sources, pages, warnings, timings

    def _generator(self) -> SmolVLMGenerator:
        if self.generator is None:
            raise InvalidRequest("this pipeline was built without a generator")
        return self.generator

    def answer(
        self, question: str, k: int = 3, filter: dict[str, Any] | None = None, max_new_tokens: int = 256
    ) -> Answer:
        """Answer from the top-k pages, citing them. An empty index answers so without loading SmolVLM."""
        if self.store.count_pages() == 0:
            _check_text(question, "question")
            return Answer(NO_DOCUMENTS, [], {}, [])
        sources, pages, warnings, timings = self._prepare_answer(question, k, filter)
        if not sources:
            return Answer("No indexed page matched the question.", [], timings, warnings)
        t = time.perf_counter()
        text = self._generator().generate(question, pages, max_new_tokens=max_new_tokens)
        timings["generate"] = time.perf_counter() - t
        return Answer(text, sources, timings, warnings)

    def stream_answer(
        self, question: str, k: int = 3, filter: dict[str, Any] | None = None, max_new_tokens: int = 256
    ) -> Iterator[str | Answer]:
        """Yield text pieces as they are generated, then one final :class:`Answer` with the sources."""
        if self.store.count_pages() == 0:
            _check_text(question, "question")
            yield NO_DOCUMENTS
            yield Answer(NO_DOCUMENTS, [], {}, [])
            return
        sources, pages, warnings, timings = self._prepare_answer(question, k, filter)
        if not sources:
            text = "No indexed page matched the question."
            yield text
            yield Answer(text, [], timings, warnings)
            return
        t = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        for piece in self._generator().stream(question, pages, max_new_tokens=max_new_tokens):
            if first is None:
                first = time.perf_counter() - t
            parts.append(piece)
            yield piece
        timings["first_token"] = first or 0.0
        timings["generate"] = time.perf_counter() - t
        yield Answer("".join(parts).strip(), sources, timings, warnings)

    # ------------------------------------------------------------------ explain
    def explain(self, query: str, hit: Hit | str, token: int | None = None) -> Any:
        """Which regions of a page matched ``query``: a :class:`rag.explain.SimilarityMap` at the
        page's pixel size (``.heatmap``, ``.overlay()``); ``token`` picks one query token's map."""
        from rag.explain import similarity_map

        _check_text(query, "query")
        point_id = _point_id(hit)
        try:
            image = self.images.load(point_id)
        except (FileNotFoundError, OSError, ValueError):
            raise NotFound(f"no stored page image for point id {point_id!r}") from None
        return similarity_map(self.encoder, image, query, token=token)


def open_settings_store(s: Settings) -> VectorStore:
    """The collection the settings name: embedded Edge, or the server with its cluster settings."""
    return open_store(
        s.qdrant_path,
        s.collection,
        url=s.qdrant_url,
        api_key=s.qdrant_api_key,
        **(
            {
                "shard_number": s.qdrant_shard_number,
                "replication_factor": s.qdrant_replication_factor,
                "write_consistency_factor": s.qdrant_write_consistency_factor,
            }
            if s.qdrant_url
            else {}
        ),
    )


def prefetch_vectors(vectors: np.ndarray, factor: int) -> np.ndarray:
    """The small pooled set stored for Qdrant prefetch: means of ``factor`` consecutive tokens,
    re-normalized. ``(n, 128) -> (ceil(n / factor), 128)``.

    Consecutive ColSmol tokens are neighbouring cells of one 512 px tile (8 x 8 cells a tile, row
    major), so this is a cheap spatial pooling. It runs on the ingest writer thread for every page:
    at 0.17 ms a 1,100-token page (measured on this 2-core machine) it keeps up with the GPU, where
    clustering (45 to 60 ms a page on one core) would not. The pooled set only proposes candidates;
    exact MaxSim on all tokens ranks them.

    >>> prefetch_vectors(np.ones((33, 128), dtype=np.float32), 16).shape
    (3, 128)
    """
    n = vectors.shape[0]
    groups = -(-n // factor)
    padded = np.zeros((groups * factor, vectors.shape[1]), dtype=np.float32)
    padded[:n] = vectors
    counts = np.full(groups, factor, dtype=np.float32)
    counts[-1] = n - (groups - 1) * factor
    pooled = padded.reshape(groups, factor, -1).sum(axis=1) / counts[:, None]
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.ascontiguousarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


def _point_id(hit: Hit | str) -> str:
    return hit if isinstance(hit, str) else hit.point_id


def _check_text(text: Any, what: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"the {what} is empty")
    if len(text) > MAX_QUESTION_CHARS:
        raise InvalidRequest(f"the {what} is {len(text)} characters; the limit is {MAX_QUESTION_CHARS}")


def _check_k(k: Any, limit: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= limit:
        raise InvalidRequest(f"k must be an integer from 1 to {limit}, got {k!r}")
