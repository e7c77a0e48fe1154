"""``RAGPipeline``: the Python object users import. Ingest, search, answer, stream, explain.

It composes and owns nothing else: the store (``indexer.store``), the page images, the ColSmolVLM encoder, a
searcher (``rag.searchers``: exact or tiered over a ``LiveIndex`` that follows the store, or two-stage), and a generator
(``rag.generators``).

A question's path: ``answer`` validates it -> ``search`` embeds it with the encoder and ranks pages by MaxSim ->
the top-k page images come from the ``PageImageStore`` -> the generator answers over them. Sources are the
retrieval hits themselves, never parsed out of generated text.

Models load lazily, once. Reads (search, answer) may run on several threads at once.
"""

from __future__ import annotations

import collections.abc
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.errors import HintedText, InvalidRequest, NotFound
from indexer.filters import Filter
from indexer.images import PageImageStore
from indexer.ingest import Ingestor, IngestReport, Progress, RendererName
from indexer.models.encoder import ColSmolEncoder
from indexer.render.office import OfficeConverter
from indexer.resolution import check_longest_edge, recorded_longest_edge
from indexer.settings import Settings
from indexer.store import open_store
from indexer.store.base import VectorStore
from indexer.text import DEFAULT_MAX_CHARS, OcrMode
from indexer.types import DocumentInfo
from rag.generators import make_generator
from rag.generators.base import Generator, PrecomputesPages
from rag.searchers import build_searcher
from rag.types import Answer
from retriever.hybrid import HybridSearcher, Mode, parse_mode
from retriever.live_index import LiveIndex
from retriever.pooling import prefetch_vectors
from retriever.regions import RegionFinder
from retriever.search import ExactSearcher, Hit, Searcher

if TYPE_CHECKING:
    from PIL import Image

    from retriever.explain import SimilarityMap

log = logging.getLogger(__name__)

MAX_K = 100
MAX_ANSWER_K = 8
MAX_QUESTION_CHARS = 2000
#: The answer on an empty index; each interface phrases its own invitation to add documents (``hints``).
NO_DOCUMENTS = HintedText(
    "No documents are indexed yet.",
    {
        "cli": "Ingest some first: colsmol ingest PATH",
        "http": "Upload some first: POST /v1/documents, or Add documents on the web page.",
    },
)
NO_MATCH = "No indexed page matched the question."
#: Characters of one page's text given to the generator with its image (``answer_page_text``).
PAGE_TEXT_CONTEXT_CHARS = 4000

FilterLike = Filter | Mapping[str, Any] | None


