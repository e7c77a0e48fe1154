"""Page multivectors resident on the scoring device: packed tokens + offsets, updated in place.

On the CPU, memory holds ``tokens (capacity, dim)`` (fp16, or int8 with per-token ``scales (capacity,)``) of which
the first ``n_tokens`` rows are used; page ``r`` owns ``starts[r] : starts[r] + lengths[r]``. On an accelerator the
rows live in fixed-size segments instead (:class:`~retriever.segments.TokenSegments`): growing never copies the
index, compacting holds at most one segment more than it, and a memory budget refuses growth before anything is
written (:meth:`TokenIndex.check_room`, :class:`~indexer.errors.IndexBudgetExceeded`). Host memory holds the point
ids and the small payload bits that filters need (doc_id, source, file_name, page_number, metadata).

Writes (``add``/``remove``/``build``/compaction) hold a lock; ``score`` takes a consistent snapshot under the lock
(views of the used prefix of the buffer or of each segment + copies of the small host arrays) and scores outside
it. Appends only write past the snapshot's prefix or into a new buffer or segment, and compaction builds new
buffers or segments, so a snapshot is never mutated.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.errors import IndexBudgetExceeded
from indexer.filters import Filter
from indexer.models.device import resolve_device
from indexer.store.base import STAGE_TEXT, TOKENS_ONLY, VectorStore
from retriever.maxsim import DIM, TritonShape, maxsim, pad_queries, quantize_int8, topk, warm_up
from retriever.pooling import pool_tokens
from retriever.segments import COMPACT_HEADROOM, TokenSegments, segment_tokens_for

logger = logging.getLogger(__name__)

PAGE_FIELDS = ("doc_id", "source", "file_name", "page_number")


def _content(payload: Mapping[str, Any]) -> tuple[Any, Any]:
    """What identifies a page's vectors: the same content hash and ingest time mean the same tokens."""
    return payload.get("content_hash"), payload.get("ingested_at")


