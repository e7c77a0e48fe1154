"""The token index on disk, current after every write: a snapshot plus a journal of the writes since.

Reading a collection's vectors back out of embedded Qdrant is bound by the engine's Python binding, which hands
every vector over as nested lists of floats: measured here, a scroll alone (no conversion) gives about 180
pages/s, and the full build about 150 pages/s (``bench/coldstart.py``). A 100,000-page collection would take 11
minutes to load that way at every start. So the index keeps its own copy, and keeps it current:

- ``snapshot/``: the whole index (``tokens.npy`` fp16 or int8, ``scales.npy`` for int8, ``meta.json`` with point
  ids, lengths, payload bits and the store version it reflects), as :meth:`TokenIndex.save` writes it. Loading it
  memory-maps the tokens (copy-on-write on the CPU): no copy, no parse of the vectors.
- ``journal/000001/`` ...: one segment per write since the snapshot (the pages added, as fp16, with their payload
  bits; the ids removed; the payload fields changed; the store version after the write), each written to a
  temporary folder and renamed into place, so a segment is whole or absent.

:meth:`IndexCache.load` reads the snapshot and replays the journal: the index then reflects the store version
of the last write it saw, so when nothing else wrote since (the normal case: embedded Qdrant belongs to one
process), the live index needs no scan of the store at all. A write the cache missed (the process was killed
between the store write and the journal append) shows as a version difference, and the live index reconciles
it with a payload scan (recovery, not a rebuild). :meth:`IndexCache.save` compacts: a new snapshot, an empty
journal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.types import PageRecord
from retriever.tiered_index import TieredIndex, snapshot_kind
from retriever.token_index import TokenIndex, page_bits

log = logging.getLogger(__name__)

SNAPSHOT = "snapshot"
JOURNAL = "journal"
TIERS = "tiers"


class IndexCache:
    """A token index's files under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.snapshot = self.root / SNAPSHOT
        self.journal = self.root / JOURNAL
        #: a tiered index's token file (:class:`~retriever.tiered_index.TokenFile`)
        self.tiers = self.root / TIERS
        self._next = self._last_segment() + 1

    # ------------------------------------------------------------------ reading
    def exists(self) -> bool:
        return (self.snapshot / "meta.json").is_file()

    def load(
        self,
        device: str,
        candidates: int = 512,
        segment_tokens: int | None = None,
        memory_budget_bytes: int | None = None,
    ) -> TokenIndex:
        """The snapshot with the journal replayed; raises (OSError, ValueError, KeyError) when unusable, and
        :class:`~indexer.errors.IndexBudgetExceeded` when it does not fit ``memory_budget_bytes``.
        ``candidates`` applies to a tiered index; ``segment_tokens`` and the budget as in ``TokenIndex``."""
        metas = [(seg, json.loads((seg / "meta.json").read_text())) for seg in self._segments()]
        sizes = {"segment_tokens": segment_tokens, "memory_budget_bytes": memory_budget_bytes}
        index: TokenIndex
        if snapshot_kind(self.snapshot) == TieredIndex.kind:
            keep = max((s + n for _, m in metas for s, n in m.get("fine_spans") or []), default=0)
            index = TieredIndex.load(
                self.snapshot, device=device, root=self.tiers, candidates=candidates, keep_tokens=keep, **sizes
            )
        else:
            index = TokenIndex.load(self.snapshot, device=device, **sizes)
        added = sum(sum(meta.get("lengths") or []) for _, meta in metas)
        if added:
            index.reserve(added)  # one copy of the mapped snapshot at its final size, not one per growth
        for seg, meta in metas:
            self._replay(index, seg, meta)
        if metas:
            log.info("token index cache: replayed %d journal segment(s) onto the snapshot", len(metas))
        return index

    def _replay(self, index: TokenIndex, seg: Path, meta: dict[str, Any]) -> None:
        if meta.get("deleted"):
            index.remove(meta["deleted"])
        ids: list[str] = meta.get("ids") or []
        if ids and "fine_spans" in meta:  # a tiered index: the tokens are in its token file already
            if not isinstance(index, TieredIndex):
                raise ValueError(f"journal segment {seg.name} belongs to a tiered index")
            pooled = np.load(seg / "pooled.npy")
            bounds = np.cumsum([0, *meta["pooled_lengths"]])
            index.adopt(
                ids,
                int(meta["fine_gen"]),
                [(int(s), int(n)) for s, n in meta["fine_spans"]],
                [pooled[bounds[i] : bounds[i + 1]] for i in range(len(ids))],
                meta["payloads"],
            )
        elif ids:
            tokens = np.load(seg / "tokens.npy")  # fp16: each page is widened on its own by ``add``
            bounds = np.cumsum([0, *meta["lengths"]])
            vectors = [tokens[bounds[i] : bounds[i + 1]] for i in range(len(ids))]
            index.add(ids, vectors, meta["payloads"])
        for doc_id, fields in (meta.get("updated") or {}).items():
            index.update_bits(doc_id, fields)
        index.mark_synced(meta["version"])

    # ------------------------------------------------------------------ writing
    def record(
        self,
        upserted: Sequence[PageRecord],
        deleted: Sequence[str],
        updated: Mapping[str, Mapping[str, Any]] | None,
        version: str,
        index: TokenIndex | None = None,
    ) -> int:
        """Append one write to the journal; returns the bytes it took. Needs a snapshot to apply to.

        With the tiered ``index`` that holds the upserted pages, the segment records where their tokens lie in its
        token file (and their pooled vectors), not the tokens."""
        seg = self.journal / f"{self._next:06d}"
        tmp = self.journal / f".{self._next:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta: dict[str, Any] = {"version": version, "deleted": list(deleted), "updated": dict(updated or {})}
        size = 0
        if upserted and isinstance(index, TieredIndex):
            gen, spans, pooled = index.spans([r.point_id for r in upserted])
            np.save(tmp / "pooled.npy", np.concatenate(pooled))
            size += sum(p.nbytes for p in pooled)
            meta.update(
                ids=[r.point_id for r in upserted],
                lengths=[n for _, n in spans],
                fine_gen=gen,
                fine_spans=spans,
                pooled_lengths=[int(p.shape[0]) for p in pooled],
                payloads=[page_bits(r.payload) for r in upserted],
            )
        elif upserted:
            tokens = np.concatenate([np.asarray(r.vectors, dtype=np.float16) for r in upserted])
            np.save(tmp / "tokens.npy", tokens)
            size += tokens.nbytes
            meta.update(
                ids=[r.point_id for r in upserted],
                lengths=[int(np.asarray(r.vectors).shape[0]) for r in upserted],
                payloads=[page_bits(r.payload) for r in upserted],
            )
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, seg)
        self._next += 1
        return size

    def save(self, index: TokenIndex) -> None:
        """A new snapshot of ``index`` (swapped in whole), then an empty journal."""
        index.save(self.snapshot)
        shutil.rmtree(self.journal, ignore_errors=True)
        if not isinstance(index, TieredIndex):  # the search mode changed: a tiered token file is dead weight
            shutil.rmtree(self.tiers, ignore_errors=True)
        self._next = 1
        for name in ("tokens.npy", "scales.npy", "meta.json"):  # the single-folder layout of colsmol 0.1
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()

    def journal_bytes(self) -> int:
        return sum(f.stat().st_size for seg in self._segments() for f in seg.iterdir())

    def snapshot_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.snapshot.iterdir()) if self.snapshot.is_dir() else 0

    # ------------------------------------------------------------------ helpers
    def _segments(self) -> list[Path]:
        if not self.journal.is_dir():
            return []
        return sorted(p for p in self.journal.iterdir() if p.is_dir() and p.name.isdigit())

    def _last_segment(self) -> int:
        segments = self._segments()
        return int(segments[-1].name) if segments else 0
