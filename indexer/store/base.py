"""The store interface shared by the embedded Qdrant Edge backend and the Qdrant server backend.

Both backends hold the same collection schema:

- named multivector ``tokens``: 128-d, dot product, MaxSim comparator, fp16, HNSW off (``m=0``);
- named multivector ``pooled``: a few vectors per page, HNSW on, for candidate prefetch at scale;
- payload indexes on the filter fields;
- sparse vector ``text``: the page text's BM25 term weights (:mod:`indexer.store.sparse`), IDF modifier;
- deterministic point ids: ``uuid5(doc_id, page_number)``, so re-ingesting is idempotent;
- one marker point per document (``kind == "document"``, no vectors) written *after* all its pages,
  so a document counts as complete only when every page is stored.

Pages are stored in two stages. A page's text comes first (``stage == "text"``: payload and the sparse
``text`` vector, no multivector), seconds after ingest starts; its visual embedding replaces the point
later (``stage == "visual"``: both multivectors, the text kept). A page written before stages existed
has no ``stage`` and is visual. A collection created before the text index existed has no ``text``
vector: it is searched by pictures only (``text_enabled`` is False).
"""

from __future__ import annotations

import itertools
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import numpy as np

from indexer.filters import Filter, FilterAPI
from indexer.store.sparse import ENCODER, TEXT_VECTOR, language_of
from indexer.types import DocumentInfo, PageRecord

DIM = 128
TOKENS_VECTOR: Final = "tokens"
POOLED_VECTOR: Final = "pooled"
VectorName = Literal["tokens", "pooled"]
TOKENS_ONLY: tuple[VectorName, ...] = ("tokens",)
# Qdrant rejects a point whose multivector has more than 1,048,576 floats.
MAX_FLOATS_PER_POINT = 1_048_576
MAX_TOKENS_PER_PAGE = MAX_FLOATS_PER_POINT // DIM

PAYLOAD_FIELDS = (
    "kind",  # "page", "document", or "meta" (one point of collection metadata)
    "doc_id",
    "source",  # the path shown (documents also keep "sources": every known path)
    "file_name",
    "page_number",
    "page_count",
    "width",
    "height",
    "content_hash",
    "ingested_at",
    "metadata",  # user metadata, a flat dict of str -> str|int|float|bool
    "stage",  # "text" (text only so far) or "visual" (embedded); absent on pages stored before stages
    "text",  # the page text (indexer.text.PageText: words joined by spaces, bounded length)
    "word_boxes",  # four integers per word of "text": x0, y0, x1, y1 in thousandths of the page
    "text_source",  # "pdf" (text layer), "ocr" or "none"
)
#: The payload fields a page scan returns by default: everything but the page text and its word boxes.
LIGHT_FIELDS = [f for f in PAYLOAD_FIELDS if f not in ("text", "word_boxes")] + ["sources"]
STAGE_TEXT: Final = "text"
STAGE_VISUAL: Final = "visual"
#: Collection metadata key: the BM25 languages of the pages stored (queries are embedded in each).
TEXT_LANGUAGES_META = "text_languages"
INDEXED_FIELDS = ("kind", "doc_id", "source", "content_hash", "page_number")

_NAMESPACE = uuid.UUID("6f1c3c1e-9a57-4c1b-8d0a-36c0c5a1d6e1")


def page_point_id(doc_id: str, page_number: int) -> str:
    """Deterministic point id of one page.

    >>> page_point_id("abc", 1) == page_point_id("abc", 1) != page_point_id("abc", 2)
    True
    """
    return str(uuid.uuid5(_NAMESPACE, f"{doc_id}:{page_number}"))


def document_point_id(doc_id: str) -> str:
    """Deterministic point id of a document's completion marker."""
    return str(uuid.uuid5(_NAMESPACE, f"{doc_id}:document"))