class RAGPipeline:
    """Visual RAG over a Qdrant collection.

    Build it from the environment with :meth:`from_settings`, or pass the parts explicitly::

        with RAGPipeline.from_settings() as rag:
            rag.ingest(["docs/"])
            answer = rag.answer("What was the 2023 revenue?")
            answer.text, [(hit.file_name, hit.page_number) for hit in answer.sources]

    ``live_index`` (exact search) follows this pipeline's writes; ``searcher`` defaults to exact MaxSim over it,
    with cited regions on every hit (``Hit.regions``, :mod:`retriever.regions`).
    """

    def __init__(
        self,
        store: VectorStore,
        images: PageImageStore,
        encoder: ColSmolEncoder,
        generator: Generator | None = None,
        *,
        live_index: LiveIndex | None = None,
        searcher: Searcher | None = None,
        renderer: RendererName = "pdfium",
        dpi: int = 150,
        precompute_pages: bool = False,
        converter: OfficeConverter | None = None,
        hybrid: HybridSearcher | None = None,
        ocr: OcrMode = "off",
        text_max_chars: int = DEFAULT_MAX_CHARS,
        answer_page_text: bool = False,
    ) -> None:
        self.store = store
        self.images = images
        self.encoder = encoder
        self.generator = generator
        if searcher is None:
            live_index = live_index or LiveIndex(store, device=str(encoder.device))
            searcher = ExactSearcher(live_index, encoder.embed_queries, regions=cited_regions(store, encoder))
        self.live_index = live_index
        self.searcher = searcher
        #: how searches run (rag.searchers.build_searcher; /readyz shows it)
        self.search_mode = "exact"
        #: Search modes over ``searcher`` (visual) and the store's text index (:mod:`retriever.hybrid`).
        self.hybrid = hybrid or HybridSearcher(searcher, store)
        self.ocr: OcrMode = ocr
        self.text_max_chars = text_max_chars
        #: Give the generator the cited pages' text too (as context after the question).
        self.answer_page_text = answer_page_text
        self.renderer: RendererName = renderer
        self.dpi = dpi
        #: After an ingest, let the generator do its per-page work for the new pages (``PrecomputesPages``).
        self.precompute_pages = precompute_pages
        #: Turns Office, web, Markdown, EPUB and text files into PDFs for ingest (LibreOffice).
        self.converter = converter or OfficeConverter(OfficeConverter.default_cache_dir(images.root))
        #: False where the model is shared with other pipelines (``rag.collections``): close() leaves it loaded.
        self.owns_encoder = True
        self.owns_generator = True
        self._write_lock = threading.Lock()
        self._closed = False
        self._resolution_checked = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        collection: str | None = None,
        encoder: ColSmolEncoder | None = None,
        generator: Generator | None = None,
    ) -> RAGPipeline:
        """The pipeline ``settings`` describe. ``collection`` opens another collection of the same data dir, with
        the settings it was created with (:mod:`rag.collections`). ``encoder`` and ``generator``, when given, are
        shared with other pipelines: this one uses them and leaves closing them to their owner."""
        s = settings or Settings()
        if collection is not None:
            from rag.collections import collection_settings

            s = collection_settings(s, collection)
        store = open_store(s)
        owns = (encoder is None, generator is None)
        try:
            encoder = encoder or ColSmolEncoder.from_settings(s)
            built = build_searcher(s, store, encoder.embed_queries, cited_regions(store, encoder))
            images = PageImageStore(s.images_dir / s.collection)
            hybrid = HybridSearcher(
                built.searcher, store, rrf_k=s.fusion_k, depth=s.fusion_depth, default_mode=s.query_mode
            )
            with_text = s.answer_page_text == "on" or (
                s.answer_page_text == "auto" and s.generator_backend == "openai"
            )
            rag = cls(
                store,
                images,
                encoder,
                generator if generator is not None else make_generator(s),
                live_index=built.live,
                searcher=built.searcher,
                renderer=s.renderer,
                dpi=s.dpi,
                precompute_pages=s.generator_precompute,
                converter=OfficeConverter(
                    OfficeConverter.default_cache_dir(images.root), s.convert_timeout_s, s.convert_workers
                ),
                hybrid=hybrid,
                ocr=s.ocr,
                text_max_chars=s.text_max_chars,
                answer_page_text=with_text,
            )
            rag.search_mode = f"{built.mode} ({built.reason})" if built.reason != "set" else built.mode
            rag.owns_encoder, rag.owns_generator = owns
            return rag
        except BaseException:
            store.close()
            raise

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> RAGPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store (and its Edge lock), the models and the index (saving its cache)."""
        if self._closed:
            return
        self._closed = True
        if self.live_index is not None:
            self.live_index.close()
        if self.owns_encoder:
            self.encoder.close()
        if self.generator is not None and self.owns_generator:
            self.generator.close()
        self.store.close()

    def warm_up(self) -> None:
        """Load the models and the search index now, so the first request pays for none of it."""
        self.encoder.load()
        self.encoder.embed_queries(["warm up"])
        if self.generator is not None:
            self.generator.load()
        if self.live_index is not None:
            self.live_index.load().warm_up()  # on a GPU: compile the MaxSim kernel's common shapes

    # ------------------------------------------------------------------ ingest
    def ingestor(
        self, password: str | None = None, renderer: RendererName | None = None, dpi: int | None = None
    ) -> Ingestor:
        return Ingestor(
            self.store,
            self.encoder,
            self.images,
            renderer=renderer or self.renderer,
            dpi=dpi or self.dpi,
            password=password,
            batch_size=self.encoder.batch_size,
            pool=prefetch_vectors,
            hooks=self.live_index,
            on_encoder_load=lambda: self._check_resolution(record=True),
            converter=self.converter,
            ocr=self.ocr,
            text_max_chars=self.text_max_chars,
        )

    def _check_resolution(self, record: bool = False) -> None:
        """Refuse an encoder set to another page resolution than the collection's (:mod:`indexer.resolution`)."""
        if self._resolution_checked and not record:
            return
        edge, default = self.encoder.page_longest_edge, self.encoder.model_longest_edge
        check_longest_edge(self.store, edge, default, record=record)
        # Once the collection has its record, it cannot change under us: later searches skip the store reads.
        self._resolution_checked = recorded_longest_edge(self.store, default) is not None

    def ingest(
        self,
        paths: Sequence[str | Path] | str | Path,
        metadata: dict[str, Any] | None = None,
        prune: bool = False,
        password: str | None = None,
        renderer: RendererName | None = None,
        dpi: int | None = None,
        progress: Progress | None = None,
        source_names: Mapping[Path, str] | None = None,
    ) -> IngestReport:
        """Index files and folders (incremental: unchanged files are skipped without the encoder).

        ``source_names`` stores some files under another name than their path (uploads: ``upload:<name>``).
        """
        if isinstance(paths, str | Path):
            paths = [paths]
        # Text pages are written before the encoder loads: a collection indexed at another resolution is refused
        # before them, so a refused ingest leaves nothing behind.
        self._check_resolution()
        with self._write_lock:
            report = self.ingestor(password, renderer, dpi).ingest(
                paths, metadata, prune=prune, progress=progress, source_names=source_names
            )
        if self.precompute_pages:
            self.precompute_page_features([f.doc_id for f in report.files if f.status == "indexed" and f.doc_id])
        return report

    def precompute_page_features(self, doc_ids: Sequence[str]) -> int:
        """Have the generator do its per-page work for these documents' pages now (SmolVLM's lean path: the
        vision features, kept beside the page images), so questions over them pay for their text only.
        Returns how many pages were computed; 0 for a generator without per-page work."""
        gen = self.generator
        if not isinstance(gen, PrecomputesPages):
            return 0
        done = 0
        for doc_id in doc_ids:
            for pid in self.store.page_ids(doc_id):
                try:
                    image = self.images.load(pid)
                except (FileNotFoundError, OSError):
                    continue
                done += gen.precompute([image], [pid])
        return done

    def delete(self, doc_id: str) -> int:
        """Remove one document (pages, marker and page images); NotFound if it is not indexed."""
        if self.store.get_document(doc_id) is None and not self.store.page_ids(doc_id):
            raise NotFound(
                f"no document with id {doc_id!r}",
                hints={"cli": "`colsmol documents` lists them", "http": "GET /v1/documents lists them"},
            )
        with self._write_lock:
            return self.ingestor().delete(doc_id)

    def documents(self, include_incomplete: bool = False) -> list[DocumentInfo]:
        """Complete documents; with ``include_incomplete``, also those whose ingest is running or was cut short
        (their stored pages are already searchable; ``complete`` is False)."""
        return self.store.list_documents(include_incomplete=include_incomplete)

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int = 10, filter: FilterLike = None, mode: Mode | str | None = None) -> list[Hit]:
        """Top-k pages for ``query``, best first. ``mode``: ``visual`` (MaxSim over page images), ``text`` (BM25 over
        page text), ``hybrid`` (both, RRF-fused) or None (the default, hybrid); ``Hit.found_by`` names the side(s)."""
        return self.search_batch([query], k=k, filter=filter, mode=mode)[0]

    def search_batch(
        self, queries: Sequence[str], k: int = 10, filter: FilterLike = None, mode: Mode | str | None = None
    ) -> list[list[Hit]]:
        """Top-k pages for each query: one encoder pass and one scoring pass for all of them."""
        if isinstance(queries, str):
            raise InvalidRequest("search_batch takes a list of queries; use search() for one")
        flt = Filter.parse(filter)
        _check_k(k, MAX_K)
        for q in queries:
            _check_text(q, "query")
        chosen = self.hybrid.mode(parse_mode(mode))
        if not queries:
            return []
        if chosen != "text":
            self._check_resolution()
        return self.hybrid.search_batch(list(queries), k=k, filter=flt, mode=chosen)

    # ------------------------------------------------------------------ answer
    def _prepare_answer(
        self, question: str, k: int, filter: FilterLike, mode: Mode | str | None = None
    ) -> tuple[list[Hit], list[Image.Image], list[str], dict[str, float]]:
        _check_text(question, "question")
        _check_k(k, MAX_ANSWER_K)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        hits = self.search(question, k=k, filter=filter, mode=mode)
        timings["search"] = time.perf_counter() - t
        sources: list[Hit] = []
        pages: list[Image.Image] = []
        warnings: list[str] = []
        for hit in hits:
            try:
                img = self.images.load(hit.point_id)
            except (FileNotFoundError, OSError):
                if "visual" not in hit.found_by and hit.found_by:
                    warnings.append(f"{hit.file_name} page {hit.page_number} is not embedded yet (text only); skipped")
                else:
                    warnings.append(f"page image missing for {hit.file_name} page {hit.page_number}; skipped")
                continue
            sources.append(hit)
            pages.append(img)
        return sources, pages, warnings, timings

    def _generator(self) -> Generator:
        if self.generator is None:
            raise InvalidRequest("this pipeline was built without a generator")
        return self.generator

    def _empty_index(self, question: str, filter: FilterLike) -> bool:
        # Validate first: an empty index must not hide a bad request.
        _check_text(question, "question")
        Filter.parse(filter)
        return self.store.count_pages() == 0

    def answer(
        self,
        question: str,
        k: int = 3,
        filter: FilterLike = None,
        max_new_tokens: int = 256,
        stop: threading.Event | None = None,
        mode: Mode | str | None = None,
    ) -> Answer:
        """Answer from the top-k pages, citing them. An empty index answers so without loading the generator."""
        if self._empty_index(question, filter):
            return Answer(NO_DOCUMENTS, [], {}, [])
        sources, pages, warnings, timings = self._prepare_answer(question, k, filter, mode)
        if not sources:
            return Answer(NO_MATCH, [], timings, warnings)
        t = time.perf_counter()
        ids = [hit.point_id for hit in sources]
        prompt = self._with_page_text(question, sources)
        text = self._generator().generate(prompt, pages, max_new_tokens=max_new_tokens, stop=stop, page_ids=ids)
        timings["generate"] = time.perf_counter() - t
        return Answer(text, sources, timings, warnings)

    def stream_answer(
        self,
        question: str,
        k: int = 3,
        filter: FilterLike = None,
        max_new_tokens: int = 256,
        stop: threading.Event | None = None,
        mode: Mode | str | None = None,
    ) -> collections.abc.Generator[str | Answer, None, None]:
        """Yield text pieces as they are generated, then one final :class:`Answer` with the sources.

        Closing the iterator early (or setting ``stop``) ends generation within one decode step.
        """
        if self._empty_index(question, filter):
            yield NO_DOCUMENTS
            yield Answer(NO_DOCUMENTS, [], {}, [])
            return
        sources, pages, warnings, timings = self._prepare_answer(question, k, filter, mode)
        if not sources:
            yield NO_MATCH
            yield Answer(NO_MATCH, [], timings, warnings)
            return
        t = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        ids = [hit.point_id for hit in sources]
        prompt = self._with_page_text(question, sources)
        for piece in self._generator().stream(prompt, pages, max_new_tokens=max_new_tokens, stop=stop, page_ids=ids):
            if first is None:
                first = time.perf_counter() - t
            parts.append(piece)
            yield piece
        timings["first_token"] = first or 0.0
        timings["generate"] = time.perf_counter() - t
        yield Answer("".join(parts).strip(), sources, timings, warnings)

    def _with_page_text(self, question: str, sources: Sequence[Hit]) -> str:
        """The question, followed by the cited pages' text when ``answer_page_text`` is on (in the order the page
        images are given; each page's text cut to ``PAGE_TEXT_CONTEXT_CHARS``)."""
        if not self.answer_page_text:
            return question
        payloads = self.store.get_payloads([h.point_id for h in sources])
        parts = []
        for n, hit in enumerate(sources, 1):
            text = str(payloads.get(hit.point_id, {}).get("text") or "").strip()
            if text:
                parts.append(f"[Page {n}: {hit.file_name} p. {hit.page_number}] {text[:PAGE_TEXT_CONTEXT_CHARS]}")
        if not parts:
            return question
        intro = "\n\nText of the pages above (from their text layer; it may miss figures):\n"
        return question + intro + "\n".join(parts)

    # ------------------------------------------------------------------ explain
    def explain(self, query: str, hit: Hit | str, token: int | None = None) -> SimilarityMap:
        """Which regions of a page matched ``query``: a :class:`retriever.explain.SimilarityMap` at the
        page's pixel size (``.heatmap``, ``.overlay()``); ``token`` picks one query token's map."""
        from retriever.explain import similarity_map

        _check_text(query, "query")
        point_id = hit if isinstance(hit, str) else hit.point_id
        try:
            image = self.images.load(point_id)
        except (FileNotFoundError, OSError, ValueError):
            raise NotFound(f"no stored page image for point id {point_id!r}") from None
        return similarity_map(self.encoder, image, query, token=token)


def cited_regions(store: VectorStore, encoder: ColSmolEncoder) -> RegionFinder:
    """Where hits matched, laid out by the encoder's processor (loaded with the encoder, on first use)."""
    return RegionFinder(store, lambda: encoder.processor)


def _check_text(text: Any, what: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"the {what} is empty")
    if len(text) > MAX_QUESTION_CHARS:
        raise InvalidRequest(f"the {what} is {len(text)} characters; the limit is {MAX_QUESTION_CHARS}")


def _check_k(k: Any, limit: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= limit:
        raise InvalidRequest(f"k must be an integer from 1 to {limit}, got {k!r}")
