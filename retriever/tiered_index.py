"""Tiered search: a small resident index proposes candidates, the full tokens on disk rank them exactly.

:class:`TieredIndex` is a :class:`~retriever.token_index.TokenIndex` whose resident rows are each page's pooled
vectors (:func:`retriever.pooling.prefetch_vectors`: means of 16 consecutive tokens, about 64 a page, the same
vectors the store keeps for prefetch), int8. Every page's full tokens go to a :class:`TokenFile` on local disk,
int8 with per-token scales, memory-mapped. A search:

0. **tier 0** (CPU, with the compiled kernel): MaxSim over the sign bits of the pooled vectors (16 bytes a vector,
   two XOR + POPCNT a pair: :func:`retriever.cpu_maxsim.hamming_maxsim`) ranks every allowed page; the best
   ``sketch_factor x candidates`` go on. Skipped where that would not cut tier 1's work in half;
1. **tier 1**: MaxSim of the query against the pooled vectors (the same kernel as exact search, on 1/16 of the
   tokens) of tier 0's pages, or of every page without tier 0; filters are applied as a page mask before any
   top-k, so a selective filter still yields ``k`` pages; the best ``candidates`` pages go on;
2. **tier 2**: exact MaxSim of the query against the candidates' full tokens, read from the memory-mapped file
   (gathered candidate by candidate, in file order); the best ``k`` are the hits.

Resident memory is the pooled vectors (about 8.5 KB a page at 1,000 tokens), their sign bits (about 1 KB, derived
from them, never saved) plus the page ids and payload bits;
the token file (about 130 KB a page) lives in the OS page cache as far as memory allows and is read from disk
otherwise.

The file is append-only between snapshots. A page added (ingest, a journal replay, a sync) is appended; a page
removed only loses its row. :meth:`save` (the cache's snapshot) records which file and how many tokens of it the
snapshot covers, rewriting the file without the dead pages when they are over a quarter of it; :meth:`load`
truncates the file to what the snapshot covers, so the journal replayed after it appends its pages again and a
write killed half way leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.filters import Filter
from retriever.cpu_maxsim import hamming_maxsim, kernel_available, maxsim_cpu, sign_codes
from retriever.maxsim import DIM, maxsim, pad_queries, quantize_int8, topk
from retriever.pooling import PREFETCH_POOL_FACTOR, prefetch_vectors
from retriever.token_index import ScoredPage, TokenIndex

logger = logging.getLogger(__name__)

#: Candidates per query when none are given: measured by ``bench/scale.py`` (BENCHMARKS.md, tiered search).
DEFAULT_CANDIDATES = 512
#: Tier 0 hands tier 1 this many times ``candidates`` pages (measured by ``bench/scale.py --sweep-sketch``).
SKETCH_FACTOR = 8
#: The token file is rewritten without dead pages on save once they are over this share of it.
FILE_COMPACT_RATIO = 0.25


class TokenFile:
    """Page tokens, int8 ``(T, 128)`` with fp32 scales ``(T,)``, in two append-only files under ``root``.

    ``tokens-<gen>.i8`` and ``scales-<gen>.f32`` are raw rows; ``gen`` changes when :meth:`rewrite` drops dead
    pages. Reads go through a read-only memory map, re-opened when a read reaches past it.
    """

    def __init__(self, root: Path, gen: int = 1, n_tokens: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.gen = gen
        self._lock = threading.Lock()
        self._tok_map: np.ndarray | None = None
        self._sc_map: np.ndarray | None = None
        for path, row in ((self.tokens_path, DIM), (self.scales_path, 4)):
            if n_tokens is None:
                path.touch()
            else:  # a snapshot covers n_tokens: what lies past them is from writes the journal replays
                if not path.exists() or path.stat().st_size < n_tokens * row:
                    raise ValueError(f"token file {path} is shorter than the snapshot says ({n_tokens} tokens)")
                os.truncate(path, n_tokens * row)
        self.n_tokens = self.tokens_path.stat().st_size // DIM

    @property
    def tokens_path(self) -> Path:
        return self.root / f"tokens-{self.gen}.i8"

    @property
    def scales_path(self) -> Path:
        return self.root / f"scales-{self.gen}.f32"

    def append(self, q: np.ndarray, scales: np.ndarray) -> int:
        """Append int8 rows ``q (n, 128)`` and their ``scales (n,)``; returns the first row's index."""
        with self._lock:
            start = self.n_tokens
            with open(self.scales_path, "ab") as f:
                f.write(np.ascontiguousarray(scales, dtype=np.float32).tobytes())
            with open(self.tokens_path, "ab") as f:
                f.write(np.ascontiguousarray(q, dtype=np.int8).tobytes())
            self.n_tokens += q.shape[0]
            return start

    def maps(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """Read-only maps of at least the first ``upto`` rows: ``tokens (n, 128)`` int8, ``scales (n,)``."""
        tok, sc = self._tok_map, self._sc_map
        if tok is None or sc is None or tok.shape[0] < upto:
            with self._lock:
                n = self.n_tokens
                if n == 0:
                    return np.zeros((0, DIM), np.int8), np.zeros(0, np.float32)
                tok = np.memmap(self.tokens_path, dtype=np.int8, mode="r", shape=(n, DIM))
                sc = np.memmap(self.scales_path, dtype=np.float32, mode="r", shape=(n,))
                self._tok_map, self._sc_map = tok, sc
        return tok, sc

    def gather(self, starts: Sequence[int], lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The rows of pages ``[starts[i], starts[i] + lengths[i])`` packed in the given order."""
        if not len(starts):
            return np.zeros((0, DIM), np.int8), np.zeros(0, np.float32)
        tok, sc = self.maps(max(s + n for s, n in zip(starts, lengths, strict=True)))
        self._will_need(starts, lengths)
        return (
            np.concatenate([tok[s : s + n] for s, n in zip(starts, lengths, strict=True)]),
            np.concatenate([sc[s : s + n] for s, n in zip(starts, lengths, strict=True)]),
        )

    def _will_need(self, starts: Sequence[int], lengths: Sequence[int]) -> None:
        """Ask the kernel to read every span now, all at once: pages not in the page cache then arrive in parallel
        reads instead of one page fault after another while copying."""
        if not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(self.tokens_path, os.O_RDONLY)
        except OSError:
            return
        try:
            for s, n in zip(starts, lengths, strict=True):
                os.posix_fadvise(fd, int(s) * DIM, int(n) * DIM, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def rewrite(self, starts: Sequence[int], lengths: Sequence[int]) -> list[int]:
        """Copy the given pages to the next generation's files (the old ones stay until :meth:`drop_old`); returns
        the pages' new starts."""
        new = TokenFile(self.root, self.gen + 1)
        for path in (new.tokens_path, new.scales_path):
            os.truncate(path, 0)
        new.n_tokens = 0
        out = []
        for i in range(0, len(starts), 256):
            s, n = starts[i : i + 256], lengths[i : i + 256]
            q, sc = self.gather(s, n)
            first = new.append(q, sc)
            out.extend((first + np.concatenate([[0], np.cumsum(n)[:-1]])).astype(int).tolist())
        with self._lock:
            self.gen, self.n_tokens = new.gen, new.n_tokens
            self._tok_map = self._sc_map = None
        return out

    def drop_old(self) -> None:
        """Delete every generation but the current one (after a snapshot that names it is in place)."""
        for p in self.root.iterdir():
            stem = p.name.split(".")[0]
            if stem.startswith(("tokens-", "scales-")) and stem.split("-")[-1] != str(self.gen):
                p.unlink(missing_ok=True)

    def nbytes(self) -> int:
        return self.n_tokens * (DIM + 4)


class TieredIndex(TokenIndex):
    """Pooled int8 vectors resident (tier 1), full int8 tokens memory-mapped from ``root`` (tier 2).

    ``root``: the folder of the token file (a temporary folder, removed on :meth:`close`, when None).
    ``candidates``: pages per query that tier 1 hands to tier 2. ``coarse_factor``: tokens per pooled vector
    (:data:`~retriever.pooling.PREFETCH_POOL_FACTOR`, the store's prefetch pooling, so the pooled vectors ingest
    made once serve both). ``device``: where tier 1 is resident and both tiers are scored. ``sketch_factor``: tier
    0 passes ``sketch_factor x candidates`` pages to tier 1 (0 turns tier 0 off).
    """

    kind = "tiered"

    def __init__(
        self,
        root: Path | None = None,
        device: str | torch.device = "auto",
        candidates: int = DEFAULT_CANDIDATES,
        coarse_factor: int = PREFETCH_POOL_FACTOR,
        sketch_factor: int = SKETCH_FACTOR,
        dtype: str = "int8",
        pool_factor: int = 1,
        initial_capacity_tokens: int = 1 << 14,
        **kwargs: Any,
    ) -> None:
        if dtype != "int8" or pool_factor != 1:
            raise ValueError("a tiered index keeps int8 pooled vectors (dtype='int8', pool_factor=1)")
        #: Token file rows a journal after the snapshot points to (set by the cache before :meth:`load`).
        self._keep_tokens = int(kwargs.pop("keep_tokens", 0))
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="colsmol-tiers-")) if root is None else Path(root)
        self.fine = TokenFile(self.root, gen=_current_gen(self.root))
        self.candidates = int(candidates)
        self.coarse_factor = int(coarse_factor)
        self.sketch_factor = int(sketch_factor)
        super().__init__(
            device=device, dtype="int8", pool_factor=1, initial_capacity_tokens=initial_capacity_tokens, **kwargs
        )

    # ------------------------------------------------------------------ storage
    def _reset(self, capacity: int) -> None:
        super()._reset(capacity)
        self._fine_starts: list[int] = []
        self._fine_lengths: list[int] = []
        self._fine_dead = 0
        self._codes = np.zeros((0, 2), dtype=np.uint64)  # sign bits of the resident rows (tier 0)
        self._codes_n = 0  # rows of _codes that are current

    def _catch_up_codes(self) -> np.ndarray:
        """Sign bits of every resident row, computed for the rows appended since the last call (lock held)."""
        n = self._n_tokens
        if self._codes_n < n:
            if len(self._codes) < n:  # a new array: snapshots keep the old one
                grown = np.empty((max(n, len(self._codes) + len(self._codes) // 4), 2), dtype=np.uint64)
                grown[: self._codes_n] = self._codes[: self._codes_n]
                self._codes = grown
            self._codes[self._codes_n : n] = sign_codes(self._tokens[self._codes_n : n])
            self._codes_n = n
        return self._codes[:n]

    def _capacity_for(self, pages: int) -> int:
        return pages * 1100 // self.coarse_factor + 1

    def build(
        self,
        store: Any,
        batch_size: int = 256,
        chunk_pages: int = 256,
        progress: Callable[[int, int], None] | None = None,
    ) -> float:
        """Replace the contents with every page of ``store`` (a new token file generation; the old one goes on the
        next save)."""
        with self._lock:
            self.fine = TokenFile(self.root, self.fine.gen + 1)
        return super().build(store, batch_size=batch_size, chunk_pages=chunk_pages, progress=progress)

    def reserve(self, extra_tokens: int) -> None:
        """``extra_tokens`` counts full tokens; the resident tier holds one pooled vector per ``coarse_factor``."""
        super().reserve(extra_tokens // self.coarse_factor + 1)

    def _resident_rows(self, n_tokens: int) -> int:
        return -(-n_tokens // self.coarse_factor)

    def _budget_fix(self) -> str:
        return "raise COLSMOL_INDEX_MEMORY_GB"

    def _prepare(self, vectors: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for v in vectors:
            a = np.asarray(v)
            if a.ndim != 2 or a.shape[1] != DIM or a.shape[0] == 0:
                raise ValueError(f"page vectors must be (n_tokens>0, {DIM}), got {a.shape}")
            out.append(a)
        return out

    def _pooled(self, vectors: Sequence[np.ndarray], pooled: Sequence[np.ndarray | None] | None) -> list[np.ndarray]:
        given = list(pooled) if pooled is not None else [None] * len(vectors)
        return [
            np.asarray(p, dtype=np.float32) if p is not None else prefetch_vectors(v, self.coarse_factor)
            for v, p in zip(vectors, given, strict=True)
        ]

    def add(
        self,
        point_ids: Sequence[str],
        vectors_list: Sequence[np.ndarray],
        payloads: Sequence[dict[str, Any]] | None = None,
        pooled: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        """Insert or replace pages: full ``vectors_list[i] (n_tokens, 128)`` and, when ingest made them already,
        their ``pooled[i] (n_pooled, 128)`` (else pooled here)."""
        if len(point_ids) != len(vectors_list):
            raise ValueError("add: point_ids and vectors_list differ in length")
        if not point_ids:
            return
        payloads = payloads if payloads is not None else [{}] * len(point_ids)
        full = self._prepare(vectors_list)
        coarse = self._pooled(full, pooled)  # outside the lock: searches go on meanwhile
        with self._lock:
            self._append_tiers(list(point_ids), full, coarse, payloads)
            self._maybe_compact()
            if self._sketch_usable():
                self._catch_up_codes()  # here, not in the next search

    def _append_block(self, point_ids: Sequence[str], vectors: Sequence[np.ndarray], payloads: Sequence[dict]) -> None:
        self._append_tiers(point_ids, vectors, self._pooled(vectors, None), payloads)

    def _append_tiers(
        self,
        point_ids: Sequence[str],
        full: Sequence[np.ndarray],
        coarse: Sequence[np.ndarray],
        payloads: Sequence[dict],
    ) -> None:
        if self._segs is not None:  # refused before the token file grows
            self._check_rows([int(c.shape[0]) for c in coarse])
        lengths = [int(v.shape[0]) for v in full]
        q, sc = quantize_int8(torch.from_numpy(np.concatenate([np.asarray(v, np.float32) for v in full])))
        first = self.fine.append(q.numpy(), sc.numpy())
        starts = (first + np.concatenate([[0], np.cumsum(lengths)[:-1]])).astype(int).tolist()
        super()._append_block(point_ids, coarse, payloads)  # tombstones replaced ids first (their rows stay)
        self._fine_starts.extend(starts)
        self._fine_lengths.extend(lengths)

    def _tombstone(self, pid: str) -> bool:
        row = self._row_of.get(pid)
        if row is not None:
            self._fine_dead += self._fine_lengths[row]
        return super()._tombstone(pid)

    def compact(self) -> None:
        with self._lock:
            live = np.flatnonzero(self._alive[: len(self._point_ids)]).tolist()
            starts = [self._fine_starts[r] for r in live]
            lengths = [self._fine_lengths[r] for r in live]
            dead = self._fine_dead
            super().compact()  # resets the rows; the token file keeps the dead pages until a save rewrites it
            self._fine_starts, self._fine_lengths, self._fine_dead = starts, lengths, dead
            self._codes, self._codes_n = np.zeros((0, 2), dtype=np.uint64), 0

    def spans(self, point_ids: Sequence[str]) -> tuple[int, list[tuple[int, int]], list[np.ndarray]]:
        """Where the given pages lie in the token file, for a journal: ``(gen, [(start, n_tokens)], [pooled
        (n_pooled, 128) float16])``."""
        with self._lock:
            rows = [self._row_of[pid] for pid in point_ids]
            spans = [(self._fine_starts[r], self._fine_lengths[r]) for r in rows]
            pooled = []
            for r in rows:
                tokens, scales = self._page_rows(r)
                assert scales is not None  # int8
                pooled.append((tokens.float() * scales[:, None]).half().cpu().numpy())
            return self.fine.gen, spans, pooled

    def adopt(
        self,
        point_ids: Sequence[str],
        gen: int,
        spans: Sequence[tuple[int, int]],
        pooled: Sequence[np.ndarray],
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        """Add pages whose tokens are in the token file already (a journal replay): no token is copied."""
        with self._lock:
            if gen != self.fine.gen or any(s + n > self.fine.n_tokens for s, n in spans):
                raise ValueError(f"journal spans point outside token file generation {self.fine.gen}")
            super()._append_block(point_ids, [np.asarray(p, np.float32) for p in pooled], payloads)
            self._fine_starts.extend(int(s) for s, _ in spans)
            self._fine_lengths.extend(int(n) for _, n in spans)

    # ------------------------------------------------------------------ reading
    def nbytes(self) -> int:
        """Resident bytes of tiers 0 and 1 (the token file is on disk: :meth:`disk_bytes`)."""
        with self._lock:
            return super().nbytes() + self._codes_n * 16

    def disk_bytes(self) -> int:
        return self.fine.nbytes()

    def get_vectors(self, point_ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """Full vectors ``(n_tokens, 128)`` fp32 (dequantized from the token file) of the ids present."""
        with self._lock:
            rows = [(pid, self._row_of[pid]) for pid in point_ids if pid in self._row_of]
            spans = [(self._fine_starts[r], self._fine_lengths[r]) for _, r in rows]
        tok, sc = self.fine.maps(max((s + n for s, n in spans), default=0))
        return {
            pid: torch.from_numpy(
                np.asarray(tok[s : s + n], np.float32) * np.asarray(sc[s : s + n], np.float32)[:, None]
            )
            for (pid, _), (s, n) in zip(rows, spans, strict=True)
        }

    def score(
        self,
        queries: Any,
        k: int = 10,
        allowed_mask: np.ndarray | None = None,
        where: Filter | Any | None = None,
        query_mask: torch.Tensor | None = None,
        candidates: Sequence[str] | None = None,
    ) -> list[list[ScoredPage]]:
        """Top-``k`` pages per query by exact MaxSim over tier 1's ``max(k, self.candidates)`` best pages.
        Same arguments as :meth:`TokenIndex.score`; restrictions apply in tiers 0 and 1, before their top-k."""
        q, qm = pad_queries(queries, query_mask, device=self.device)
        first_k = max(k, self.candidates)
        if self._sketch_usable():
            first = self._sketched(q, qm, first_k, allowed_mask, where, candidates)
        else:
            first = super().score(
                q, k=first_k, allowed_mask=allowed_mask, where=where, query_mask=qm, candidates=candidates
            )
        return self.rerank(q, qm, first, k)

    def _sketch_usable(self) -> bool:
        """Tier 0 runs on the CPU with the compiled kernel, where it cuts tier 1's pages at least in half."""
        n0 = self.sketch_factor * self.candidates
        on_cpu = self.device.type == "cpu" and self._segs is None and self.backend == "auto" and kernel_available()
        return on_cpu and n0 > 0 and len(self) > 2 * n0

    def _sketched(
        self,
        q: torch.Tensor,
        qm: torch.Tensor,
        first_k: int,
        allowed_mask: np.ndarray | None,
        where: Filter | Any | None,
        candidates: Sequence[str] | None,
    ) -> list[list[ScoredPage]]:
        """Tiers 0 and 1: sign-bit MaxSim over every allowed page, then pooled int8 MaxSim over the union of each
        query's ``sketch_factor x candidates`` best pages; the best ``first_k`` a query go to the rerank."""
        with self._lock:
            codes = self._catch_up_codes()
            snap = self.snapshot()
        allowed = self._allowed(snap, allowed_mask, where, candidates)
        n_allowed = int(allowed.sum())
        if n_allowed == 0:
            return [[] for _ in range(q.shape[0])]
        offsets = snap.offsets.numpy()
        s0 = hamming_maxsim(codes, offsets, q, qm)
        if n_allowed < snap.n_rows:
            s0[:, torch.from_numpy(~allowed)] = float("-inf")
        take = min(self.sketch_factor * self.candidates, n_allowed)
        rows = np.unique(torch.topk(s0, take, dim=1).indices.numpy())  # ascending: memory order
        s1 = maxsim_cpu(q, snap.tokens, snap.offsets, qm, snap.scales, rows=rows)
        vals, idx, valid = topk(s1, min(first_k, len(rows)))
        return [
            [
                ScoredPage(snap.point_ids[rows[c]], float(v), snap.bits[rows[c]])
                for v, c, ok in zip(vals[qi], idx[qi], valid[qi], strict=True)
                if ok
            ]
            for qi in range(vals.shape[0])
        ]

    def rerank(
        self, q: torch.Tensor, qm: torch.Tensor, first: list[list[ScoredPage]], k: int
    ) -> list[list[ScoredPage]]:
        """Exact MaxSim of padded queries ``q (Q, n_q, 128)`` / ``qm (Q, n_q)`` on each query's tier-1 pages."""
        union = sorted({p.point_id for row in first for p in row})
        if not union:
            return [[] for _ in first]
        with self._lock:
            rows = {pid: self._row_of[pid] for pid in union if pid in self._row_of}
            spans = {pid: (self._fine_starts[r], self._fine_lengths[r]) for pid, r in rows.items()}
        ids = sorted(spans, key=lambda pid: spans[pid][0])  # file order: the disk reads run forwards
        if not ids:
            return [[] for _ in first]
        scores = self._score_file_pages(q, qm, [spans[p][0] for p in ids], [spans[p][1] for p in ids])
        col = {pid: i for i, pid in enumerate(ids)}
        out: list[list[ScoredPage]] = []
        for qi, row in enumerate(first):
            mine = [p for p in row if p.point_id in col]
            if not mine:
                out.append([])
                continue
            s = scores[qi, [col[p.point_id] for p in mine]]
            vals, idx, valid = topk(s[None], k)
            out.append(
                [
                    ScoredPage(mine[r].point_id, float(v), mine[r].bits)
                    for v, r, ok in zip(vals[0], idx[0], valid[0], strict=True)
                    if ok
                ]
            )
        return out

    def _score_file_pages(
        self, q: torch.Tensor, qm: torch.Tensor, starts: list[int], lengths: list[int]
    ) -> torch.Tensor:
        """Exact MaxSim of the padded queries ``q`` (Q, q, 128) against the pages at token-file rows ``starts`` of
        ``lengths`` tokens, read in that order: a (Q, pages) score tensor on the CPU."""
        tokens, scales = self.fine.gather(starts, lengths)
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        return maxsim(
            q,
            torch.from_numpy(tokens).to(self.device),
            offsets.to(self.device),
            qm,
            torch.from_numpy(scales).to(self.device),
            backend=self.backend,
        ).cpu()

    def score_exact(
        self, queries: Any, k: int = 10, query_mask: torch.Tensor | None = None, block_pages: int = 1024
    ) -> list[list[ScoredPage]]:
        """Exact MaxSim over every live page's full tokens, streamed from the token file ``block_pages`` pages at a
        time (evaluation and benches: what exact search would answer, without holding the tokens)."""
        q, qm = pad_queries(queries, query_mask, device=self.device)
        with self._lock:
            live = np.flatnonzero(self._alive[: len(self._point_ids)]).tolist()
            pages = sorted(
                ((self._fine_starts[r], self._fine_lengths[r], self._point_ids[r], self._bits[r]) for r in live),
                key=lambda p: p[0],
            )
        best: list[list[ScoredPage]] = [[] for _ in range(q.shape[0])]
        for b in range(0, len(pages), block_pages):
            block = pages[b : b + block_pages]
            scores = self._score_file_pages(q, qm, [p[0] for p in block], [p[1] for p in block])
            vals, idx, valid = topk(scores, k)
            for qi in range(q.shape[0]):
                found = [
                    ScoredPage(block[r][2], float(v), block[r][3])
                    for v, r, ok in zip(vals[qi], idx[qi], valid[qi], strict=True)
                    if ok
                ]
                best[qi] = sorted(best[qi] + found, key=lambda p: -p.score)[:k]
        return best

    # ------------------------------------------------------------------ persistence
    def _extra_meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "coarse_factor": self.coarse_factor,
            "fine_gen": self.fine.gen,
            "fine_n_tokens": self.fine.n_tokens,
            "fine_starts": self._fine_starts,
            "fine_lengths": self._fine_lengths,
        }

    def _before_save(self) -> None:
        """Rewrite the token file without dead pages when they are over a quarter of it (after compact())."""
        total = self.fine.n_tokens
        live = sum(self._fine_lengths)
        if total and (total - live) > FILE_COMPACT_RATIO * total:
            self._fine_starts = self.fine.rewrite(self._fine_starts, self._fine_lengths)
            self._fine_dead = 0
            logger.info("tiered index: token file rewritten, %d of %d tokens kept", live, total)

    def _after_save(self) -> None:
        self.fine.drop_old()

    def _load_extra(self, meta: dict[str, Any]) -> None:
        if meta.get("kind") != self.kind:
            raise ValueError("the snapshot is not a tiered index")
        self.coarse_factor = int(meta["coarse_factor"])
        # Keep what the snapshot and the journal after it point to; the rest is from writes killed half way.
        keep = max(int(meta["fine_n_tokens"]), self._keep_tokens)
        self.fine = TokenFile(self.root, gen=int(meta["fine_gen"]), n_tokens=keep)
        self.fine.drop_old()
        self._fine_starts = [int(s) for s in meta["fine_starts"]]
        self._fine_lengths = [int(n) for n in meta["fine_lengths"]]
        if len(self._fine_starts) != len(self._point_ids):
            raise ValueError("tiered index snapshot is inconsistent (token file spans do not match the pages)")
        self._fine_dead = self.fine.n_tokens - sum(self._fine_lengths)

    def close(self) -> None:
        """Remove the token file when it lives in a temporary folder of this index's own."""
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _current_gen(root: Path) -> int:
    """The newest token file generation in ``root`` (1 when none)."""
    gens = [int(p.stem.split("-")[-1]) for p in Path(root).glob("tokens-*.i8") if p.stem.split("-")[-1].isdigit()]
    return max(gens, default=1)


def snapshot_kind(path: Path) -> str:
    """``"tiered"`` or ``"exact"``: what kind of index the snapshot folder ``path`` holds."""
    return str(json.loads((Path(path) / "meta.json").read_text()).get("kind", "exact"))