#: The one point that holds collection metadata (``kind == "meta"``, no vectors).
META_POINT_ID = str(uuid.uuid5(_NAMESPACE, "colsmol:meta"))
#: The point whose random token every write replaces (``kind == "state"``): ``version()`` reads it.
STATE_POINT_ID = str(uuid.uuid5(_NAMESPACE, "colsmol:state"))


def source_file_name(source: str) -> str:
    """The file name shown for a source: the last path part, or an upload's own name.

    >>> source_file_name("/docs/q3/report.pdf"), source_file_name("upload:scan 2.pdf")
    ('report.pdf', 'scan 2.pdf')
    """
    if source.startswith(UPLOAD_PREFIX):
        return source[len(UPLOAD_PREFIX) :]
    return source.rsplit("/", 1)[-1]


#: Sources of uploaded files are not paths: ``upload:<the name the client sent>``.
UPLOAD_PREFIX = "upload:"


@dataclass(frozen=True)
class StoredPage:
    """One page point as read back: its payload and the named vectors asked for (float32 ``(n, 128)``)."""

    point_id: str
    payload: dict[str, Any]
    tokens: np.ndarray | None = None
    pooled: np.ndarray | None = None


@dataclass(frozen=True)
class SparseVector:
    """A sparse vector as stored: term ids and their weights (the same length)."""

    indices: list[int]
    values: list[float]

    @property
    def size(self) -> int:
        return len(self.indices)


