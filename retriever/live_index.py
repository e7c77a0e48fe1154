"""The token index that follows the store: the one owner of loading, write hooks, sync and the on-disk cache.

Qdrant stays the source of truth; the :class:`~retriever.token_index.TokenIndex` is a device-resident copy of
its page vectors. :class:`LiveIndex` keeps the copy current:

- **Load** (first use): from the cache (:mod:`retriever.index_cache`: a memory-mapped snapshot plus a journal of
  the writes since), else built from the store's vectors. A cache that reflects the store's current version is
  used as it is; one that missed writes is reconciled with one payload-only ``sync`` (recovery, not a rebuild).
- **Writes in this process** go through :meth:`apply` (the ingest and delete paths call it): the store write
  runs under the sync lock, the same pages are added to / removed from the index, the write is appended to the
  cache's journal, and the store version the index reflects is recorded, all before the lock is released. A
  search therefore never rescans the store because of our own writes, and a restart finds the cache current.
  The journal is written even when no search has loaded the index yet (``colsmol ingest`` on its own): the
  next process loads the snapshot, replays the journal, and reads no vector from the store.
- **Writes by other processes** (several ``colsmol`` processes on one Qdrant server) are found by comparing
  ``store.version()`` with the recorded one, at most once per ``sync_interval_s`` and under the same lock;
  only a changed version costs a payload-only scan and a fetch of the changed pages. Embedded Qdrant Edge
  belongs to one process, so there the check never finds anything foreign.
- **The snapshot** is rewritten (the journal compacted into it) on :meth:`close` when the index changed outside
  the journal (a build, a sync) or the journal has outgrown half the snapshot; a short-lived process with a
  small journal leaves both as they are.

A write by another process that lands between our write and our version read is recorded as ours; the next
version change (any later write) reconciles it, since ``sync`` diffs by point id.

**Room and failures.** Pages the index has no room for under its device-memory budget are refused before the
store write (:class:`~indexer.errors.IndexBudgetExceeded`): store, index and journal stay as they were. If the
index fails after the store write (a device out of memory, a bug), the store keeps the write and the index is
marked stale: no store version is recorded for it until the next search reconciles it with a payload scan
(``sync``), and the journal takes no more writes until the next snapshot, so a restart reconciles the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from indexer.errors import IndexBudgetExceeded
from indexer.store.base import VectorStore
from indexer.types import PageRecord
from retriever.index_cache import IndexCache
from retriever.tiered_index import TieredIndex
from retriever.token_index import TokenIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The journal is compacted into a new snapshot once it is larger than this share of the snapshot.
COMPACT_RATIO = 0.5
COMPACT_MIN_BYTES = 64 << 20


class LiveIndex:
    """A :class:`TokenIndex` kept in step with ``store``; see the module docstring.

    ``device``, ``dtype`` and ``pool_factor`` configure the index; ``tiered`` makes it a
    :class:`~retriever.tiered_index.TieredIndex` (pooled vectors resident, full tokens memory-mapped from the
    cache dir, ``candidates`` pages per query reranked exactly; ``dtype``/``pool_factor`` then do not apply);
    ``cache_dir`` (optional) is where its cache lives;
    ``sync_interval_s`` bounds how often searches look for foreign writes (0: on every search).
    ``index`` adopts an index already built from this store (benchmarks, tests) instead of loading one.
    ``progress(done, total)``, when set, is told how a build from the store goes (the CLI draws a bar).
    ``memory_budget_bytes`` bounds the index's device memory and ``segment_tokens`` its segments (see
    :class:`~retriever.token_index.TokenIndex`: segments, and so the budget, apply off the CPU unless forced).
    """

    def __init__(
        self,
        store: VectorStore,
        *,
        device: str = "auto",
        dtype: str = "fp16",
        pool_factor: int = 1,
        tiered: bool = False,
        candidates: int = 512,
        cache_dir: Path | None = None,
        sync_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        index: TokenIndex | None = None,
        memory_budget_bytes: int | None = None,
        segment_tokens: int | None = None,
    ) -> None:
        self.store = store
        self.device = device
        self.dtype = dtype
        self.pool_factor = pool_factor
        self.tiered = tiered
        self.candidates = int(candidates)
        self.memory_budget_bytes = memory_budget_bytes
        self.segment_tokens = segment_tokens
        self.cache = IndexCache(cache_dir) if cache_dir is not None else None
        self.sync_interval_s = float(sync_interval_s)
        self.progress: Callable[[int, int], None] | None = None
        self._clock = clock
        self._index: TokenIndex | None = index
        self._load_lock = threading.Lock()
        self._sync_lock = threading.RLock()
        self._last_check = float("-inf")
        self._snapshot_stale = False  # the index changed in a way the journal does not hold
        self._index_stale = False  # an index write failed after its store write: sync before recording a version
        self._journal_gap = False  # a write is missing from the journal: record none until the next snapshot
        #: payload scans run to reconcile with foreign writes (or a stale cache); tests and metrics read it
        self.syncs = 0

    # ------------------------------------------------------------------ reading
    @property
    def loaded(self) -> bool:
        return self._index is not None

    def nbytes(self) -> int:
        """Device bytes the loaded index holds (0 when not loaded): what a memory budget counts."""
        index = self._index
        return index.nbytes() if index is not None else 0

    def get(self) -> TokenIndex:
        """The index for a search: loaded on first use, then checked for foreign writes (rate limited)."""
        index = self.load()
        self.refresh(force=self._index_stale)
        return index

    def load(self) -> TokenIndex:
        """Load the index now if it is not loaded (the cache, else a build from the store)."""
        index = self._index
        if index is not None:
            return index
        with self._load_lock:
            if self._index is None:
                with self._sync_lock:  # no write between reading the cache and taking the index live
                    self._index = self._load_cache() or self._build()
                    self._last_check = float("-inf")  # check the version once now
                self.refresh()
            return self._index

    def refresh(self, force: bool = False) -> bool:
        """Reconcile with the store when its version moved; at most once per ``sync_interval_s`` unless ``force``."""
        index = self._index
        if index is None or (not force and self._clock() - self._last_check < self.sync_interval_s):
            return False
        with self._sync_lock:
            if not force and self._clock() - self._last_check < self.sync_interval_s:
                return False  # another thread checked while we waited for the lock
            version = self.store.version()
            self._last_check = self._clock()
            if version == index.store_version:
                return False
            self.syncs += 1
            changed = index.sync(self.store, version)
            self._snapshot_stale = True  # the journal does not hold what sync changed
            self._index_stale = False
            return changed

    # ------------------------------------------------------------------ writing
    def apply(
        self,
        write: Callable[[], T],
        upserted: Sequence[PageRecord] = (),
        deleted: Sequence[str] = (),
        updated: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> T:
        """Run a store ``write`` and mirror it in the index and the cache's journal: ``upserted`` pages added,
        ``deleted`` ids removed, ``updated`` payload fields set on every page of a document
        (``{doc_id: {"source": ...}}``).

        Pass every write that changes the store's version (page upserts, deletes, document markers, sources),
        so the recorded version stays the store's.

        Raises :class:`~indexer.errors.IndexBudgetExceeded`, before ``write`` runs, when the loaded index has no
        room for ``upserted``. Anything the index raises after ``write`` is raised again once the index is marked
        stale (the module docstring says how it recovers).
        """
        with self._sync_lock:
            if self.tiered and self._index is None and self.cache is not None:
                # A tiered journal records where pages lie in the token file, so the index takes every write.
                self.load()
            index = self._index
            if index is not None and upserted:
                index.check_room([int(r.vectors.shape[0]) for r in upserted])
            # With no snapshot yet, an empty store can start one now: the journal then holds every page.
            start_cache = index is None and self.cache is not None and not self.cache.exists()
            empty_before = start_cache and self.store.count_pages() == 0
            result = write()
            version = self.store.version()
            if index is not None:
                try:
                    if deleted:
                        index.remove(deleted)
                    if upserted:
                        index.add(
                            [r.point_id for r in upserted],
                            [r.vectors for r in upserted],
                            [r.payload for r in upserted],
                            pooled=[r.pooled for r in upserted],
                        )
                    for doc_id, fields in (updated or {}).items():
                        index.update_bits(doc_id, fields)
                except BaseException:
                    self._mark_stale(index)
                    raise
                if not self._index_stale:
                    index.mark_synced(version)
            self._journal(upserted, deleted, updated, version, start_empty=empty_before, index=index)
            return result

    def _mark_stale(self, index: TokenIndex) -> None:
        """The store holds a write the index may hold part of: no version is recorded for the index until a sync
        (the next search's :meth:`refresh`), and the journal, which cannot hold this write, takes no more until
        the next snapshot."""
        log.warning("the search index failed to follow a store write; it is reconciled with the store on next use")
        index.mark_synced(None)  # never a store version: the next refresh syncs
        self._index_stale = True
        self._journal_gap = True
        self._snapshot_stale = True

    def _journal(
        self,
        upserted: Sequence[PageRecord],
        deleted: Sequence[str],
        updated: Mapping[str, Mapping[str, Any]] | None,
        version: str,
        start_empty: bool,
        index: TokenIndex | None = None,
    ) -> None:
        cache = self.cache
        if cache is None or self._journal_gap:
            return
        try:
            if not cache.exists():
                if isinstance(index, TieredIndex):
                    # Its snapshot is small (the pooled vectors): write it now, this write included, so a
                    # killed first ingest restarts from it, not from a rebuild.
                    cache.save(index)
                    self._snapshot_stale = False
                    return
                if not start_empty:
                    return  # the snapshot is written at close (or after the first build)
                cache.save(self._new_index("cpu"))
            cache.record(upserted, deleted, updated, version, index=index)
        except OSError as exc:  # a full disk must not fail the ingest: the cache is only a cache
            log.warning("could not journal a write to the token index cache (%s); it will be rebuilt", exc)
            self._snapshot_stale = True

    # ------------------------------------------------------------------ cache
    def _new_index(self, device: str) -> TokenIndex:
        seg, budget = self.segment_tokens, self.memory_budget_bytes
        if self.tiered:
            root = self.cache.tiers if self.cache is not None else None
            return TieredIndex(
                root, device=device, candidates=self.candidates, segment_tokens=seg, memory_budget_bytes=budget
            )
        return TokenIndex(
            device=device,
            dtype=self.dtype,
            pool_factor=self.pool_factor,
            segment_tokens=seg,
            memory_budget_bytes=budget,
        )

    def _build(self) -> TokenIndex:
        index = self._new_index(self.device)
        total = self.store.count_pages()
        if total:
            log.info("building the search index from the store: %d pages (kept on disk after this)", total)
        index.build(self.store, progress=self.progress)
        self._snapshot_stale = True
        return index

    def _load_cache(self) -> TokenIndex | None:
        cache = self.cache
        if cache is None or not cache.exists():
            return None
        try:
            index = cache.load(
                self.device,
                candidates=self.candidates,
                segment_tokens=self.segment_tokens,
                memory_budget_bytes=self.memory_budget_bytes,
            )
        except IndexBudgetExceeded:
            raise  # a build from the store would not fit either
        except Exception as exc:  # noqa: BLE001 - a stale or corrupt cache is rebuilt, never fatal
            log.warning("ignoring the token index cache in %s (%s); rebuilding from the store", cache.root, exc)
            return None
        if isinstance(index, TieredIndex) != self.tiered or (
            not self.tiered and (index.dtype != self.dtype or index.pool_factor != self.pool_factor)
        ):
            log.info("the token index cache in %s has other settings; rebuilding from the store", cache.root)
            return None
        return index

    def save(self) -> None:
        """Compact the cache into a new snapshot when there is something to compact (failures are logged)."""
        index, cache = self._index, self.cache
        if index is None or cache is None:
            return
        with self._sync_lock:
            journal = cache.journal_bytes()
            outgrown = journal > max(COMPACT_MIN_BYTES, COMPACT_RATIO * cache.snapshot_bytes())
            if not (self._snapshot_stale or not cache.exists() or outgrown):
                return  # the snapshot and its journal are current: a short-lived process leaves them be
            try:
                cache.save(index)
                self._snapshot_stale = False
                # The journal goes on from a snapshot of a reconciled index; a stale one's snapshot records no
                # store version (a restart syncs it), and writes journaled on top would record one.
                self._journal_gap = self._index_stale
            except OSError as exc:
                log.warning("could not write the token index cache to %s: %s", cache.root, exc)

    def close(self) -> None:
        """Save the cache and drop the index (the store belongs to the caller). A later search loads it again,
        from the cache: unloading under a memory budget is a close."""
        self.save()
        if self._index is not None:
            self._index.close()
        self._index = None
