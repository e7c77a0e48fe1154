"""The shared store: a Qdrant server or cluster through ``qdrant-client``.

Same schema as the Edge backend: named multivectors ``tokens``
``(n_tokens, 128)`` (Dot, MaxSim, fp16, HNSW off ``m=0``, stored ``on_disk``) and ``pooled`` ``(n_pooled, 128)``
(Dot, MaxSim, HNSW on), payload indexes on the filter fields (keyword, integer for
``page_number``). The collection is created on first use; an existing one with another schema
raises :class:`SchemaMismatch`.

Any number of processes may share it. ``version()`` must notice writes by any of them: every
write replaces the token of a reserved state point (shared with the Edge backend, see
``QdrantStoreCore._changed``).

``ServerStore`` also accepts a ready ``QdrantClient``; tests pass ``QdrantClient(":memory:")``
(local mode) as a stand-in for a server. Local mode ignores payload indexes; never use it for real.
"""

from __future__ import annotations

import logging
import uuid
import warnings
from typing import Any

import numpy as np

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

_FIX = "use another COLSMOL_COLLECTION or delete the collection on the server"


class ServerStore(QdrantStoreCore):
    """:class:`~indexer.store.base.VectorStore` over a Qdrant server (``url``) or a ready ``QdrantClient``.

    ``shard_number``, ``replication_factor`` and ``write_consistency_factor`` are used only when
    the collection is created. Pages are upserted in requests of at most
    ``max_floats_per_request`` floats (about 4 pages of 1,100 x 128, ~12 MB of JSON at ~20 bytes a
    float), well under the server's default 32 MB request limit.
    """

    max_floats_per_request = 600_000

    def __init__(
        self,
        url_or_client: Any,
        collection: str,
        api_key: str | None = None,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
        timeout: int = 60,
    ) -> None:
        from qdrant_client import QdrantClient, models

        self._m = models
        self.collection = collection
        self._api = FilterAPI(models.Filter, models.FieldCondition, models.MatchValue, models.MatchAny, models.Range)
        if isinstance(url_or_client, str):
            self.url = url_or_client
            self.client = QdrantClient(url=url_or_client, api_key=api_key, timeout=timeout)
            self._owns_client = True
        else:
            self.url = repr(url_or_client)
            self.client = url_or_client
            self._owns_client = False
        self._closed = False
        try:
            exists = self.client.collection_exists(collection)
        except Exception as exc:
            raise StoreUnavailable(
                f"cannot reach the Qdrant server at {self.url}: {exc}; start it (docker compose up -d qdrant) "
                "or unset COLSMOL_QDRANT_URL to use the embedded store"
            ) from exc
        if not exists:
            self._create(shard_number, replication_factor, write_consistency_factor)
        self._check_schema()
        self._ensure_indexes()

    # ---- schema ----------------------------------------------------------------------------
    def _vectors_config(self) -> dict[str, Any]:
        m = self._m
        maxsim = m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM)
        return {
            TOKENS_VECTOR: m.VectorParams(
                size=DIM,
                distance=m.Distance.DOT,
                multivector_config=maxsim,
                datatype=m.Datatype.FLOAT16,
                hnsw_config=m.HnswConfigDiff(m=0),  # only ever rescored: no graph
                on_disk=True,  # read for the candidates' rescore only; RAM holds the pooled vectors
            ),
            POOLED_VECTOR: m.VectorParams(
                size=DIM,
                distance=m.Distance.DOT,
                multivector_config=maxsim,
                hnsw_config=m.HnswConfigDiff(m=16),
            ),
        }

    def _create(self, shard_number: int | None, replication_factor: int | None, wcf: int | None) -> None:
        logger.info("creating Qdrant collection %r on %s", self.collection, self.url)
        try:
            self.client.create_collection(
                self.collection,
                vectors_config=self._vectors_config(),
                sparse_vectors_config={TEXT_VECTOR: self._m.SparseVectorParams(modifier=self._m.Modifier.IDF)},
                shard_number=shard_number,
                replication_factor=replication_factor,
                write_consistency_factor=wcf,
            )
        except Exception as exc:
            # Another process may have created it at the same moment: then it exists now.
            if not self.client.collection_exists(self.collection):
                raise StoreUnavailable(f"cannot create collection {self.collection!r} on {self.url}: {exc}") from exc

    def _check_schema(self) -> None:
        m = self._m
        params = self.client.get_collection(self.collection).config.params
        vectors = params.vectors if isinstance(params.vectors, dict) else {}
        diffs: list[str] = []
        for name in (TOKENS_VECTOR, POOLED_VECTOR):
            have = vectors.get(name)
            if have is None:
                diffs.append(f"vector {name!r} is missing")
                continue
            comparator = have.multivector_config.comparator if have.multivector_config else None
            if have.size != DIM:
                diffs.append(f"vector {name!r} has size={have.size}, colsmol needs {DIM}")
            if have.distance != m.Distance.DOT:
                diffs.append(f"vector {name!r} has distance={have.distance.value}, colsmol needs Dot")
            if comparator != m.MultiVectorComparator.MAX_SIM:
                diffs.append(f"vector {name!r} is not a MaxSim multivector")
        tokens = vectors.get(TOKENS_VECTOR)
        if tokens is not None and tokens.datatype not in (m.Datatype.FLOAT16,):
            diffs.append(
                f"vector 'tokens' has datatype={getattr(tokens.datatype, 'value', None)}, colsmol needs float16"
            )
        sparse = params.sparse_vectors or {}
        self.text_enabled = TEXT_VECTOR in sparse
        if not self.text_enabled:
            logger.info("collection %r has no text index (made before it): searched by images only", self.collection)
        if diffs:
            raise SchemaMismatch(
                f"collection {self.collection!r} on {self.url} has a schema colsmol cannot use: "
                f"{'; '.join(diffs)}. Fix: {_FIX}"
            )

    def _ensure_indexes(self) -> None:
        m = self._m
        kinds = {"keyword": m.PayloadSchemaType.KEYWORD, "integer": m.PayloadSchemaType.INTEGER}
        have = self.client.get_collection(self.collection).payload_schema or {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # local mode warns that it ignores payload indexes
            for name, kind in INDEX_TYPES.items():
                if name not in have:
                    self.client.create_payload_index(self.collection, name, kinds[kind], wait=True)

    # ---- primitives ------------------------------------------------------------------------
    def _live(self) -> Any:
        if self._closed:
            raise StoreUnavailable(f"store for collection {self.collection!r} on {self.url} is closed")
        return self.client

    def _vector(self, v: Any) -> Any:
        return self._m.SparseVector(indices=v.indices, values=v.values) if isinstance(v, SparseVector) else v.tolist()

    def _upsert(self, points: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        structs = [
            self._m.PointStruct(id=pid, vector={k: self._vector(v) for k, v in vectors.items()}, payload=payload)
            for pid, vectors, payload in points
        ]
        self._live().upsert(self.collection, structs, wait=True)

    def _delete_ids(self, ids: list[str]) -> None:
        points: list[int | str | uuid.UUID] = list(ids)
        self._live().delete(self.collection, points_selector=self._m.PointIdsList(points=points), wait=True)

    def _set_payload_where(self, payload: dict[str, Any], flt: Any) -> None:
        selector = self._m.FilterSelector(filter=flt)
        self._live().set_payload(self.collection, payload=payload, points=selector, wait=True)

    def _delete_where(self, flt: Any) -> None:
        self._live().delete(self.collection, points_selector=self._m.FilterSelector(filter=flt), wait=True)

    def _scroll(
        self, flt: Any, limit: int, offset: Any, payload: bool | list[str], vectors: list[str] | None
    ) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any]]], Any]:
        records, next_offset = self._live().scroll(
            self.collection,
            scroll_filter=flt,
            limit=limit,
            offset=offset,
            with_payload=payload,
            with_vectors=vectors or False,
        )
        rows = []
        for r in records:
            vecs = {}
            if vectors and isinstance(r.vector, dict):
                vecs = {name: tokens_array(rows_) for name, rows_ in r.vector.items() if rows_}
                r.vector = None  # free the nested lists now
            rows.append((str(r.id), vecs, r.payload or {}))
        return rows, next_offset

    def _count(self, flt: Any) -> int:
        return int(self._live().count(self.collection, count_filter=flt, exact=True).count)

    def _facet(self, key: str, flt: Any) -> dict[Any, int]:
        res = self._live().facet(self.collection, key, facet_filter=flt, limit=10_000_000, exact=True)
        return {hit.value: int(hit.count) for hit in res.hits}

    def _retrieve(self, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        records = self._live().retrieve(self.collection, ids, with_payload=True, with_vectors=False)
        return [(str(r.id), r.payload or {}) for r in records]

    def _retrieve_tokens(self, ids: list[str]) -> dict[str, np.ndarray]:
        records = self._live().retrieve(self.collection, ids, with_payload=False, with_vectors=[TOKENS_VECTOR])
        out = {}
        for r in records:
            rows = (r.vector or {}).get(TOKENS_VECTOR) if isinstance(r.vector, dict) else None
            if rows:
                out[str(r.id)] = tokens_array(rows)
        return out

    def _query(
        self, query: np.ndarray, using: str, limit: int, flt: Any, prefetch: int | None = None
    ) -> list[tuple[str, float]]:
        q = query.tolist()
        first = self._m.Prefetch(query=q, using=POOLED_VECTOR, limit=prefetch, filter=flt) if prefetch else None
        res = self._live().query_points(
            self.collection,
            query=q,
            using=using,
            prefetch=first,
            limit=limit,
            query_filter=flt,
            with_payload=False,
            with_vectors=False,
        )
        return [(str(p.id), float(p.score)) for p in res.points]

    def _query_sparse(self, vector: SparseVector, limit: int, flt: Any) -> list[tuple[str, float]]:
        res = self._live().query_points(
            self.collection,
            query=self._m.SparseVector(indices=vector.indices, values=vector.values),
            using=TEXT_VECTOR,
            limit=limit,
            query_filter=flt,
            with_payload=False,
            with_vectors=False,
        )
        return [(str(p.id), float(p.score)) for p in res.points]

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
        m = self._m
        q = query.tolist()
        pooled = m.Prefetch(query=q, using=POOLED_VECTOR, limit=max(candidates, depth), filter=flt)
        sides = [m.Prefetch(query=q, using=TOKENS_VECTOR, limit=depth, prefetch=[pooled], filter=flt)]
        if sparse.indices:
            text = m.SparseVector(indices=sparse.indices, values=sparse.values)
            sides.append(m.Prefetch(query=text, using=TEXT_VECTOR, limit=text_depth or depth, filter=flt))
        res = self._live().query_points(
            self.collection,
            prefetch=sides,
            query=m.RrfQuery(rrf=m.Rrf(k=rrf_k)),
            limit=limit,
            query_filter=flt,
            with_payload=False,
            with_vectors=False,
        )
        return [(str(p.id), float(p.score)) for p in res.points]

    def flush(self) -> None:
        """Writes use ``wait=True``: nothing is pending client-side."""

    def close(self) -> None:
        """Close the client if this store created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            try:
                self.client.close()
            except Exception:  # closing a dead connection must not mask the caller's error
                logger.debug("error closing Qdrant client", exc_info=True)

    def drop(self) -> None:
        """Delete the collection on the server (all its shards and replicas); the store is closed afterwards."""
        try:
            self.client.delete_collection(self.collection)
        except Exception as exc:
            raise StoreUnavailable(f"cannot delete collection {self.collection!r} on {self.url}: {exc}") from exc
        finally:
            self.close()
        logger.info("deleted Qdrant collection %r on %s", self.collection, self.url)

    def __enter__(self) -> ServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerStore({self.url!r}, {self.collection!r})"