class VectorStore(Protocol):
    """What the indexer, retriever and API need from Qdrant. Two implementations: Edge and server."""

    collection: str

    def upsert_pages(self, records: Sequence[PageRecord]) -> None:
        """Write pages (idempotent: same point id overwrites). Vectors must be finite."""

    def mark_document_complete(self, info: DocumentInfo) -> None:
        """Write the document's marker point once all its pages are stored."""

    def delete_document(self, doc_id: str) -> int:
        """Remove every page and the marker of ``doc_id``; return the number of pages removed."""

    def delete_pages(self, point_ids: Sequence[str]) -> None:
        """Remove single pages by point id."""

    def set_document_sources(self, doc_id: str, sources: Sequence[str]) -> None:
        """Record where a document is now (renamed, copied, a copy removed): ``sources[0]`` becomes the shown
        ``source`` and ``file_name`` of the document and its pages; the marker keeps them all."""

    def get_meta(self) -> dict[str, Any]:
        """Collection metadata (what colsmol records about the collection itself), ``{}`` when none."""

    def update_meta(self, values: dict[str, Any]) -> None:
        """Merge ``values`` into the collection metadata."""

    def list_documents(self, include_incomplete: bool = False) -> list[DocumentInfo]:
        """Documents with page counts, sorted by source path."""

    def get_document(self, doc_id: str) -> DocumentInfo | None: ...

    def find_by_source(self, source: str) -> list[DocumentInfo]:
        """Documents (complete or not) that were ingested from this path."""

    def page_ids(self, doc_id: str) -> list[str]:
        """Point ids of the pages stored for ``doc_id``."""

    def get_payloads(self, point_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Payloads of pages by point id (missing ids are absent from the result)."""

    def get_vectors(self, point_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Token vectors ``(n, 128)`` float32 of pages by point id (for a two-stage rerank)."""

    def iter_pages(
        self, batch_size: int = 256, vectors: Collection[VectorName] = TOKENS_ONLY, with_text: bool = False
    ) -> Iterator[StoredPage]:
        """Every page point with the named ``vectors`` (``()``: payloads only), in scroll order. Payloads leave out
        the page text and word boxes unless ``with_text``. Text-only pages come without the named vectors."""

    def prefetch(
        self,
        query: np.ndarray,
        limit: int,
        doc_filter: Filter | None = None,
        *,
        using: VectorName = "pooled",
    ) -> list[tuple[str, float]]:
        """Candidate pages for a query ``(n_q, 128)``: Qdrant MaxSim over the pooled vectors.

        ``using=TOKENS_VECTOR`` scores the full token multivectors instead (exact, slow: tests and
        pages stored without pooled vectors). Pages without the ``using`` vector are never returned.
        """

    def search_two_stage(
        self, query: np.ndarray, limit: int, candidates: int, doc_filter: Filter | None = None
    ) -> list[tuple[str, float]]:
        """Top ``limit`` pages ``[(point_id, score)]`` for a query ``(n_q, 128)`` by exact MaxSim over the token
        vectors of the ``candidates`` best pages by the pooled vectors: one store query (Qdrant's prefetch then
        rescore), so no vector leaves the store."""

    def count_pages(self) -> int: ...

    #: Whether the collection has the sparse ``text`` vector (collections created before it have not).
    text_enabled: bool

    def upsert_text_pages(self, pages: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Write text-only page points ``(point_id, payload)`` (``stage == "text"``, sparse vector from the
        payload's ``text``). Callers write only pages not stored yet: this replaces a stored page's vectors."""

    def text_search(
        self, query: str, limit: int, doc_filter: Filter | None = None
    ) -> list[tuple[str, float]]:
        """Pages by BM25 of the page text (Qdrant sparse search, IDF at query time), best first."""

    def hybrid_search(
        self,
        query: np.ndarray,
        text: str,
        limit: int,
        doc_filter: Filter | None = None,
        *,
        depth: int = 50,
        rrf_k: int = 60,
        candidates: int = 200,
        text_depth: int | None = None,
    ) -> list[tuple[str, float]]:
        """Qdrant-side fusion: RRF of the visual side (pooled prefetch of ``candidates``, rescored by full MaxSim,
        ``depth`` kept) and the BM25 side (``text_depth`` when given, else ``depth``), best first."""

    def visual_page_count(self, doc_id: str | None = None) -> int:
        """Pages of ``doc_id`` (every document's when None) with their visual embedding stored."""

    def version(self) -> str:
        """A cheap token that changes whenever pages are added or removed (by any process)."""

    def close(self) -> None: ...

    def drop(self) -> None:
        """Delete the whole collection (points, vectors, payload indexes); the store is closed afterwards."""

    def __enter__(self) -> VectorStore: ...

    def __exit__(self, *exc: object) -> None: ...


def check_vectors(vectors: np.ndarray, what: str) -> None:
    """Refuse to store NaN/inf or an over-long multivector (Qdrant's per-point float limit)."""
    if vectors.ndim != 2 or vectors.shape[1] != DIM:
        raise ValueError(f"{what}: expected shape (n, {DIM}), got {tuple(vectors.shape)}")
    if vectors.shape[0] == 0:
        raise ValueError(f"{what}: empty multivector")
    if vectors.shape[0] > MAX_TOKENS_PER_PAGE:
        raise ValueError(f"{what}: {vectors.shape[0]} vectors exceed Qdrant's {MAX_TOKENS_PER_PAGE} per point")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{what}: non-finite values in vectors")


def document_record(info: DocumentInfo) -> dict[str, Any]:
    """The stored fields of a document (its marker's payload without ``kind``; an export's line)."""
    return {
        "doc_id": info.doc_id,
        "source": info.source,
        "sources": list(info.paths),
        "file_name": info.file_name,
        "page_count": int(info.page_count),
        "content_hash": info.content_hash,
        "ingested_at": info.ingested_at,
        "metadata": dict(info.metadata),
    }


def iter_batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------
# Shared by both backends: payload-filter translation and the document-level logic.
# ---------------------------------------------------------------------------------------------

KIND_PAGE = "page"
KIND_DOCUMENT = "document"
KIND_META = "meta"
KIND_STATE = "state"  # the server backend's version token point (see ServerStore.version)

# Payload index type per indexed field: everything is a keyword except the page number.
INDEX_TYPES = {name: ("integer" if name == "page_number" else "keyword") for name in INDEXED_FIELDS}


def tokens_array(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """A multivector returned by Qdrant (a list of ``n`` lists of 128 floats) as float32 ``(n, 128)``.

    One ``np.fromiter`` pass over the flattened floats, measurably faster than ``np.asarray`` on
    the nested list (about 5 ms per 1,000-token page).
    """
    n = len(rows)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float32, count=n * DIM)
    return flat.reshape(n, DIM)


class QdrantStoreCore(ABC):
    """Document-level logic shared by ``EdgeStore`` and ``ServerStore``.

    Subclasses supply a handful of primitives over their API (ids are strings, filters come from
    :meth:`_filter`); everything the :class:`VectorStore` protocol promises is built here once, so
    both backends behave alike by construction.
    """

    collection: str
    #: Floats per write request: a 1,100-token page is ~141k floats, so about 7 pages per request.
    max_floats_per_request: int = 1_000_000

    # ---- primitives ------------------------------------------------------------------------
    _api: FilterAPI

    def _filter(self, doc_filter: Filter | None = None, kind: str | None = KIND_PAGE) -> Any:
        """The backend's filter object (callers check ``matches_nothing`` first)."""
        return (doc_filter or Filter()).qdrant(self._api, kind)

    text_enabled: bool = False

    @abstractmethod
    def _upsert(self, points: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        """Write points ``(id, {name: float32 (n, 128) array or SparseVector}, payload)``."""

    @abstractmethod
    def _query_sparse(self, vector: SparseVector, limit: int, flt: Any) -> list[tuple[str, float]]:
        """Pages by a sparse query on the ``text`` vector (IDF applied by Qdrant), best first."""

    @abstractmethod
    def _query_fused(
        self,
        query: np.ndarray,
        sparse: SparseVector,
        limit: int,
        flt: Any,
        depth: int,
        rrf_k: int,
        candidates: int,
        text_depth: int | None = None,
    ) -> list[tuple[str, float]]:
        """One Qdrant query: RRF of the visual side (pooled prefetch, MaxSim rescoring) and the sparse side."""

    @abstractmethod
    def _delete_ids(self, ids: list[str]) -> None:
        ...

    @abstractmethod
    def _delete_where(self, flt: Any) -> None:
        ...

    @abstractmethod
    def _set_payload_where(self, payload: dict[str, Any], flt: Any) -> None:
        """Set (merge) these payload fields on every point matching ``flt``."""
        ...

    @abstractmethod
    def _scroll(
        self, flt: Any, limit: int, offset: Any, payload: bool | list[str], vectors: list[str] | None
    ) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any]]], Any]:
        """One page of ``(id, {name: float32 (n, 128) array}, payload)`` and the next offset (None at end)."""
        ...

    @abstractmethod
    def _count(self, flt: Any) -> int:
        ...

    @abstractmethod
    def _facet(self, key: str, flt: Any) -> dict[Any, int]:
        ...

    @abstractmethod
    def _retrieve(self, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        ...

    @abstractmethod
    def _retrieve_tokens(self, ids: list[str]) -> dict[str, np.ndarray]:
        ...

    @abstractmethod
    def _query(
        self, query: np.ndarray, using: str, limit: int, flt: Any, prefetch: int | None = None
    ) -> list[tuple[str, float]]:
        """Top ``limit`` by MaxSim on ``using``; with ``prefetch``, over only the ``prefetch`` best pages by the
        pooled vectors, in the same store query."""

    def _changed(self) -> None:
        """Called after every write, so that ``version()`` moves: a fresh random token in the state point.

        Stored in the collection, so the version is the same after a restart when nothing was written
        (a search index cached on disk is then current without a scan), and a write by any process moves it.
        """
        payload = {"kind": KIND_STATE, "token": uuid.uuid4().hex, "updated_at": time.time()}
        self._upsert([(STATE_POINT_ID, {}, payload)])

    def version(self) -> str:
        """``"{points}:{token}"``: the point count and the state point's token (see :meth:`_changed`)."""
        state = dict(self._retrieve([STATE_POINT_ID]))
        return f"{self._count(None)}:{state.get(STATE_POINT_ID, {}).get('token', '')}"

    # ---- writes ----------------------------------------------------------------------------
    def upsert_pages(self, records: Sequence[PageRecord]) -> None:
        prepared: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        for rec in records:  # validate everything first: a bad page raises before any write
            what = f"page {rec.point_id}"
            tokens = np.ascontiguousarray(rec.vectors, dtype=np.float32)
            check_vectors(tokens, what)
            vectors = {TOKENS_VECTOR: tokens}
            if rec.pooled is not None:
                pooled = np.ascontiguousarray(rec.pooled, dtype=np.float32)
                check_vectors(pooled, f"{what} (pooled)")
                vectors[POOLED_VECTOR] = pooled
            if not rec.payload.get("doc_id"):
                raise ValueError(f"{what}: payload has no doc_id")
            payload = {**rec.payload, "kind": KIND_PAGE, "stage": STAGE_VISUAL}
            prepared.append((str(rec.point_id), {**vectors, **self._text_vector(payload)}, payload))
        batch: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        floats = 0
        for point in prepared:
            n = sum(v.size for v in point[1].values())
            if batch and floats + n > self.max_floats_per_request:
                self._upsert(batch)
                batch, floats = [], 0
            batch.append(point)
            floats += n
        if batch:
            self._upsert(batch)
        if prepared:
            self._changed()

    # ---- text ------------------------------------------------------------------------------
    def _text_vector(self, payload: dict[str, Any]) -> dict[str, SparseVector]:
        """``{"text": sparse}`` for a page payload with text, when the collection has the text index."""
        text = payload.get("text")
        if not self.text_enabled or not isinstance(text, str) or not text.strip():
            return {}
        indices, values = ENCODER.document(text, language_of(payload.get("metadata")))
        return {TEXT_VECTOR: SparseVector(indices, values)} if indices else {}

    def upsert_text_pages(self, pages: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if not pages:
            return
        points = []
        languages: set[str] = set()
        for pid, payload in pages:
            if not payload.get("doc_id"):
                raise ValueError(f"page {pid}: payload has no doc_id")
            full = {**payload, "kind": KIND_PAGE, "stage": STAGE_TEXT}
            points.append((str(pid), self._text_vector(full), full))
            if full.get("text"):
                languages.add(language_of(full.get("metadata")))
        for batch in iter_batches(points, 256):
            self._upsert(batch)
        self._remember_languages(languages)
        self._changed()

    def _remember_languages(self, languages: set[str]) -> None:
        known = set(self.text_languages())
        if self.text_enabled and languages - known:
            self.update_meta({TEXT_LANGUAGES_META: sorted(known | languages)})

    def text_languages(self) -> list[str]:
        """The BM25 languages of the stored pages (English when none was recorded)."""
        return [str(x) for x in self.get_meta().get(TEXT_LANGUAGES_META) or ()]

    def _query_text_vector(self, text: str) -> SparseVector:
        indices, values = ENCODER.query(text, self.text_languages())
        return SparseVector(indices, values)

    def text_search(self, query: str, limit: int, doc_filter: Filter | None = None) -> list[tuple[str, float]]:
        if not self.text_enabled or limit <= 0 or (doc_filter is not None and doc_filter.matches_nothing):
            return []
        vector = self._query_text_vector(query)
        if not vector.indices:  # only stopwords
            return []
        # Equal BM25 scores (pages with the same words) in id order: one ranking whatever order they were stored in.
        hits = self._query_sparse(vector, int(limit), self._filter(doc_filter))
        return sorted(hits, key=lambda h: (-h[1], h[0]))

    def hybrid_search(
        self,
        query: np.ndarray,
        text: str,
        limit: int,
        doc_filter: Filter | None = None,
        *,
        depth: int = 50,
        rrf_k: int = 60,
        candidates: int = 200,
        text_depth: int | None = None,
    ) -> list[tuple[str, float]]:
        q = np.asarray(query, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        check_vectors(q, "query")
        if limit <= 0 or (doc_filter is not None and doc_filter.matches_nothing):
            return []
        vector = self._query_text_vector(text) if self.text_enabled else SparseVector([], [])
        flt = self._filter(doc_filter)
        return self._query_fused(q, vector, int(limit), flt, int(depth), int(rrf_k), int(candidates), text_depth)

    def visual_page_count(self, doc_id: str | None = None) -> int:
        return self._count(self._not_text(self._filter(Filter.where(doc_id=doc_id) if doc_id is not None else None)))

    def _not_text(self, flt: Any) -> Any:
        """``flt`` and not a text-only page."""
        api = self._api
        text_only = api.FieldCondition(key="stage", match=api.MatchValue(value=STAGE_TEXT))
        return api.Filter(must=[flt], must_not=[text_only])

    def _text_only(self, flt: Any) -> Any:
        api = self._api
        text_only = api.FieldCondition(key="stage", match=api.MatchValue(value=STAGE_TEXT))
        return api.Filter(must=[flt, text_only])

    def mark_document_complete(self, info: DocumentInfo) -> None:
        payload = {"kind": KIND_DOCUMENT, **document_record(info)}
        self._upsert([(document_point_id(info.doc_id), {}, payload)])
        self._changed()

    def delete_document(self, doc_id: str) -> int:
        by_doc = Filter.where(doc_id=doc_id)
        pages = self._count(self._filter(by_doc))
        # Pages and the marker both carry doc_id: one delete-by-filter removes them all.
        self._delete_where(self._filter(by_doc, kind=None))
        self._changed()
        return pages

    def delete_pages(self, point_ids: Sequence[str]) -> None:
        ids = [str(i) for i in point_ids]
        if ids:
            self._delete_ids(ids)
            self._changed()

    def set_document_sources(self, doc_id: str, sources: Sequence[str]) -> None:
        paths = list(dict.fromkeys(str(s) for s in sources))
        if not paths:
            raise ValueError(f"document {doc_id}: at least one source is needed")
        shown = {"source": paths[0], "file_name": source_file_name(paths[0])}
        by_doc = Filter.where(doc_id=doc_id)
        self._set_payload_where(shown, self._filter(by_doc, kind=KIND_PAGE))
        self._set_payload_where({**shown, "sources": paths}, self._filter(by_doc, kind=KIND_DOCUMENT))
        self._changed()

    def get_meta(self) -> dict[str, Any]:
        for pid, payload in self._retrieve([META_POINT_ID]):
            if pid == META_POINT_ID and payload.get("kind") == KIND_META:
                return dict(payload.get("values") or {})
        return {}

    def update_meta(self, values: dict[str, Any]) -> None:
        merged = {**self.get_meta(), **values}
        self._upsert([(META_POINT_ID, {}, {"kind": KIND_META, "values": merged})])
        self._changed()

    # ---- reads -----------------------------------------------------------------------------
    def _scroll_all(
        self, flt: Any, payload: bool | list[str], vectors: list[str] | None = None, batch: int = 1024
    ) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        offset = None
        while True:
            rows, offset = self._scroll(flt, batch, offset, payload, vectors)
            yield from rows
            if offset is None or not rows:
                return

    def _documents(self, doc_filter: Filter | None, include_incomplete: bool) -> list[DocumentInfo]:
        if doc_filter is not None and doc_filter.matches_nothing:
            return []
        marker_filter = self._filter(doc_filter, kind=KIND_DOCUMENT)
        page_filter = self._filter(doc_filter, kind=KIND_PAGE)
        counts = self._facet("doc_id", page_filter)
        text_only = self._facet("doc_id", self._text_only(page_filter)) if include_incomplete else {}
        payloads = {p["doc_id"]: p for _, _, p in self._scroll_all(marker_filter, True)}
        infos = [self._info(p, counts.get(doc_id, 0), True) for doc_id, p in payloads.items()]
        if include_incomplete:
            for doc_id, n in counts.items():
                if doc_id in payloads or n <= 0:
                    continue
                rows, _ = self._scroll(self._filter(Filter.where(doc_id=doc_id)), 1, None, LIGHT_FIELDS, None)
                if rows:
                    infos.append(self._info(rows[0][2], n, False, n - text_only.get(doc_id, 0)))
        infos.sort(key=lambda d: (d.source, d.doc_id))
        return infos

    @staticmethod
    def _info(
        payload: dict[str, Any], pages_stored: int, complete: bool, pages_visual: int | None = None
    ) -> DocumentInfo:
        return DocumentInfo(
            doc_id=str(payload["doc_id"]),
            source=str(payload.get("source", "")),
            file_name=str(payload.get("file_name", "")),
            page_count=int(payload.get("page_count") or 0),
            pages_stored=int(pages_stored),
            content_hash=str(payload.get("content_hash", "")),
            ingested_at=str(payload.get("ingested_at", "")),
            complete=complete,
            metadata=dict(payload.get("metadata") or {}),
            sources=tuple(str(s) for s in payload.get("sources") or ()),
            pages_visual=pages_stored if pages_visual is None else pages_visual,
        )

    def list_documents(self, include_incomplete: bool = False) -> list[DocumentInfo]:
        return self._documents(None, include_incomplete)

    def get_document(self, doc_id: str) -> DocumentInfo | None:
        docs = self._documents(Filter.where(doc_id=doc_id), include_incomplete=True)
        return docs[0] if docs else None

    def find_by_source(self, source: str) -> list[DocumentInfo]:
        return self._documents(Filter.where(source=source), include_incomplete=True)

    def page_ids(self, doc_id: str) -> list[str]:
        return [pid for pid, _, _ in self._scroll_all(self._filter(Filter.where(doc_id=doc_id)), False)]

    def get_payloads(self, point_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        ids = [str(i) for i in point_ids]
        if not ids:
            return {}
        return {pid: p for pid, p in self._retrieve(ids) if p.get("kind") == KIND_PAGE}

    def get_vectors(self, point_ids: Sequence[str]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in point_ids]
        return self._retrieve_tokens(ids) if ids else {}

    def iter_pages(
        self, batch_size: int = 256, vectors: Collection[VectorName] = TOKENS_ONLY, with_text: bool = False
    ) -> Iterator[StoredPage]:
        unknown = set(vectors) - {TOKENS_VECTOR, POOLED_VECTOR}
        if unknown:
            raise ValueError(f"unknown vector names {sorted(unknown)}; use {TOKENS_VECTOR!r} or {POOLED_VECTOR!r}")
        names = [v for v in (TOKENS_VECTOR, POOLED_VECTOR) if v in vectors]
        fields: bool | list[str] = True if with_text else LIGHT_FIELDS
        for pid, vecs, payload in self._scroll_all(self._filter(), fields, names or None, batch=batch_size):
            yield StoredPage(pid, payload, vecs.get(TOKENS_VECTOR), vecs.get(POOLED_VECTOR))

    def prefetch(
        self,
        query: np.ndarray,
        limit: int,
        doc_filter: Filter | None = None,
        *,
        using: VectorName = "pooled",
    ) -> list[tuple[str, float]]:
        if using not in (POOLED_VECTOR, TOKENS_VECTOR):
            raise ValueError(f"using must be {POOLED_VECTOR!r} or {TOKENS_VECTOR!r}, got {using!r}")
        q = np.asarray(query, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        check_vectors(q, "query")
        if limit <= 0 or (doc_filter is not None and doc_filter.matches_nothing):
            return []
        return self._query(q, using, int(limit), self._filter(doc_filter))

    def search_two_stage(
        self, query: np.ndarray, limit: int, candidates: int, doc_filter: Filter | None = None
    ) -> list[tuple[str, float]]:
        q = np.asarray(query, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        check_vectors(q, "query")
        if limit <= 0 or (doc_filter is not None and doc_filter.matches_nothing):
            return []
        flt = self._filter(doc_filter)
        return self._query(q, TOKENS_VECTOR, int(limit), flt, prefetch=max(int(candidates), int(limit)))

    def count_pages(self) -> int:
        return self._count(self._filter())
