"""The token index that follows the store: the one owner of loading, write hooks, sync and the cache file.

Qdrant stays the source of truth; the :class:`~retriever.token_index.TokenIndex` is a device-resident copy of
its page vectors. :class:`LiveIndex` keeps the copy current:

- **Load** (first use): from the cache file under ``cache_dir`` when there is one (then one payload-only
  ``sync`` reconciles it with the store), else built from the store's vectors.
- **Writes in this process** go through :meth:`apply` (the ingest and delete paths call it): the store write
  runs under the sync lock, the same pages are added to / removed from the index, and the store version the
  index reflects is recorded, all before the lock is released. A search therefore never sees a version it
  does not know because of our own writes, and never rescans the store for them.
- **Writes by other processes** (several ``colsmol`` processes on one Qdrant server) are found by comparing
  ``store.version()`` with the recorded one, at most once per ``sync_interval_s`` and under the same lock;
  only a changed version costs a payload-only scan and a fetch of the changed pages. Embedded Qdrant Edge
  belongs to one process, so there the check never finds anything foreign.
- **The cache file** is written on :meth:`close` when the index changed since it was loaded.

A write by another process that lands between our write and our version read is recorded as ours; the next
version change (any later write) reconciles it, since ``sync`` diffs by point id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from indexer.store.base import VectorStore
from indexer.types import PageRecord
from retriever.token_index import TokenIndex

log = logging.getLogger(__name__)
T = TypeVar("T")


class LiveIndex:
    """A :class:`TokenIndex` kept in step with ``store``; see the module docstring.

    ``device``, ``dtype`` and ``pool_factor`` configure the index; ``cache_dir`` (optional) is where its cache
    file lives; ``sync_interval_s`` bounds how often searches look for foreign writes (0: on every search).
    ``index`` adopts an index already built from this store (benchmarks, tests) instead of loading one.
    """

    def __init__(
        self,
        store: VectorStore,
        *,
        device: str = "auto",
        dtype: str = "fp16",
        pool_factor: int = 1,
        cache_dir: Path | None = None,
        sync_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        index: TokenIndex | None = None,
    ) -> None:
        self.store = store
        self.device = device
        self.dtype = dtype
        self.pool_factor = pool_factor
        self.cache_dir = cache_dir
        self.sync_interval_s = float(sync_interval_s)
        self._clock = clock
        self._index: TokenIndex | None = index
        self._load_lock = threading.Lock()
        self._sync_lock = threading.RLock()
        self._last_check = float("-inf")
        self._dirty = False
        #: payload scans run to reconcile with foreign writes (or a stale cache); tests and metrics read it
        self.syncs = 0

    # ------------------------------------------------------------------ reading
    @property
    def loaded(self) -> bool:
        return self._index is not None

    def get(self) -> TokenIndex:
        """The index for a search: loaded on first use, then checked for foreign writes (rate limited)."""
        index = self.load()
        self.refresh()
        return index

    def load(self, progress: Callable[[int, int], None] | None = None) -> TokenIndex:
        """Load the index now if it is not loaded (cache file, else a build from the store)."""
        index = self._index
        if index is not None:
            return index
        with self._load_lock:
            if self._index is None:
                index = self._load_cache() or self._build(progress)
                self._last_check = self._clock()
                self._index = index
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
            self._dirty |= changed
            return changed

    # ------------------------------------------------------------------ writing
    def apply(
        self,
        write: Callable[[], T],
        upserted: Sequence[PageRecord] = (),
        deleted: Sequence[str] = (),
        updated: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> T:
        """Run a store ``write`` and mirror it in the index: ``upserted`` pages added, ``deleted`` ids removed,
        ``updated`` payload fields set on every page of a document (``{doc_id: {"source": ...}}``).

        Pass every write that changes the store's version (page upserts, deletes, document markers, sources),
        so the recorded version stays the store's.
        """
        with self._sync_lock:
            result = write()
            index = self._index
            if index is not None:
                if deleted:
                    index.remove(deleted)
                if upserted:
                    index.add(
                        [r.point_id for r in upserted], [r.vectors for r in upserted], [r.payload for r in upserted]
                    )
                for doc_id, fields in (updated or {}).items():
                    index.update_bits(doc_id, fields)
                index.mark_synced(self.store.version())
                self._dirty = self._dirty or bool(deleted or upserted or updated)
            return result

    # ------------------------------------------------------------------ cache
    def _build(self, progress: Callable[[int, int], None] | None) -> TokenIndex:
        index = TokenIndex(device=self.device, dtype=self.dtype, pool_factor=self.pool_factor)
        index.build(self.store, progress=progress)
        self._dirty = True
        return index

    def _load_cache(self) -> TokenIndex | None:
        cache = self.cache_dir
        if cache is None or not (cache / "meta.json").is_file():
            return None
        try:
            index = TokenIndex.load(cache, device=self.device)
            if index.dtype != self.dtype or index.pool_factor != self.pool_factor:
                log.info("token index cache in %s has other settings; rebuilding from the store", cache)
                return None
            self.syncs += 1
            if index.sync(self.store):
                self._dirty = True
            return index
        except Exception as exc:  # noqa: BLE001 - a stale or corrupt cache is rebuilt, never fatal
            log.warning("ignoring the token index cache in %s (%s); rebuilding from the store", cache, exc)
            return None

    def save(self) -> None:
        """Write the cache file if the index changed since it was loaded (failures are logged, not raised)."""
        index = self._index
        if index is None or self.cache_dir is None or not self._dirty:
            return
        try:
            with self._sync_lock:
                index.save(self.cache_dir)
                self._dirty = False
        except OSError as exc:
            log.warning("could not write the token index cache to %s: %s", self.cache_dir, exc)

    def close(self) -> None:
        """Save the cache and drop the index (the store belongs to the caller)."""
        self.save()
        self._index = None
