"""Folder ingest: files in, pages embedded and stored, incremental and crash-safe.

One page's path: ``walk_inputs`` finds the file -> its content hash gives the document id ->
``iter_file_pages`` renders it page by page -> ``ColSmolEncoder`` embeds a batch of pages ->
``VectorStore.upsert_pages`` writes each page as a point with id ``uuid5(doc_id, page)`` and
``PageImageStore`` keeps a compressed copy of the image -> when every page of the document is
stored, ``mark_document_complete`` writes its marker. Only then is the document listed, and only then
are the pages of an older version of the same file removed.

The stages overlap: a render thread, a pool of preprocessing threads (Idefics3 tiling is the CPU hot
spot), the encoder on the calling thread and a writer thread. Queues are bounded, so memory stays
flat however long a PDF is. A ``kill -9`` at any point leaves at worst an incomplete document, which
the next run finishes (pages already stored are not embedded again).

Text first: before any page is rendered for the encoder, every file of the batch has its pages' text
(:mod:`indexer.text`: the PDF text layer, or OCR) stored as text-only points, so the whole batch is
searchable by text within seconds; the embedding then replaces each point with its visual one, text kept.
A run that dies between the two stages leaves text-only pages, which the next run embeds (their text is
read back, never extracted twice).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np

from indexer.disk import full_disk, is_disk_full, require_free
from indexer.errors import (
    ColsmolError,
    DeviceOutOfMemory,
    DiskFull,
    DocumentError,
    HintedText,
    IndexBudgetExceeded,
    InvalidRequest,
    for_interface,
)
from indexer.hashing import sha256_file
from indexer.images import PageImageStore
from indexer.render import (
    SUPPORTED_SUFFIXES,
    display_path,
    file_page_count,
    iter_file_pages,
    make_renderer,
    walk_inputs,
)
from indexer.render.containers import CONVERTIBLE_SUFFIXES
from indexer.render.office import OfficeConverter, needs_conversion
from indexer.stages import StageClock
from indexer.store.base import STAGE_TEXT, UPLOAD_PREFIX, VectorStore, page_point_id, source_file_name
from indexer.store.sparse import language_of
from indexer.text import DEFAULT_MAX_CHARS, OcrMode, check_ocr, iter_page_texts
from indexer.types import DocumentInfo, PageRecord, RenderedPage

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)
T = TypeVar("T")

Status = Literal["indexed", "unchanged", "failed", "skipped"]
EventKind = Literal["file", "text", "pages", "done", "stages"]


class PageEncoder(Protocol):
    """What ingest needs from the page encoder (:class:`~indexer.models.encoder.ColSmolEncoder`).

    Preprocessing (CPU work, run on a thread pool) is separate from the forward pass (run in order on
    the ingest thread), so the two overlap. ``load`` is called before the first page (and timed apart).
    """

    batch_size: int

    def load(self) -> object:
        """Load the weights now (a no-op once loaded)."""
        ...

    def preprocess_pages(self, images: Sequence[Image.Image]) -> Any:
        """A batch ready for :meth:`embed_preprocessed`."""
        ...

    def embed_preprocessed(self, batch: Any) -> list[np.ndarray]:
        """One ``(n_tokens, 128)`` float32 array per page, padding removed."""
        ...


class WriteHooks(Protocol):
    """Lets a search index in the same process follow ingest's writes (:class:`retriever.live_index.LiveIndex`).

    ``apply`` runs ``write`` (a store write) and mirrors it: ``upserted`` pages added, ``deleted`` point ids
    removed, ``updated`` payload fields set on every page of a document (``{doc_id: {field: value}}``).
    """

    def apply(
        self,
        write: Callable[[], T],
        upserted: Sequence[PageRecord] = (),
        deleted: Sequence[str] = (),
        updated: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> T: ...


class _NoHooks:
    def apply(
        self,
        write: Callable[[], T],
        upserted: Sequence[PageRecord] = (),
        deleted: Sequence[str] = (),
        updated: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> T:
        return write()


@dataclass
class FileResult:
    path: str
    status: Status
    doc_id: str | None = None
    pages: int = 0
    error: str | None = None


@dataclass
class IngestReport:
    """What one ingest run did, file by file. ``exit_code`` is 0 unless a file failed."""

    files: list[FileResult] = field(default_factory=list)
    pages_embedded: int = 0
    pruned: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Seconds spent loading the encoder (not part of pages/s).
    load_seconds: float = 0.0
    #: Seconds per stage, ``{"wall": ..., "busy": ...}`` (:mod:`indexer.stages`).
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    def count(self, status: Status) -> int:
        return sum(f.status == status for f in self.files)

    @property
    def pages_per_second(self) -> float:
        """Pages embedded per second of work, model loading excluded (what the progress bar shows)."""
        work = self.seconds - self.load_seconds
        return self.pages_embedded / work if work > 0 and self.pages_embedded else 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "indexed": self.count("indexed"),
            "unchanged": self.count("unchanged"),
            "failed": self.count("failed"),
            "skipped": self.count("skipped"),
            "pages_embedded": self.pages_embedded,
            "seconds": round(self.seconds, 3),
            "load_seconds": round(self.load_seconds, 3),
            "pages_per_second": round(self.pages_per_second, 2),
            "stages": {view: {k: round(v, 3) for k, v in times.items()} for view, times in self.stages.items()},
            "pruned": self.pruned,
            "files": [asdict(f) for f in self.files],
        }


@dataclass(frozen=True)
class ProgressEvent:
    """Fed to the ``progress`` callback: ``kind`` is "file" (a file opened, ``total`` = its pages), "text" (the
    text of ``n`` of its pages stored: searchable by text), "pages" (``n`` pages embedded and stored), "done"
    (a file finished, ``result`` set) or "stages" (the run ended, ``stages`` holds its seconds per stage,
    :mod:`indexer.stages`). Every "file" and "text" event of a batch comes before its first "pages"."""

    kind: EventKind
    path: str = ""
    n: int = 0
    total: int = 0
    result: FileResult | None = None
    stages: Mapping[str, Mapping[str, float]] | None = None


def doc_id_for(content_hash: str) -> str:
    """The document id: the first 24 hex digits (96 bits) of the file's SHA-256.

    Not 32: a 32-hex-digit string parses as a UUID, and Qdrant's local mode then reports it back in
    UUID form from facet counts, which would no longer match the stored id.

    >>> doc_id_for("ab" * 32)
    'abababababababababababab'
    """
    return content_hash[:24]


@dataclass
class _Doc:
    """Book-keeping of one document in flight."""

    path: Path  # the file to render (resolved): the original, or its converted PDF
    source: str  # how it is stored and shown: display_path(path), or upload:<name>
    sources: list[str]  # every known path of this content once it completes, source first
    doc_id: str
    content_hash: str
    page_count: int
    metadata: dict[str, Any]
    ingested_at: str
    others: list[DocumentInfo]  # other documents last seen at this path (older versions of the file)
    result: FileResult
    pending: int = 0  # pages sent to the encoder, not yet stored
    rendered_all: bool = False
    failed: bool = False
    #: Page number -> the text payload fields (``text``, ``word_boxes``, ``text_source``), kept for the visual write.
    texts: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Pages whose visual embedding is already stored (a resumed run skips them).
    visual_done: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class _Page:
    """Render -> encode queue: one page to embed."""

    doc: _Doc
    page: RenderedPage


@dataclass(frozen=True)
class _DocEnd:
    """Render -> encode -> write queues: every page of ``doc`` was sent before this (in order)."""

    doc: _Doc


@dataclass(frozen=True)
class _Batch:
    """Encode -> write queue: embedded pages and their pooled prefetch vectors (``None`` without a pool)."""

    items: list[_Page]
    vectors: list[np.ndarray]
    pooled: list[np.ndarray | None]


@dataclass(frozen=True)
class _Stop:
    """End of a queue."""


_STOP = _Stop()


#: What a folder walk picks up: files the renderer reads, and files LibreOffice converts to PDF first.
INGEST_SUFFIXES = SUPPORTED_SUFFIXES | CONVERTIBLE_SUFFIXES

Progress = Callable[[ProgressEvent], None]
RendererName = Literal["pdfium", "poppler"]


class Ingestor:
    """Runs ingest against one store with one encoder.

    ``encoder`` is touched only when a page really needs embedding. ``pool`` turns a page multivector
    into the small pooled set stored for prefetch (the retriever's ``prefetch_vectors``), or None.
    ``hooks`` sees every store write (a live search index in the same process follows them).
    ``converter`` turns Office, web, Markdown, EPUB and text files into PDFs (default: LibreOffice, cached under
    ``images.root / ".converted"``).
    """

    def __init__(
        self,
        store: VectorStore,
        encoder: PageEncoder,
        images: PageImageStore,
        renderer: RendererName = "pdfium",
        dpi: int = 150,
        password: str | None = None,
        batch_size: int = 8,
        preprocess_workers: int | None = None,
        pool: Callable[[np.ndarray], np.ndarray] | None = None,
        queue_pages: int | None = None,
        hooks: WriteHooks | None = None,
        on_encoder_load: Callable[[], None] | None = None,
        image_workers: int | None = None,
        converter: OfficeConverter | None = None,
        ocr: OcrMode = "off",
        text_max_chars: int = DEFAULT_MAX_CHARS,
    ) -> None:
        self.store = store
        self.encoder = encoder
        self.images = images
        self.renderer = make_renderer(renderer)
        self.dpi = dpi
        self.password = password
        self.batch_size = batch_size
        # Idefics3 preprocessing is ~0.4 s a Letter page on one core (PIL releases the GIL while
        # resizing), and a GPU encodes ~60 pages/s: use most cores, leave some to render and write.
        self.preprocess_workers = preprocess_workers or max(1, min(12, (os.cpu_count() or 2) - 2))
        # Page images are WebP-encoded on threads too (libwebp releases the GIL): at least two, so that one
        # large page never holds up the rest of its batch.
        self.image_workers = image_workers or max(2, min(8, (os.cpu_count() or 2) // 2))
        self.on_encoder_load = on_encoder_load
        self._image_pool: ThreadPoolExecutor | None = None
        self.pool = pool
        # Bounded: at most this many rendered pages wait for the encoder.
        self.queue_pages = queue_pages or 2 * batch_size
        self._embedded = 0
        self.hooks: WriteHooks = hooks or _NoHooks()
        self._load_seconds = 0.0
        self._encoder_checked = False
        self._clock = StageClock()
        self._source_names: dict[Path, str] = {}
        self._walked: set[str] = set()
        self.converter = converter or OfficeConverter(OfficeConverter.default_cache_dir(images.root))
        self.ocr: OcrMode = ocr
        self.text_max_chars = text_max_chars

    # ------------------------------------------------------------------ public
    def ingest(
        self,
        paths: Iterable[str | Path],
        metadata: dict[str, Any] | None = None,
        prune: bool = False,
        progress: Progress | None = None,
        source_names: Mapping[Path, str] | None = None,
    ) -> IngestReport:
        """Index the files under ``paths``; see the module docstring.

        ``source_names`` maps a file to the source stored for it instead of its path (an upload is stored as
        ``upload:<the client's name>``, its temporary file never shown).
        """
        started = time.perf_counter()
        report = IngestReport()
        emit: Progress = progress or (lambda _e: None)
        self._embedded = 0
        self._load_seconds = 0.0
        self._encoder_checked = False
        clock = self._clock = StageClock()
        self._source_names = {Path(k): v for k, v in (source_names or {}).items()}
        paths = [Path(p) for p in paths]
        walk = walk_inputs(paths, INGEST_SUFFIXES, exclude=[self.images.root, self.converter.cache_dir])
        self._walked = {display_path(f.resolve()) for f in walk.files}
        for p, reason in walk.failed:
            report.files.append(FileResult(display_path(p), "failed", error=reason))
        for p, reason in walk.skipped:
            report.files.append(FileResult(display_path(p), "skipped", error=reason))
        self.images.remove_stale_temporaries()
        if walk.files:
            check_ocr(self.ocr)  # COLSMOL_OCR=on without Tesseract: one clear error before any work
        clock.add_wall("setup", time.perf_counter() - started)
        try:
            self._run(walk.files, dict(metadata or {}), report, emit)
        except DiskFull:
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise full_disk(self.images.root) from exc
            raise
        finally:
            report.pages_embedded = self._embedded
            report.load_seconds = self._load_seconds
        if prune:
            with clock.wall("prune"):
                report.pruned = self.prune(paths)
        report.seconds = time.perf_counter() - started
        report.stages = clock.snapshot()
        emit(ProgressEvent("stages", stages=report.stages))
        return report

    def prune(self, paths: Iterable[str | Path]) -> list[str]:
        """Forget the paths under ``paths`` (files or folders) whose files are gone; remove a document only when
        none of its paths is left. Returns the ids of removed documents. Paths elsewhere (another folder, an
        upload) are never touched by pruning this folder."""
        given = [Path(p) for p in paths]
        roots = [display_path(p.expanduser().resolve()) for p in given]
        walked = {display_path(f.resolve()) for f in walk_inputs(given, INGEST_SUFFIXES).files}

        def under_roots(source: str) -> bool:
            return any(source == r or source.startswith(r.rstrip("/") + "/") for r in roots)

        removed = []
        for doc in self.store.list_documents(include_incomplete=True):
            mine = [s for s in doc.paths if under_roots(s)]
            if not mine:
                continue
            keep = [s for s in doc.paths if not under_roots(s) or s in walked or os.path.exists(s)]
            if not keep:
                self._delete(doc.doc_id)
                removed.append(doc.doc_id)
                log.info("pruned %s (%s no longer exists)", doc.doc_id, ", ".join(doc.paths))
            elif keep != list(doc.paths):
                self._set_sources(doc.doc_id, keep)
                log.info("%s: forgot %s (gone); still at %s", doc.doc_id, set(doc.paths) - set(keep), keep)
        return removed

    def delete(self, doc_id: str) -> int:
        return self._delete(doc_id)

    # ------------------------------------------------------------------ stages
    def _run(self, files: Sequence[Path], metadata: dict[str, Any], report: IngestReport, emit: Progress) -> None:
        pages_q: queue.Queue[_Page | _DocEnd | _Stop] = queue.Queue(maxsize=self.queue_pages)
        write_q: queue.Queue[_Batch | _DocEnd | _Stop] = queue.Queue(maxsize=4)
        errors: list[BaseException] = []
        stop = threading.Event()
        # Office files convert in the background meanwhile (several at a time), so opening them mostly waits less.
        ahead: list[threading.Thread] = self._convert_ahead(files, stop)
        # Text first, for the whole batch: every page is searchable by text before the first is embedded.
        docs = []
        with self._clock.wall("text"):
            for path in files:
                with self._clock.busy("render"):  # hashing, page counting and conversion included
                    doc = self._open_doc(path, metadata, report, emit)
                if doc is not None:
                    with self._clock.busy("text"):
                        self._store_text(doc, emit)
                    docs.append(doc)

        def render_stage() -> None:
            try:
                for doc in docs:
                    if stop.is_set():
                        break
                    try:
                        for page in self._clock.timed_iter(self._pages_to_embed(doc), "render"):
                            if stop.is_set():
                                break
                            doc.pending += 1
                            pages_q.put(_Page(doc, page))
                    except DocumentError as exc:
                        self._fail(doc, exc.reason)
                    except Exception as exc:  # noqa: BLE001 - one file must not stop the batch
                        log.exception("rendering %s failed", doc.path)
                        self._fail(doc, f"rendering failed: {exc}")
                    # An end marker per document travels in order with its pages.
                    pages_q.put(_DocEnd(doc))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                pages_q.put(_STOP)

        def write_stage() -> None:
            try:
                while not isinstance(job := write_q.get(), _Stop):
                    if isinstance(job, _DocEnd):
                        with self._clock.busy("store"):
                            self._finish_doc(job.doc, emit)
                    else:
                        self._write(job.items, job.vectors, job.pooled, emit)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                stop.set()
                # Keep draining so the encoder thread never blocks on a full queue.
                while not isinstance(write_q.get(), _Stop):
                    pass

        self._image_pool = ThreadPoolExecutor(self.image_workers, thread_name_prefix="colsmol-image")
        renderer_t = threading.Thread(target=render_stage, name="colsmol-render", daemon=True)
        writer_t = threading.Thread(target=write_stage, name="colsmol-write", daemon=True)
        renderer_t.start()
        writer_t.start()
        try:
            self._encode_stage(pages_q, write_q, stop)
        except BaseException:
            stop.set()
            self.converter.close(cancel=True)  # Ctrl-C or a fault: no LibreOffice keeps running
            raise
        finally:
            waited = time.perf_counter()  # the writer's last batches, then its threads
            cancelled = stop.is_set()
            write_q.put(_STOP)
            # Unblock the renderer if it is waiting on a full queue.
            while renderer_t.is_alive():
                try:
                    pages_q.get(timeout=0.1)
                except queue.Empty:
                    pass
            writer_t.join()
            stop.set()  # the renderer is done: nothing more to convert ahead
            for t in ahead:
                t.join()
            self.converter.close(cancel=cancelled or bool(errors))
            self._image_pool.shutdown(wait=True)
            self._image_pool = None
            self._clock.add_wall("write", time.perf_counter() - waited)
        if errors:
            raise errors[0]

    def _encode_stage(
        self,
        pages_q: queue.Queue[_Page | _DocEnd | _Stop],
        write_q: queue.Queue[_Batch | _DocEnd | _Stop],
        stop: threading.Event,
    ) -> None:
        """Batch pages, preprocess batches on a thread pool, embed in order on this thread."""
        in_flight: list[tuple[list[_Page], Future[Any]]] = []
        batch: list[_Page] = []
        clock = self._clock

        def preprocess(images: list[Image.Image]) -> Any:
            with clock.busy("preprocess"):
                return self.encoder.preprocess_pages(images)

        with ThreadPoolExecutor(self.preprocess_workers, thread_name_prefix="colsmol-preprocess") as pool:

            def submit() -> None:
                nonlocal batch
                if batch:
                    images = [it.page.image for it in batch]
                    in_flight.append((batch, pool.submit(preprocess, images)))
                    batch = []

            def drain(keep: int) -> None:
                while len(in_flight) > keep:
                    items, fut = in_flight.pop(0)
                    if all(it.doc.result.status == "failed" for it in items):
                        continue  # its file already failed on the device: the rest of it is not embedded
                    try:
                        with clock.wall("preprocess"):
                            inputs = fut.result()
                        with clock.both("encode"):
                            vectors = self.encoder.embed_preprocessed(inputs)
                    except DeviceOutOfMemory as exc:  # a page that does not fit alone fails its file, not the run
                        log.warning("%s", for_interface(exc, "cli"))
                        for it in items:
                            it.doc.result.status, it.doc.result.error = "failed", HintedText(str(exc), exc.hints)
                        continue
                    # pooled here, not on the writer thread: the one thread every store write waits on
                    pooled = [self.pool(v) if self.pool is not None else None for v in vectors]
                    with clock.wall("write"):  # blocks while the writer is behind
                        write_q.put(_Batch(items, vectors, pooled))

            # On an accelerator each preprocessed batch sits in its memory: one waits while one runs, no more.
            ahead = min(self.preprocess_workers, getattr(self.encoder, "batches_ahead", None) or 1 << 30)

            while True:
                with clock.wall("render"):
                    item = pages_q.get()
                if isinstance(item, _Stop) or stop.is_set():
                    break
                if isinstance(item, _DocEnd):  # a document ended: flush its pages first, in order
                    submit()
                    drain(0)
                    with clock.wall("write"):
                        write_q.put(item)
                    continue
                if not in_flight and not batch:
                    self._load_encoder()  # before the first page: its time is not embedding time
                batch.append(item)
                if len(batch) >= self.batch_size:
                    submit()
                    drain(ahead)
            if not stop.is_set():
                submit()
                drain(0)

    def _load_encoder(self) -> None:
        t = time.perf_counter()
        calibrated = float(getattr(self.encoder, "calibration_seconds", 0.0))
        self.encoder.load()
        spent = time.perf_counter() - t
        self._load_seconds += spent
        # The runtime measurement (``ColSmolEncoder.calibration_seconds``) is reported apart from the loading.
        calibrate = min(spent, max(0.0, float(getattr(self.encoder, "calibration_seconds", 0.0)) - calibrated))
        for stage, seconds in (("load", spent - calibrate), ("calibrate", calibrate)):
            if seconds > 0:
                self._clock.add_wall(stage, seconds)
                self._clock.add_busy(stage, seconds)
        if self.on_encoder_load is not None and not self._encoder_checked:
            self.on_encoder_load()  # e.g. refuse a page resolution the collection was not indexed at
            self._encoder_checked = True

    def _write(
        self, items: list[_Page], vectors: list[np.ndarray], pooled: list[np.ndarray | None], emit: Progress
    ) -> None:
        require_free(self.images.root)  # a full disk stops the run here, with every earlier page stored
        if all(it.doc.result.status == "failed" for it in items):  # its file failed meanwhile: store no more of it
            for it in items:
                it.doc.pending -= 1
            return
        pids = [page_point_id(it.doc.doc_id, it.page.page_number) for it in items]
        clock = self._clock

        def save(pid: str, image: Image.Image) -> None:
            with clock.busy("images"):
                self.images.save(pid, image)

        saves = (
            [self._image_pool.submit(save, pid, it.page.image) for pid, it in zip(pids, items, strict=True)]
            if self._image_pool is not None
            else None
        )
        if saves is None:
            for pid, it in zip(pids, items, strict=True):
                save(pid, it.page.image)
        records = []
        started = time.perf_counter()  # payloads: part of the store stage
        for pid, it, vec, pool in zip(pids, items, vectors, pooled, strict=True):
            d, page = it.doc, it.page
            payload = {
                "kind": "page",
                "doc_id": d.doc_id,
                "source": d.sources[0],
                "file_name": source_file_name(d.sources[0]),
                "page_number": page.page_number,
                "page_count": d.page_count,
                "width": page.width,
                "height": page.height,
                "content_hash": d.content_hash,
                "ingested_at": d.ingested_at,
                "metadata": d.metadata,
                **d.texts.get(page.page_number, {}),
            }
            records.append(PageRecord(pid, vec, payload, pool))
        clock.add_busy("store", time.perf_counter() - started)
        for fut in saves or []:
            fut.result()  # every image is on disk before its point exists: answers never miss one
        with clock.busy("store"):
            try:
                self.hooks.apply(lambda: self.store.upsert_pages(records), upserted=records)
            except IndexBudgetExceeded as exc:  # refused before the store write: this file fails, the others go on
                log.warning("%s", for_interface(exc, "cli"))
                self.images.delete(pids)
                for it in items:
                    it.doc.pending -= 1
                    it.doc.result.status, it.doc.result.error = "failed", HintedText(str(exc), exc.hints)
                return
        self._embedded += len(items)
        for it in items:
            it.doc.pending -= 1
            it.doc.result.pages += 1
        emit(ProgressEvent("pages", n=len(items)))

    # ------------------------------------------------------------------ documents
    def _source_of(self, path: Path) -> str:
        named = self._source_names.get(path)
        return named if named is not None else display_path(path.resolve())

    def _still_there(self, source: str) -> bool:
        """Whether a stored source still exists: an upload always does; a path if this run found it or it exists."""
        return source.startswith(UPLOAD_PREFIX) or source in self._walked or os.path.exists(source)

    def _open_doc(self, path: Path, metadata: dict[str, Any], report: IngestReport, emit: Progress) -> _Doc | None:
        source = self._source_of(path)
        result = FileResult(source if source.startswith(UPLOAD_PREFIX) else display_path(path), "indexed")
        report.files.append(result)

        def fail(reason: str) -> None:
            result.status, result.error = "failed", reason
            emit(ProgressEvent("done", result.path, result=result))

        try:
            if path.stat().st_size == 0:
                raise DocumentError(str(path), "empty file")
            content_hash = sha256_file(path)
            doc_id = doc_id_for(content_hash)
            result.doc_id = doc_id
            existing = self.store.get_document(doc_id)
            # Other documents last seen at this path: older versions of this file (never for uploads, whose
            # names are only names).
            others = (
                []
                if source.startswith(UPLOAD_PREFIX)
                else [d for d in self.store.find_by_source(source) if d.doc_id != doc_id]
            )
            known = [s for s in (existing.paths if existing is not None else ()) if s != source]
            sources = [s for s in known if self._still_there(s)] + [source]
            if existing is not None and existing.complete:
                result.status = "unchanged"
                result.pages = existing.page_count
                if sources != list(existing.paths):  # renamed, copied, or a copy is gone
                    self._set_sources(doc_id, sources)
                # An older version at this path can still be here if the last run died before cleanup.
                self._forget_path(others, source)
                emit(ProgressEvent("done", result.path, result=result))
                return None
            render_path = path.resolve()
            if needs_conversion(path):
                render_path = self.converter.result(path, content_hash)
            page_count = file_page_count(render_path, self.renderer, self.password)
        except DocumentError as exc:
            fail(exc.reason)
            return None
        except OSError as exc:
            if is_disk_full(exc):
                raise
            fail(f"unreadable: {exc.strerror or exc}")
            return None
        except ColsmolError:
            raise  # the store or the encoder, not this file
        except Exception as exc:  # noqa: BLE001 - any decoder error is this file's failure, never the batch's
            log.warning("%s: %s: %s", result.path, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            fail(f"cannot be read ({type(exc).__name__}: {exc})")
            return None
        emit(ProgressEvent("file", result.path, total=page_count))
        return _Doc(
            path=render_path,
            source=source,
            sources=sources,
            doc_id=doc_id,
            content_hash=content_hash,
            page_count=page_count,
            metadata=metadata,
            ingested_at=datetime.now(UTC).isoformat(timespec="seconds"),
            others=others,
            result=result,
        )

    def _convert_ahead(self, files: Sequence[Path], stop: threading.Event) -> list[threading.Thread]:
        """Start converting the files that need LibreOffice in the background (``converter.workers`` at a time),
        in order, so conversions overlap each other and the embedding of earlier files. Unchanged files are left."""
        todo = [p for p in files if p.suffix.lower() in CONVERTIBLE_SUFFIXES]
        if not todo:
            return []

        def submit_all() -> None:
            for path in todo:
                if stop.is_set():
                    return
                try:
                    if not needs_conversion(path):
                        continue
                    content_hash = sha256_file(path)
                    existing = self.store.get_document(doc_id_for(content_hash))
                    if existing is None or not existing.complete:
                        self.converter.submit(path, content_hash)
                except Exception as exc:  # noqa: BLE001 - _open_doc reports this file's problem in order
                    log.debug("not converting %s ahead: %s", path, exc)

        thread = threading.Thread(target=submit_all, name="colsmol-convert-ahead", daemon=True)
        thread.start()
        return [thread]

    def _set_sources(self, doc_id: str, sources: list[str]) -> None:
        shown = {"source": sources[0], "file_name": source_file_name(sources[0])}
        self.hooks.apply(lambda: self.store.set_document_sources(doc_id, sources), updated={doc_id: shown})

    def _forget_path(self, others: list[DocumentInfo], source: str) -> None:
        """``source`` now holds other content: drop it from the documents last seen there; remove a document
        that has no other path left (the file was edited in place)."""
        for doc in others:
            rest = [s for s in doc.paths if s != source and self._still_there(s)]
            if rest:
                self._set_sources(doc.doc_id, rest)
            else:
                self._delete(doc.doc_id)

    def _pages_to_embed(self, doc: _Doc) -> Iterable[RenderedPage]:
        """The document's pages, minus those whose embedding an earlier (crashed) run already stored."""
        done = doc.visual_done
        if done:
            doc.result.pages += len(done)
            log.info("%s: resuming, %d of %d pages already embedded", doc.source, len(done), doc.page_count)
        for page in iter_file_pages(doc.path, self.renderer, self.dpi, self.password):
            if page.page_number not in done:
                yield page

    def _store_text(self, doc: _Doc, emit: Progress) -> None:
        """Store the text of the document's pages not stored yet (text-only points); keep every page's text for
        the visual write. Pages an earlier run stored keep their text (read back, never extracted again)."""
        stored = self.store.page_ids(doc.doc_id)
        have: set[int] = set()
        if stored:
            for pid, pl in self.store.get_payloads(stored).items():
                n = int(pl["page_number"])
                have.add(n)
                if "text" in pl:
                    doc.texts[n] = {k: pl[k] for k in ("text", "word_boxes", "text_source") if k in pl}
                if pl.get("stage") != STAGE_TEXT and self.images.exists(pid):
                    doc.visual_done.add(n)
        if have:
            emit(ProgressEvent("text", doc.result.path, n=len(have)))
        if len(have) >= doc.page_count:
            return
        common = {
            "kind": "page",
            "doc_id": doc.doc_id,
            "source": doc.sources[0],
            "file_name": source_file_name(doc.sources[0]),
            "page_count": doc.page_count,
            "content_hash": doc.content_hash,
            "ingested_at": doc.ingested_at,
            "metadata": doc.metadata,
        }
        batch: list[tuple[str, dict[str, Any]]] = []
        read = 0  # pages read since the last event

        def flush() -> None:
            nonlocal read
            if batch:
                pages = list(batch)
                self.hooks.apply(lambda: self.store.upsert_text_pages(pages))
                batch.clear()
            if read:
                emit(ProgressEvent("text", doc.result.path, n=read))
                read = 0

        try:
            texts = iter_page_texts(
                doc.path,
                doc.page_count,
                password=self.password,
                ocr=self.ocr,
                language=language_of(doc.metadata),
                max_chars=self.text_max_chars,
                skip=have,
            )
            for text in texts:
                fields = text.payload()
                doc.texts[text.page_number] = fields
                read += 1
                if self.store.text_enabled:
                    pid = page_point_id(doc.doc_id, text.page_number)
                    batch.append((pid, {**common, "page_number": text.page_number, **fields}))
                if read >= 64:
                    flush()
            flush()
        except DocumentError as exc:
            log.warning("%s: no page text (%s); searched by images only", doc.source, exc.reason)
        except ColsmolError:
            raise
        except Exception as exc:  # noqa: BLE001 - no text is no reason to fail a file: its pictures still count
            log.warning("%s: no page text (%s: %s); searched by images only", doc.source, type(exc).__name__, exc)

    def _finish_doc(self, doc: _Doc, emit: Progress) -> None:
        if doc.failed:
            # Rendering failures are deterministic (a corrupt page stays corrupt): drop the partial pages.
            self._delete(doc.doc_id)
        else:
            stored = self.store.visual_page_count(doc.doc_id)
            if stored != doc.page_count:
                doc.failed = True
                doc.result.status = "failed"
                doc.result.error = doc.result.error or f"only {stored} of {doc.page_count} pages could be stored"
            else:
                primary = doc.sources[0]
                info = DocumentInfo(
                    doc_id=doc.doc_id,
                    source=primary,
                    file_name=source_file_name(primary),
                    page_count=doc.page_count,
                    pages_stored=stored,
                    content_hash=doc.content_hash,
                    ingested_at=doc.ingested_at,
                    complete=True,
                    metadata=doc.metadata,
                    sources=tuple(doc.sources),
                )
                self.hooks.apply(lambda: self.store.mark_document_complete(info))
                if primary != doc.source:  # resumed: pages written by an earlier run may name another path
                    self._set_sources(doc.doc_id, doc.sources)
                self._forget_path(doc.others, doc.source)
        emit(ProgressEvent("done", doc.result.path, result=doc.result))

    def _fail(self, doc: _Doc, reason: str) -> None:
        doc.failed = True
        doc.result.status = "failed"
        doc.result.error = reason

    def _delete(self, doc_id: str) -> int:
        pids = self.store.page_ids(doc_id)
        n = self.hooks.apply(lambda: self.store.delete_document(doc_id), deleted=pids)
        self.images.delete(pids)
        self.converter.forget(doc_id)
        return n


def parse_metadata(pairs: Sequence[str]) -> dict[str, Any]:
    """``["lang=en", "year=2024"]`` -> ``{"lang": "en", "year": "2024"}``.

    >>> parse_metadata(["lang=en", "team=a=b"])
    {'lang': 'en', 'team': 'a=b'}
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"metadata {pair!r} is not key=value (e.g. -m lang=en)")
        out[key.strip()] = value
    return out