def page_bits(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload fields kept in host memory for filters and hits."""
    bits = {f: payload.get(f) for f in PAGE_FIELDS}
    bits["metadata"] = dict(payload.get("metadata") or {})
    bits["content_hash"] = payload.get("content_hash")
    bits["ingested_at"] = payload.get("ingested_at")
    return bits


@dataclass(frozen=True)
class ScoredPage:
    """One ranked page with the payload bits the index keeps for it."""

    point_id: str
    score: float
    bits: dict[str, Any]


#: One scored block of a snapshot: ``tokens (T, dim)``, int8 ``scales (T,)`` or None, ``offsets (pages + 1,)``.
Part = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]


@dataclass
class _Snapshot:
    tokens: torch.Tensor  # the one buffer (empty when the rows are in segments: see ``parts``)
    scales: torch.Tensor | None
    offsets: torch.Tensor
    alive: np.ndarray
    point_ids: list[str]  # shared, read only the first n_rows
    bits: list[dict[str, Any]]
    n_rows: int
    #: the segments' used rows, in row order (None: the rows are in ``tokens``)
    parts: list[Part] | None = None

    def maxsim(self, q: torch.Tensor, qm: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """``(Q, n_rows)`` MaxSim scores of padded queries ``q`` / ``qm`` against every row of the snapshot."""
        if self.parts is None:
            return maxsim(q, self.tokens, self.offsets, qm, self.scales, backend=backend)
        scores = [maxsim(q, tokens, offsets, qm, scales, backend=backend) for tokens, scales, offsets in self.parts]
        return torch.cat(scores, 1) if len(scores) != 1 else scores[0]


#: A snapshot's token file has room for 1/SNAPSHOT_ROOM more tokens after its data, as a sparse hole.
SNAPSHOT_ROOM = 4


def _save_with_room(path: Path, parts: Sequence[torch.Tensor], room: int) -> None:
    """``parts`` (one or more, same dtype and row shape) one after another as an ``.npy`` of their rows + ``room``
    rows whose extra rows are a hole: no disk blocks, read as zeros, and a copy-on-write mapping of the file can take
    ``room`` more rows without moving. Each part is copied to the host on its own (a segment at a time)."""
    rows = sum(int(p.shape[0]) for p in parts)
    if rows + room == 0:
        np.save(path, parts[0].cpu().numpy())  # an empty index (nothing to map)
        return
    first = parts[0].cpu().numpy()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=first.dtype, shape=(rows + room, *first.shape[1:]))
    try:
        at = 0
        for i, part in enumerate(parts):
            data = first if i == 0 else part.cpu().numpy()
            out[at : at + data.shape[0]] = data
            at += data.shape[0]
        out.flush()
    finally:
        del out


class TokenIndex:
    """All page multivectors, resident on ``device``, scored exhaustively by MaxSim.

    ``dtype``: ``"fp16"`` (fp32 on CPU is not needed: fp16 storage, fp32 compute) or ``"int8"`` (per-token
    symmetric). ``pool_factor > 1`` pools each page's tokens at insert time (:func:`retriever.pooling.pool_tokens`).

    ``segment_tokens``: None (default) keeps the rows in one buffer on the CPU (memory-mapped when loaded) and in
    segments of :func:`~retriever.segments.segment_tokens_for` rows on an accelerator; 0 forces one buffer, ``N``
    segments of ``N`` rows. ``memory_budget_bytes`` (None: no limit) bounds the segments: :meth:`check_room`
    refuses growth past it (one buffer is not bounded: on the CPU the operating system pages the index).
    """

    def __init__(
        self,
        device: str | torch.device = "auto",
        dtype: str = "fp16",
        pool_factor: int = 1,
        initial_capacity_tokens: int = 1 << 16,
        compact_ratio: float = 0.25,
        backend: str = "auto",
        segment_tokens: int | None = None,
        memory_budget_bytes: int | None = None,
    ) -> None:
        if dtype not in ("fp16", "int8"):
            raise ValueError(f"TokenIndex dtype must be 'fp16' or 'int8', got {dtype!r}")
        self.device = resolve_device(str(device))
        self.dtype = dtype
        self.pool_factor = int(pool_factor)
        self.compact_ratio = compact_ratio
        self.backend = backend
        self.memory_budget_bytes = memory_budget_bytes
        if segment_tokens is None:  # one buffer on the CPU, segments on an accelerator
            on_cpu = self.device.type == "cpu"
            segment_tokens = 0 if on_cpu else segment_tokens_for(memory_budget_bytes, dtype == "int8")
        #: rows a segment holds; 0: one buffer
        self.segment_tokens = int(segment_tokens)
        self._lock = threading.RLock()
        self._store_version: str | None = None
        self._reset(initial_capacity_tokens)

    # ----------------------------------------------------------------------------------------------- storage

    def _reset(self, capacity: int) -> None:
        capacity = max(1, int(capacity))
        tdt = torch.int8 if self.dtype == "int8" else torch.float16
        #: the rows in segments (None: in ``_tokens``/``_scales``, one buffer)
        self._segs: TokenSegments | None = None
        if self.segment_tokens:
            self._segs = TokenSegments(self.segment_tokens, self.dtype == "int8", self.device, self.memory_budget_bytes)
            capacity = 0  # the buffer stays empty
        self._tokens = torch.empty(capacity, DIM, dtype=tdt, device=self.device)
        self._scales = torch.empty(capacity, dtype=torch.float32, device=self.device) if self.dtype == "int8" else None
        self._n_tokens = 0
        self._starts: list[int] = []
        self._lengths: list[int] = []
        self._alive = np.zeros(1024, dtype=bool)  # per row, with spare capacity (doubling)
        self._point_ids: list[str] = []
        self._bits: list[dict[str, Any]] = []
        self._row_of: dict[str, int] = {}
        self._dead_tokens = 0
        self._offsets_cache: torch.Tensor | None = None
        self._part_offsets: list[torch.Tensor] = []  # per segment, valid while its page count is unchanged
        self._mask_cache: dict[Filter, tuple[list[dict[str, Any]], np.ndarray]] = {}

    def reserve(self, extra_tokens: int) -> None:
        """Make room for ``extra_tokens`` more tokens now, exactly (one copy), instead of growing while adding.

        Replaying a cache journal onto a memory-mapped snapshot calls this once with the journal's size: the
        snapshot is copied into memory once, at its final size, not grown by a quarter. Segments need no room made.
        """
        with self._lock:
            if self._segs is None:
                self._ensure_capacity(extra_tokens, exact=True)

    def _resident_rows(self, n_tokens: int) -> int:
        """Rows a page of ``n_tokens`` tokens takes in the index at most (pooling makes fewer)."""
        return -(-n_tokens // self.pool_factor) if self.pool_factor > 1 else n_tokens

    def room_for(self, lengths: Sequence[int]) -> bool:
        """Whether pages of ``lengths`` tokens each can be added within the memory budget (always, without one or
        in one buffer)."""
        with self._lock:
            return self._segs is None or self._segs.fits([self._resident_rows(n) for n in lengths])

    def check_room(self, lengths: Sequence[int]) -> None:
        """Raise :class:`~indexer.errors.IndexBudgetExceeded` unless pages of ``lengths`` tokens each can be added
        within the memory budget; compacts first when dropping the removed pages would make the room."""
        with self._lock:
            self._check_rows([self._resident_rows(n) for n in lengths])

    def _check_rows(self, rows: Sequence[int]) -> None:
        """:meth:`check_room` for pages of ``rows`` rows in the index (lock held)."""
        segs = self._segs
        if segs is None or segs.fits(rows):
            return
        if self._dead_tokens:  # the removed pages' rows are still held: dropping them may make the room
            self.compact()
            segs = self._segs
            assert segs is not None
            if segs.fits(rows):
                return
        raise IndexBudgetExceeded(
            pages=len(self._row_of) + len(rows),
            need_bytes=segs.bytes_after(rows) + COMPACT_HEADROOM * segs.segment_bytes,
            budget_bytes=int(segs.budget_bytes or 0),
            device=str(self.device),
            fix=self._budget_fix(),
        )

    def _budget_fix(self) -> str:
        """What to change when the index does not fit its budget."""
        return "search this collection tiered (COLSMOL_SEARCH_MODE=tiered) or raise COLSMOL_INDEX_MEMORY_GB"

    def _ensure_capacity(self, extra: int, exact: bool = False) -> None:
        need = self._n_tokens + extra
        cap = self._tokens.shape[0]
        if need <= cap:
            return
        # Grow by a quarter, not double: the index is most of a process's memory (a 10,000-page index is
        # 2.5 GB), and a snapshot loaded from the cache is mapped at exactly its size.
        new_cap = need if exact else max(need, cap + cap // 4)
        new = torch.empty(new_cap, DIM, dtype=self._tokens.dtype, device=self.device)
        new[: self._n_tokens] = self._tokens[: self._n_tokens]
        self._tokens = new
        if self._scales is not None:
            ns = torch.empty(new_cap, dtype=torch.float32, device=self.device)
            ns[: self._n_tokens] = self._scales[: self._n_tokens]
            self._scales = ns

    def _prepare(self, vectors: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for v in vectors:
            a = np.asarray(v)
            if a.dtype != np.float16 or self.pool_factor > 1:  # fp16 (a cache journal) is stored as it is
                a = np.asarray(a, dtype=np.float32)
            if a.ndim != 2 or a.shape[1] != DIM or a.shape[0] == 0:
                raise ValueError(f"page vectors must be (n_tokens>0, {DIM}), got {a.shape}")
            if self.pool_factor > 1:
                a = pool_tokens(a, self.pool_factor)
            out.append(a)
        return out

    def _append_block(self, point_ids: Sequence[str], vectors: Sequence[np.ndarray], payloads: Sequence[dict]) -> None:
        """Append already prepared pages (lock held). Existing ids are tombstoned first (upsert)."""
        lengths = [int(v.shape[0]) for v in vectors]
        if self._segs is not None:  # refused before anything changes
            self._check_rows(lengths)
        for pid in point_ids:
            self._tombstone(pid)
        total = sum(lengths)
        arr = np.concatenate(vectors, 0) if len(vectors) > 1 else vectors[0]
        if self._segs is not None:
            starts = self._segs.place(lengths, len(self._point_ids))
            for seg, off, a, b in self._segs.runs(starts, lengths):
                part = torch.from_numpy(arr[a:b]).to(self.device, non_blocking=True)
                if self.dtype == "int8":
                    self._segs.write(seg, off, *quantize_int8(part))
                else:
                    self._segs.write(seg, off, part.half())
            self._add_rows(point_ids, starts, lengths, payloads)
            self._n_tokens += total
            return
        self._ensure_capacity(total)
        s0 = self._n_tokens
        if self._scales is not None:  # int8
            q, sc = quantize_int8(torch.from_numpy(arr).to(self.device, non_blocking=True))
            self._tokens[s0 : s0 + total] = q
            self._scales[s0 : s0 + total] = sc
        elif self.device.type == "cpu":
            # numpy's copy, not torch's: 3-4x faster into the copy-on-write mapping of a loaded snapshot (measured)
            self._tokens[s0 : s0 + total].numpy()[...] = arr
        else:
            self._tokens[s0 : s0 + total] = torch.from_numpy(arr).to(self.device, non_blocking=True).half()
        self._add_rows(point_ids, (s0 + np.concatenate([[0], np.cumsum(lengths)[:-1]])).tolist(), lengths, payloads)
        self._n_tokens = s0 + total

    def _add_rows(
        self, point_ids: Sequence[str], starts: Sequence[int], lengths: Sequence[int], payloads: Sequence[dict]
    ) -> None:
        """The host side of appended pages: rows, ids, payload bits (lock held)."""
        r0 = len(self._point_ids)
        if r0 + len(point_ids) > len(self._alive):
            grown = np.zeros(max(2 * len(self._alive), r0 + len(point_ids)), dtype=bool)
            grown[:r0] = self._alive[:r0]
            self._alive = grown
        self._alive[r0 : r0 + len(point_ids)] = True
        for pid, start, n, payload in zip(point_ids, starts, lengths, payloads, strict=True):
            self._row_of[pid] = len(self._point_ids)
            self._point_ids.append(pid)
            self._starts.append(int(start))
            self._lengths.append(n)
            self._bits.append(page_bits(payload or {}))
        self._offsets_cache = None

    def _tombstone(self, pid: str) -> bool:
        row = self._row_of.pop(pid, None)
        if row is None:
            return False
        self._alive[row] = False
        self._dead_tokens += self._lengths[row]
        return True

    def _maybe_compact(self) -> None:
        if self._n_tokens and self._dead_tokens > self.compact_ratio * self._n_tokens:
            self.compact()

    def compact(self) -> None:
        """Drop tombstoned pages: copy the live pages into fresh buffers, or segment by segment into fresh segments
        (old snapshots stay valid)."""
        with self._lock:
            live = np.flatnonzero(self._alive[: len(self._point_ids)]).tolist()
            total = sum(self._lengths[r] for r in live)
            lengths = [self._lengths[r] for r in live]
            if self._segs is not None:
                self._starts = self._segs.compact([self._starts[r] for r in live], lengths)
                self._part_offsets = []
                self._lengths = lengths
                self._compacted(live, total)
                return
            idx = (
                torch.cat([torch.arange(self._starts[r], self._starts[r] + self._lengths[r]) for r in live])
                if live
                else torch.empty(0, dtype=torch.int64)
            ).to(self.device)
            cap = max(1 << 16, int(total * 1.25))
            tokens = torch.empty(cap, DIM, dtype=self._tokens.dtype, device=self.device)
            tokens[:total] = self._tokens.index_select(0, idx)
            scales = None
            if self._scales is not None:
                scales = torch.empty(cap, dtype=torch.float32, device=self.device)
                scales[:total] = self._scales.index_select(0, idx)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist() if live else []
            self._tokens, self._scales = tokens, scales
            self._starts, self._lengths = starts, lengths
            self._compacted(live, total)

    def _compacted(self, live: list[int], total: int) -> None:
        """The host side of a compaction that kept rows ``live`` (``total`` tokens), now rows ``0, 1, ...``."""
        self._point_ids = [self._point_ids[r] for r in live]
        self._bits = [self._bits[r] for r in live]
        self._mask_cache = {}
        self._alive = np.ones(max(1024, 2 * len(live)), dtype=bool)
        self._row_of = {pid: i for i, pid in enumerate(self._point_ids)}
        self._n_tokens = total
        self._dead_tokens = 0
        self._offsets_cache = None
        logger.debug("compacted token index to %d pages, %d tokens", len(live), total)

    # ----------------------------------------------------------------------------------------------- public API

    def __len__(self) -> int:
        with self._lock:
            return len(self._row_of)

    def warm_up(self) -> dict[TritonShape, bool]:
        """Compile the fused MaxSim kernel for the common query shapes now (:func:`retriever.maxsim.warm_up`), so a
        user's first search does not wait for it; a no-op off CUDA or with a fixed ``backend``."""
        if self.backend != "auto" or self.device.type != "cuda":
            return {}
        t0 = time.perf_counter()
        verdicts = warm_up(self.device, self.dtype == "int8")
        logger.info("MaxSim warm-up: %d query shapes in %.1f s", len(verdicts), time.perf_counter() - t0)
        return verdicts

    @property
    def n_tokens(self) -> int:
        """Tokens of live pages."""
        with self._lock:
            return self._n_tokens - self._dead_tokens

    def nbytes(self) -> int:
        """Device bytes of the used token rows (plus scales); in segments, of the segments held."""
        with self._lock:
            if self._segs is not None:
                return self._segs.nbytes()
            per = DIM * self._tokens.element_size() + (4 if self._scales is not None else 0)
            return self._n_tokens * per

    def point_ids(self) -> list[str]:
        with self._lock:
            return [p for p, a in zip(self._point_ids, self._alive, strict=False) if a]

    def __contains__(self, point_id: str) -> bool:
        with self._lock:
            return point_id in self._row_of

    def payload_bits(self, point_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._row_of.get(point_id)
            return None if row is None else self._bits[row]

    def update_bits(self, doc_id: str, fields: Mapping[str, Any]) -> int:
        """Set payload ``fields`` (``source``, ``file_name``, ...) on every resident page of ``doc_id``; returns how
        many pages. Filters are re-evaluated afterwards (cached masks are dropped)."""
        keep = {k: v for k, v in fields.items() if k in PAGE_FIELDS or k == "metadata"}
        with self._lock:
            rows = [r for pid, r in self._row_of.items() if self._bits[r].get("doc_id") == doc_id]
            for r in rows:
                self._bits[r] = {**self._bits[r], **keep}
            if rows:
                self._mask_cache.clear()
            return len(rows)

    def get_vectors(self, point_ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """Resident vectors ``(n_tokens, dim)`` (fp16, or dequantized fp32 for int8) of the ids present."""
        with self._lock:
            out = {}
            for pid in point_ids:
                row = self._row_of.get(pid)
                if row is None:
                    continue
                t, sc = self._page_rows(row)
                out[pid] = t.float() * sc[:, None] if sc is not None else t
            return out

    def _page_rows(self, row: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row ``row``'s tokens (a view) and their int8 scales (lock held)."""
        s, n = self._starts[row], self._lengths[row]
        if self._segs is not None:
            return self._segs.view(s, n)
        return self._tokens[s : s + n], None if self._scales is None else self._scales[s : s + n]

    def add(
        self,
        point_ids: Sequence[str],
        vectors_list: Sequence[np.ndarray],
        payloads: Sequence[dict[str, Any]] | None = None,
        pooled: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        """Insert or replace pages: ``vectors_list[i]`` is ``(n_tokens, dim)`` float32 for ``point_ids[i]``.
        ``pooled`` (the pages' prefetch vectors, when made already) serves index kinds that keep them."""
        if len(point_ids) != len(vectors_list):
            raise ValueError("add: point_ids and vectors_list differ in length")
        if not point_ids:
            return
        payloads = payloads if payloads is not None else [{}] * len(point_ids)
        prepared = self._prepare(vectors_list)
        with self._lock:
            self._append_block(list(point_ids), prepared, payloads)
            self._maybe_compact()

    def remove(self, point_ids: Iterable[str]) -> int:
        """Tombstone pages by id (compacting when over ``compact_ratio`` dead); returns how many were present."""
        with self._lock:
            n = sum(self._tombstone(pid) for pid in point_ids)
            if n:
                self._maybe_compact()
            return n

    def _capacity_for(self, pages: int) -> int:
        """Token rows ``pages`` pages need, to size a build's buffer once (ColSmol pages are about 1,100 tokens)."""
        est = pages * 1100
        return est // self.pool_factor + 1 if self.pool_factor > 1 else est

    def build(
        self,
        store: VectorStore,
        batch_size: int = 256,
        chunk_pages: int = 256,
        progress: Callable[[int, int], None] | None = None,
    ) -> float:
        """Replace the contents with every page of ``store``; returns pages/s.

        Pages are gathered on the host in chunks of ``chunk_pages`` and appended with one copy per chunk; the device
        buffer is pre-sized from ``store.count_pages()``. ``progress(done, total)`` is called after every chunk.
        """
        t0 = time.perf_counter()
        version = store.version()
        total = int(store.count_pages())
        est = self._capacity_for(total)
        with self._lock:
            self._reset(est or (1 << 16))
            ids: list[str] = []
            vecs: list[np.ndarray] = []
            pays: list[dict[str, Any]] = []
            n_pages = 0
            for page in store.iter_pages(batch_size=batch_size, vectors=TOKENS_ONLY):
                if page.tokens is None:
                    if page.payload.get("stage") == STAGE_TEXT:
                        continue  # text only so far: found by the text side until its embedding is stored
                    raise ValueError(f"store page {page.point_id} came without vectors")
                ids.append(page.point_id)
                vecs.append(page.tokens)
                pays.append(page.payload)
                if len(ids) >= chunk_pages:
                    self._append_block(ids, self._prepare(vecs), pays)
                    n_pages += len(ids)
                    ids, vecs, pays = [], [], []
                    if progress is not None:
                        progress(n_pages, total)
            if ids:
                self._append_block(ids, self._prepare(vecs), pays)
                n_pages += len(ids)
            self._maybe_compact()
            self._store_version = version
        if progress is not None:
            progress(n_pages, total)
        dt = time.perf_counter() - t0
        rate = n_pages / dt if dt > 0 else float("inf")
        logger.info(
            "token index built: %d pages, %d tokens in %.2f s (%.0f pages/s)", n_pages, self._n_tokens, dt, rate
        )
        return rate

    def save(self, path: str | Path) -> None:
        """Write a compacted copy to directory ``path`` (``tokens.npy``, ``scales.npy``, ``meta.json``).

        Rebuilding from Qdrant is bound by converting its float lists (about 100 pages/s measured from Edge), so a
        server can start from this cache and then :meth:`sync` (a payload-only scan) instead of :meth:`build`.
        """
        import json
        import os
        import shutil

        final = Path(path)
        # Written beside the target and swapped in, so a crash mid-save leaves the old cache or none.
        path = final.with_name(final.name + ".tmp")
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.compact()
            self._before_save()
            n = self._n_tokens
            tokens, scales = [self._tokens[:n]], None if self._scales is None else [self._scales[:n]]
            if self._segs is not None and self._segs.tokens:  # compacted: the used rows of each are packed pages
                tokens = [t for t, _, _, _ in self._segs.parts()]
                scales = None if self._scales is None else [sc for _, sc, _, _ in self._segs.parts() if sc is not None]
            _save_with_room(path / "tokens.npy", tokens, n // SNAPSHOT_ROOM)
            if scales is not None:
                _save_with_room(path / "scales.npy", scales, n // SNAPSHOT_ROOM)
            meta = {
                "format": 1,
                "dtype": self.dtype,
                "pool_factor": self.pool_factor,
                "n_tokens": n,
                "store_version": self._store_version,
                "point_ids": self._point_ids,
                "lengths": self._lengths,
                "bits": self._bits,
                **self._extra_meta(),
            }
        (path / "meta.json").write_text(json.dumps(meta))
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(path, final)
        shutil.rmtree(old, ignore_errors=True)
        self._after_save()

    # Persistence hooks of index kinds that keep more than the resident rows (retriever.tiered_index).
    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def _before_save(self) -> None:
        pass

    def _after_save(self) -> None:
        pass

    def _load_extra(self, meta: dict[str, Any]) -> None:
        if meta.get("kind", "exact") != "exact":
            raise ValueError(f"the snapshot holds a {meta.get('kind')} index, not an exact one")

    def close(self) -> None:
        """Release what the index holds besides memory (nothing here; a tiered index's temporary token file)."""

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", **kwargs: Any) -> TokenIndex:
        """Read an index written by :meth:`save` onto ``device``; call :meth:`sync` with the store afterwards.

        On the CPU the token file is memory-mapped copy-on-write, not read: start-up costs no copy, pages are
        read as the first searches touch them. The file has room for a quarter more tokens (a sparse hole on
        disk), so pages added after the load (a journal replay, the next ingest) are written into the private
        mapping, costing memory for themselves only; a write past that room moves the index to memory.

        Into segments (an accelerator), the mapped file is copied a segment at a time: no full-size copy on the host
        or the device. A snapshot larger than the memory budget raises :class:`~indexer.errors.IndexBudgetExceeded`
        before any segment is allocated.
        """
        import json

        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        idx = cls(device=device, dtype=meta["dtype"], pool_factor=meta["pool_factor"], **kwargs)
        on_cpu = idx.device.type == "cpu"
        mapped = on_cpu or idx.segment_tokens > 0
        tokens = torch.from_numpy(np.load(path / "tokens.npy", mmap_mode="c" if mapped else None))
        n = int(meta.get("n_tokens", tokens.shape[0]))  # snapshots before the spare room: exactly full
        lengths = [int(k) for k in meta["lengths"]]
        if sum(lengths) != n or n > tokens.shape[0] or len(lengths) != len(meta["point_ids"]):
            raise ValueError(f"token index cache {path} is inconsistent (lengths do not match tokens)")
        scales = None
        if idx.dtype == "int8":
            scales = torch.from_numpy(np.load(path / "scales.npy", mmap_mode="c" if mapped else None))
            if scales.shape[0] < n:
                raise ValueError(f"token index cache {path} is inconsistent (fewer scales than tokens)")
        with idx._lock:
            idx._reset(1)
            if idx._segs is not None:
                idx._check_rows(lengths)
                starts = idx._segs.place(lengths, 0)
                for seg, off, a, b in idx._segs.runs(starts, lengths):
                    part_scales = None if scales is None else scales[a:b].to(idx.device)
                    idx._segs.write(seg, off, tokens[a:b].to(idx.device), part_scales)
            else:
                if on_cpu and n:
                    idx._tokens = tokens  # the mapping, spare room included: appends write into it until it is full
                else:
                    idx._reset(max(1, n))
                    idx._tokens[:n] = tokens[:n].to(idx.device)
                if scales is not None:
                    if on_cpu and n:
                        idx._scales = scales[: tokens.shape[0]]
                    else:
                        assert idx._scales is not None
                        idx._scales[:n] = scales[:n].to(idx.device)
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist() if lengths else []
            idx._n_tokens = n
            idx._lengths = lengths
            idx._starts = starts
            idx._point_ids = list(meta["point_ids"])
            idx._bits = list(meta["bits"])
            idx._alive = np.ones(max(1024, 2 * len(idx._point_ids)), dtype=bool)
            idx._row_of = {pid: i for i, pid in enumerate(idx._point_ids)}
            idx._store_version = meta["store_version"]
            idx._load_extra(meta)
        return idx

    @classmethod
    def from_store(cls, store: VectorStore, **kwargs: Any) -> TokenIndex:
        idx = cls(**kwargs)
        idx.build(store)
        return idx

    @property
    def store_version(self) -> str | None:
        return self._store_version

    def mark_synced(self, version: str | None) -> None:
        """Record that the index reflects ``version`` of the store (after in-process add/remove)."""
        with self._lock:
            self._store_version = version

    def sync(self, store: VectorStore, version: str | None = None) -> bool:
        """Bring the index in line with ``store`` when its version moved (another process wrote).

        Diffs by point ids over a payload-only scan: pages missing from the store are removed; pages new to the
        index, or rewritten under the same id (``content_hash``/``ingested_at`` changed), are fetched by id and
        added. ``version`` is the store version the caller just read (read here when None). Returns True when
        anything changed.
        """
        version = store.version() if version is None else version
        with self._lock:
            if version == self._store_version:
                return False
            known = {pid: self._bits[row] for pid, row in self._row_of.items()}
        # Text-only pages have no vectors yet: they join the index when their embedding is stored.
        fresh = {p.point_id: p.payload for p in store.iter_pages(vectors=()) if p.payload.get("stage") != STAGE_TEXT}
        gone = set(known) - set(fresh)
        changed = sorted(pid for pid, p in fresh.items() if pid not in known or _content(known[pid]) != _content(p))
        # Same vectors, other payload (a document renamed or a copy gone): the bits change, not the tokens.
        moved = {
            pid: page_bits(p)
            for pid, p in fresh.items()
            if pid in known and _content(known[pid]) == _content(p) and page_bits(p) != known[pid]
        }
        if gone:
            self.remove(gone)
        if changed:
            got = store.get_vectors(changed)
            ids = [pid for pid in changed if pid in got]
            self.add(ids, [got[pid] for pid in ids], [fresh[pid] for pid in ids])
        with self._lock:
            for pid, bits in moved.items():
                row = self._row_of.get(pid)
                if row is not None:
                    self._bits[row] = bits
            if moved:
                self._mask_cache.clear()
            self._store_version = version
        logger.info(
            "token index sync: %d removed, %d added/refreshed, %d relabelled", len(gone), len(changed), len(moved)
        )
        return bool(gone or changed or moved)

    # ----------------------------------------------------------------------------------------------- scoring

    def snapshot(self) -> _Snapshot:
        with self._lock:
            if self._segs is not None:
                return self._segment_snapshot(self._segs)
            if self._offsets_cache is None or self._offsets_cache.numel() != len(self._starts) + 1:
                # rows are packed back to back (append-only, compaction repacks), so offsets = starts + end
                off = np.empty(len(self._starts) + 1, dtype=np.int64)
                off[:-1] = self._starts
                off[-1] = self._n_tokens
                self._offsets_cache = torch.from_numpy(off).to(self.device)
            n = len(self._point_ids)
            # point_ids/bits are append-only between compactions (which build new lists): sharing the list
            # objects is safe as long as readers only look at the first n rows.
            return _Snapshot(
                tokens=self._tokens[: self._n_tokens],
                scales=None if self._scales is None else self._scales[: self._n_tokens],
                offsets=self._offsets_cache,
                alive=self._alive[:n].copy(),
                point_ids=self._point_ids,
                bits=self._bits,
                n_rows=n,
            )

    def _segment_snapshot(self, segs: TokenSegments) -> _Snapshot:
        """:meth:`snapshot` of rows in segments (lock held): a view of each segment's used rows and its offsets,
        which change only for the last segment (and after a compaction)."""
        n = len(self._point_ids)
        parts: list[Part] = []
        seg_parts = segs.parts()
        for i, (tokens, scales, r0, used) in enumerate(seg_parts):
            r1 = seg_parts[i + 1][2] if i + 1 < len(seg_parts) else n
            if i >= len(self._part_offsets) or self._part_offsets[i].numel() != r1 - r0 + 1:
                off = np.empty(r1 - r0 + 1, dtype=np.int64)
                off[:-1] = self._starts[r0:r1]
                off[:-1] -= i * segs.rows
                off[-1] = used
                del self._part_offsets[i:]
                self._part_offsets.append(torch.from_numpy(off).to(self.device))
            parts.append((tokens, scales, self._part_offsets[i]))
        return _Snapshot(
            tokens=self._tokens[:0],
            scales=None if self._scales is None else self._scales[:0],
            offsets=torch.zeros(1, dtype=torch.int64, device=self.device),
            alive=self._alive[:n].copy(),
            point_ids=self._point_ids,
            bits=self._bits,
            n_rows=n,
            parts=parts,
        )

    def _where_mask(self, snap: _Snapshot, where: Filter) -> np.ndarray:
        """Filter mask over the snapshot's rows, cached per filter: rows' bits never change once appended (until a
        compaction builds a new list), so only rows appended since the last call are evaluated."""
        cached = self._mask_cache.get(where)
        if cached is not None and cached[0] is snap.bits and cached[1].shape[0] <= snap.n_rows:
            done = cached[1]
            if done.shape[0] < snap.n_rows:
                done = np.concatenate([done, where.mask(snap.bits[done.shape[0] : snap.n_rows])])
        else:
            done = where.mask(snap.bits[: snap.n_rows])
        if len(self._mask_cache) > 64:
            self._mask_cache.clear()
        self._mask_cache[where] = (snap.bits, done)
        return done[: snap.n_rows]

    def _allowed(
        self,
        snap: _Snapshot,
        allowed_mask: np.ndarray | None,
        where: Filter | Mapping[str, Any] | None,
        candidates: Sequence[str] | None,
    ) -> np.ndarray:
        """The snapshot's rows a search may return: alive, and within every restriction given (see :meth:`score`)."""
        P = snap.n_rows
        allowed = snap.alive.copy()
        if allowed_mask is not None:
            am = np.asarray(allowed_mask, dtype=bool)
            live_rows = np.flatnonzero(snap.alive)
            if am.shape != (len(live_rows),):
                raise ValueError(f"allowed_mask: expected ({len(live_rows)},) over point_ids(), got {am.shape}")
            allowed[live_rows] &= am
        flt = Filter.parse(where) if where is not None else None
        if flt:
            allowed &= self._where_mask(snap, flt)
        if candidates is not None:
            cand = set(candidates)
            allowed &= np.fromiter((p in cand for p in snap.point_ids[:P]), dtype=bool, count=P)
        return allowed

    def score(
        self,
        queries: Any,
        k: int = 10,
        allowed_mask: np.ndarray | None = None,
        where: Filter | Mapping[str, Any] | None = None,
        query_mask: torch.Tensor | None = None,
        candidates: Sequence[str] | None = None,
    ) -> list[list[ScoredPage]]:
        """Top-``k`` pages per query, best first.

        ``queries``: one ``(n_q, dim)`` array, a list of them, or a padded ``(Q, n_q, dim)`` tensor (+``query_mask``).
        Restrict pages with ``where`` (a :class:`~indexer.filters.Filter`), ``allowed_mask`` (bool over
        :meth:`point_ids` order at call time) or ``candidates`` (point ids). Restrictions apply before top-k.
        """
        snap = self.snapshot()
        q, qm = pad_queries(queries, query_mask, device=self.device)
        if snap.n_rows == 0 or not snap.alive.any():
            return [[] for _ in range(q.shape[0])]
        allowed = self._allowed(snap, allowed_mask, where, candidates)
        scores = snap.maxsim(q, qm, self.backend)
        vals, idx, valid = topk(scores, k, None if allowed.all() else torch.from_numpy(allowed))
        out: list[list[ScoredPage]] = []
        for qi in range(vals.shape[0]):
            out.append(
                [
                    ScoredPage(snap.point_ids[r], float(s), snap.bits[r])
                    for s, r, ok in zip(vals[qi], idx[qi], valid[qi], strict=True)
                    if ok
                ]
            )
        return out
