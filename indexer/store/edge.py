"""The embedded default store: Qdrant Edge (``qdrant-edge-py``), the real Qdrant engine in process.

Layout on disk: ``path / collection`` is the Edge shard directory (``edge_config.json``, ``wal/``,
``segments/``) and ``path / f"{collection}.lock"`` is the lock file holding the owner's pid.

Schema (as in indexer/store/base.py): named multivectors ``tokens`` ``(n_tokens, 128)`` (Dot, MaxSim, fp16,
HNSW off ``m=0``) and ``pooled`` ``(n_pooled, 128)`` (Dot, MaxSim, HNSW on), the sparse vector ``text`` (BM25,
IDF modifier; shards created before it have none and are searched by pictures only); keyword payload
indexes on the string filter fields, an integer index on ``page_number``. Document marker points
carry no vector at all (Edge accepts a point with an empty vector dict).

One process only. Opening takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the lock file; a second
opener, in another process or in this one, gets :class:`StoreUnavailable` naming the owner's pid.
The kernel drops the lock when the owner closes the store or dies, so a crash never leaves a stale
lock. Several processes sharing a store is what the Qdrant server backend is for.

Thread-safety: every shard call runs under one ``threading.RLock`` (the API reads while ingest
writes). ``iter_pages`` holds it for one scroll batch at a time, never across a ``yield``.

``version()`` is ``"{points}:{token}"`` (``QdrantStoreCore``): every write stores a fresh token in the
shard, so the version is stable across restarts and moves with every write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from indexer.disk import require_free
from indexer.errors import SchemaMismatch, StoreUnavailable
from indexer.filters import FilterAPI
from indexer.store.base import (
    DIM,
    INDEX_TYPES,
    POOLED_VECTOR,
    TOKENS_VECTOR,
    QdrantStoreCore,
    SparseVector,
    tokens_array,
)
from indexer.store.sparse import TEXT_VECTOR

logger = logging.getLogger(__name__)

_FIX = "use another COLSMOL_COLLECTION or delete the data dir"


def _expected_schema() -> dict[str, dict[str, Any]]:
    """The vectors section of ``edge_config.json`` as colsmol writes it (the fields we check)."""
    return {
        TOKENS_VECTOR: {"size": DIM, "distance": "Dot", "comparator": "max_sim", "datatype": "float16", "hnsw_m": 0},
        POOLED_VECTOR: {"size": DIM, "distance": "Dot", "comparator": "max_sim", "datatype": None, "hnsw_m": None},
    }


def _schema_differences(collection: str, vectors: dict[str, Any]) -> list[str]:
    """What differs between a persisted ``edge_config.json`` vectors section and ours."""
    diffs: list[str] = []
    for name, want in _expected_schema().items():
        have = vectors.get(name)
        if have is None:
            diffs.append(f"vector {name!r} is missing")
            continue
        got = {
            "size": have.get("size"),
            "distance": have.get("distance"),
            "comparator": (have.get("multivector_config") or {}).get("comparator"),
            "datatype": (have.get("datatype") or None),
            "hnsw_m": (have.get("hnsw_config") or {}).get("m"),
        }
        if got["datatype"] == "float32":
            got["datatype"] = None
        for key, value in want.items():
            if key == "hnsw_m" and value is None:
                continue
            if got[key] != value:
                diffs.append(f"vector {name!r} has {key}={got[key]!r}, colsmol needs {value!r}")
    extra = sorted(set(vectors) - set(_expected_schema()))
    if extra:
        diffs.append(f"unexpected vectors {extra}")
    return diffs


class EdgeStore(QdrantStoreCore):
    """:class:`~indexer.store.base.VectorStore` over an embedded Qdrant Edge shard.

    ``EdgeStore(path, collection)`` opens (or creates) the shard ``path / collection``.
    Pages are upserted in requests of at most ``max_floats_per_request`` floats (about 7 pages of
    1,100 x 128), which also bounds how long a writer holds the lock against readers.
    """

    max_floats_per_request = 1_000_000
    vector_scroll_batch = 32

    def __init__(self, path: Path, collection: str) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self.collection = collection
        self.path = Path(path)
        self.shard_path = self.path / collection
        self.lock_path = self.path / f"{collection}.lock"
        self._lock = threading.RLock()
        self._api = FilterAPI(qe.Filter, qe.FieldCondition, qe.MatchValue, qe.MatchAny, qe.RangeFloat)
        self._lock_fd: int | None = None
        self._shard: Any = None
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire_process_lock()
        try:
            self._shard = self._open_shard()
            self.text_enabled = self._has_text_vector()
            self._ensure_indexes()
        except BaseException:
            self._release_process_lock()
            raise
        logger.info("opened Qdrant Edge shard %s (%d points)", self.shard_path, self._count(None))

    # ---- process lock ----------------------------------------------------------------------
    def _acquire_process_lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            who = f"{owner} (this process)" if owner == str(os.getpid()) else owner
            raise StoreUnavailable(
                f"Qdrant Edge store {self.shard_path} is in use by process {who}; embedded Qdrant Edge "
                "serves one process only: stop that process, or use the Qdrant server backend "
                "(COLSMOL_QDRANT_URL) to share a store"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_process_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- schema ----------------------------------------------------------------------------
    def _config(self) -> Any:
        qe = self._qe
        maxsim = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)
        return qe.EdgeConfig(
            vectors={
                TOKENS_VECTOR: qe.EdgeVectorParams(
                    size=DIM,
                    distance=qe.Distance.Dot,
                    multivector_config=maxsim,
                    datatype=qe.VectorStorageDatatype.Float16,
                    hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
                ),
                POOLED_VECTOR: qe.EdgeVectorParams(
                    size=DIM,
                    distance=qe.Distance.Dot,
                    multivector_config=maxsim,
                    hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000),
                ),
            },
            sparse_vectors={TEXT_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )

    def _has_text_vector(self) -> bool:
        config_file = self.shard_path / "edge_config.json"
        try:
            sparse = json.loads(config_file.read_text()).get("sparse_vectors") or {}
        except (OSError, ValueError):
            return False
        if TEXT_VECTOR not in sparse:
            logger.info("collection %r has no text index (made before it): searched by images only", self.collection)
            return False
        return True

    def _open_shard(self) -> Any:
        qe = self._qe
        config_file = self.shard_path / "edge_config.json"
        has_segments = (self.shard_path / "segments").is_dir() and any((self.shard_path / "segments").iterdir())
        if not config_file.exists() and not has_segments:
            logger.info("creating Qdrant Edge collection %r at %s", self.collection, self.shard_path)
            require_free(self.path)
            try:
                return qe.EdgeShard.create(str(self.shard_path), self._config())
            except Exception as exc:
                raise StoreUnavailable(f"cannot create Qdrant Edge shard {self.shard_path}: {exc}") from exc
        if config_file.exists():
            try:
                vectors = json.loads(config_file.read_text()).get("vectors") or {}
            except (OSError, ValueError) as exc:
                raise StoreUnavailable(f"cannot read {config_file}: {exc}; {_FIX}") from exc
            diffs = _schema_differences(self.collection, vectors)
            if diffs:
                raise SchemaMismatch(
                    f"collection {self.collection!r} at {self.shard_path} has a schema colsmol cannot use: "
                    f"{'; '.join(diffs)}. Fix: {_FIX}"
                )
        try:
            # No config: keep the shard as persisted (passing one would rewrite it on disk).
            return qe.EdgeShard.load(str(self.shard_path))
        except Exception as exc:
            if "incompatible" in str(exc).lower():
                raise SchemaMismatch(
                    f"collection {self.collection!r} at {self.shard_path} has a schema colsmol cannot use: "
                    f"{exc}. Fix: {_FIX}"
                ) from exc
            raise StoreUnavailable(f"cannot open Qdrant Edge shard {self.shard_path}: {exc}") from exc

    def _ensure_indexes(self) -> None:
        qe = self._qe
        kinds = {"keyword": qe.PayloadSchemaType.Keyword, "integer": qe.PayloadSchemaType.Integer}
        with self._lock:
            have = self._shard.info().payload_schema
            for name, kind in INDEX_TYPES.items():
                if name in have:
                    if have[name].data_type != kinds[kind]:
                        raise SchemaMismatch(
                            f"collection {self.collection!r}: payload index {name!r} is "
                            f"{have[name].data_type}, colsmol needs {kind}. Fix: {_FIX}"
                        )
                    continue
                require_free(self.path)
                self._shard.update(qe.UpdateOperation.create_field_index(name, kinds[kind]))

    # ---- primitives ------------------------------------------------------------------------
    def _live(self) -> Any:
        if self._shard is None:
            raise StoreUnavailable(f"Qdrant Edge store {self.shard_path} is closed")
        return self._shard

    def _vector(self, v: Any) -> Any:
        # ndarray.tolist() first: qdrant_edge converts a nested list ~10x faster than an ndarray
        # (1.5 ms + 2 ms for tolist against 15 ms for a 1,030 x 128 page).
        return self._qe.SparseVector(v.indices, v.values) if isinstance(v, SparseVector) else v.tolist()

    def _upsert(self, points: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        qe = self._qe
        batch = [
            qe.Point(id=pid, vector={k: self._vector(v) for k, v in vectors.items()}, payload=payload)
            for pid, vectors, payload in points
        ]
        need = sum(8 * v.size if isinstance(v, SparseVector) else v.nbytes for _, vs, _ in points for v in vs.values())
        self._update(qe.UpdateOperation.upsert_points(batch), need=need)

    def _delete_ids(self, ids: list[str]) -> None:
        point_ids: list[int | uuid.UUID | str] = list(ids)
        self._update(self._qe.UpdateOperation.delete_points(point_ids))

    def _delete_where(self, flt: Any) -> None:
        self._update(self._qe.UpdateOperation.delete_points_by_filter(flt))

    def _set_payload_where(self, payload: dict[str, Any], flt: Any) -> None:
        self._update(self._qe.UpdateOperation.set_payload_by_filter(flt, payload))

    def _update(self, operation: Any, need: int = 0) -> None:
        """Apply one update, after making sure the disk has room: the engine writes through memory-mapped
        files, and a disk that fills under them kills the process (SIGBUS) instead of raising."""
        require_free(self.path, 4 * need)  # float32 in, fp16 + WAL + index copies out: 4x is a safe bound
        with self._lock:
            self._live().update(operation)

    def _scroll(
        self, flt: Any, limit: int, offset: Any, payload: bool | list[str], vectors: list[str] | None
    ) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any]]], Any]:
        if vectors:
            # In process there is no request overhead to amortise, and smaller batches keep fewer
            # Python float objects alive at once: measured 2x faster than 256 pages per scroll.
            limit = min(limit, self.vector_scroll_batch)
        req = self._qe.ScrollRequest(
            offset=offset, limit=limit, filter=flt, with_payload=payload, with_vector=vectors or False
        )
        with self._lock:
            records, next_offset = self._live().scroll(req)
        # Records are owned copies: convert outside the lock. Each property access converts from
        # Rust again, so read .vector once, and turn it into an ndarray at once: keeping a whole
        # batch of nested float lists alive costs ~4 GB per 1,000 pages and slows the GC down.
        rows = []
        for r in records:
            vecs = {}
            if vectors:
                vecs = {name: tokens_array(rows_) for name, rows_ in (r.vector or {}).items() if rows_}
            rows.append((str(r.id), vecs, r.payload or {}))
        return rows, next_offset

    def _count(self, flt: Any) -> int:
        with self._lock:
            return int(self._live().count(self._qe.CountRequest(exact=True, filter=flt)))

    def _facet(self, key: str, flt: Any) -> dict[Any, int]:
        req = self._qe.FacetRequest(key=key, limit=10_000_000, exact=True, filter=flt)
        with self._lock:
            return {hit.value: int(hit.count) for hit in self._live().facet(req).hits}

    def _retrieve(self, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            records = self._live().retrieve(ids, with_payload=True, with_vector=False)
            return [(str(r.id), r.payload or {}) for r in records]

    def _retrieve_tokens(self, ids: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            records = self._live().retrieve(ids, with_payload=False, with_vector=[TOKENS_VECTOR])
        out = {}
        for r in records:
            rows = (r.vector or {}).get(TOKENS_VECTOR)
            if rows:
                out[str(r.id)] = tokens_array(rows)
        return out

    def _query(
        self, query: np.ndarray, using: str, limit: int, flt: Any, prefetch: int | None = None
    ) -> list[tuple[str, float]]:
        qe = self._qe
        q = query.tolist()
        pooled = qe.Query.Nearest(q, using=POOLED_VECTOR)
        first = [qe.Prefetch(limit=prefetch, query=pooled, filter=flt)] if prefetch else []
        req = qe.QueryRequest(
            limit=limit,
            prefetches=first,
            query=qe.Query.Nearest(q, using=using),
            filter=flt,
            with_payload=False,
            with_vector=False,
        )
        with self._lock:
            return [(str(p.id), float(p.score)) for p in self._live().query(req)]

    def _query_sparse(self, vector: SparseVector, limit: int, flt: Any) -> list[tuple[str, float]]:
        qe = self._qe
        req = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(qe.SparseVector(vector.indices, vector.values), using=TEXT_VECTOR),
            filter=flt,
            with_payload=False,
            with_vector=False,
        )
        with self._lock:
            return [(str(p.id), float(p.score)) for p in self._live().query(req)]

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
        qe = self._qe
        q = query.tolist()
        pooled = qe.Prefetch(limit=max(candidates, depth), query=qe.Query.Nearest(q, using=POOLED_VECTOR), filter=flt)
        exact = qe.Query.Nearest(q, using=TOKENS_VECTOR)
        sides = [qe.Prefetch(limit=depth, query=exact, prefetches=[pooled], filter=flt)]
        if sparse.indices:
            text = qe.Query.Nearest(qe.SparseVector(sparse.indices, sparse.values), using=TEXT_VECTOR)
            sides.append(qe.Prefetch(limit=text_depth or depth, query=text, filter=flt))
        req = qe.QueryRequest(
            limit=limit,
            prefetches=sides,
            query=qe.Fusion.Rrf(k=rrf_k),
            filter=flt,
            with_payload=False,
            with_vector=False,
        )
        with self._lock:
            return [(str(p.id), float(p.score)) for p in self._live().query(req)]

    def flush(self) -> None:
        with self._lock:
            self._live().flush()

    def close(self) -> None:
        """Flush, close the shard and release the process lock. Idempotent."""
        with self._lock:
            shard, self._shard = self._shard, None
            try:
                if shard is not None:
                    try:
                        shard.flush()
                    except Exception as exc:  # noqa: BLE001 - e.g. a full disk: the WAL still holds every write
                        logger.warning("flushing %s failed (%s); its WAL keeps the writes", self.shard_path, exc)
                    finally:
                        shard.close()
                    logger.info("closed Qdrant Edge shard %s", self.shard_path)
            finally:
                self._release_process_lock()

    def drop(self) -> None:
        """Delete the collection: close the shard and remove its directory while still holding the lock, then
        the lock file. The store is closed afterwards."""
        import shutil

        with self._lock:
            shard, self._shard = self._shard, None
            try:
                if shard is not None:
                    shard.close()
                shutil.rmtree(self.shard_path, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    self.lock_path.unlink()
            finally:
                self._release_process_lock()
        logger.info("dropped Qdrant Edge shard %s", self.shard_path)

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close must still free the lock for a later open
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"EdgeStore({str(self.path)!r}, {self.collection!r})"
