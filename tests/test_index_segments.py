"""The token index in fixed-size segments (retriever/segments.py), the layout it uses on an accelerator, forced
here on the CPU with segments of a few pages: the same scores as one buffer, growth that never copies a segment,
a compaction that holds at most one segment more than the index, save/load, and the device-memory budget through
LiveIndex over a real Qdrant Edge store (a refused write changes nothing; a failed index write is reconciled).
"""

from __future__ import annotations

import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from indexer.errors import IndexBudgetExceeded, for_interface
from indexer.store.edge import EdgeStore
from indexer.types import PageRecord
from retriever.live_index import LiveIndex
from retriever.pooling import prefetch_vectors
from retriever.segments import TokenSegments, segment_tokens_for
from retriever.tiered_index import TieredIndex
from retriever.token_index import TokenIndex
from testkit.corpus import random_pages, random_queries

SEG = 128  # rows a segment holds: about four pages of 20 to 40 tokens


def payload(i: int) -> dict[str, Any]:
    return {
        "kind": "page",
        "doc_id": f"doc{i % 7}",
        "source": f"/corpus/doc{i % 7}.pdf",
        "file_name": f"doc{i % 7}.pdf",
        "page_number": i // 7 + 1,
        "page_count": 20,
        "width": 100,
        "height": 100,
        "content_hash": f"h{i}",
        "ingested_at": "2026-12-05T00:00:00Z",
        "metadata": {"lang": "en" if i % 3 else "fr"},
    }


def pid(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"p{i}"))


def ranked(rows: list) -> list[list[tuple[str, float]]]:
    return [[(p.point_id, p.score) for p in row] for row in rows]


def assert_same_results(a: list, b: list) -> None:
    """Same pages in the same order with the same scores (to float rounding of a differently blocked GEMM)."""
    assert [[p for p, _ in row] for row in ranked(a)] == [[p for p, _ in row] for row in ranked(b)]
    for ra, rb in zip(ranked(a), ranked(b), strict=True):
        np.testing.assert_allclose([s for _, s in ra], [s for _, s in rb], rtol=1e-5, atol=1e-5)


def both(dtype: str) -> tuple[TokenIndex, TokenIndex]:
    flat = TokenIndex(device="cpu", dtype=dtype)
    segmented = TokenIndex(device="cpu", dtype=dtype, segment_tokens=SEG)
    assert flat._segs is None and segmented._segs is not None
    return flat, segmented


def held_segments(index: TokenIndex) -> list[torch.Tensor]:
    assert index._segs is not None
    return list(index._segs.tokens)


# ------------------------------------------------------------------------------------------------ scores
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_segments_score_like_one_buffer(dtype: str) -> None:
    """Random pages added in uneven batches, upserted, removed, compacted: every restriction of score() gives what
    one buffer gives, and a page's vectors read back the same."""
    pages = random_pages(60, seed=3, lo=20, hi=40)
    queries = random_queries(4, seed=4)
    flat, seg = both(dtype)
    for lo, hi in ((0, 1), (1, 9), (9, 10), (10, 33), (33, 60)):
        for index in (flat, seg):
            index.add([pid(i) for i in range(lo, hi)], pages[lo:hi], [payload(i) for i in range(lo, hi)])
    assert len(held_segments(seg)) > 10  # the premise: many segments, pages at their boundaries

    def check() -> None:
        assert flat.point_ids() == seg.point_ids() and flat.n_tokens == seg.n_tokens
        assert_same_results(flat.score(queries, k=12), seg.score(queries, k=12))
        assert_same_results(flat.score(queries, k=60), seg.score(queries, k=60))
        where = {"doc_id": ["doc2", "doc5"], "metadata.lang": "en"}
        assert_same_results(flat.score(queries, k=5, where=where), seg.score(queries, k=5, where=where))
        mask = np.arange(len(flat)) % 4 == 1
        assert_same_results(flat.score(queries, k=6, allowed_mask=mask), seg.score(queries, k=6, allowed_mask=mask))
        cand = [pid(i) for i in range(0, 60, 5)]
        assert_same_results(flat.score(queries, k=4, candidates=cand), seg.score(queries, k=4, candidates=cand))
        some = [pid(i) for i in (0, 9, 31, 59)]
        for p, v in flat.get_vectors(some).items():
            assert torch.equal(v, seg.get_vectors([p])[p])

    check()
    changed = [1, 2, 3, 20, 40]  # upserts: the old rows are tombstoned, the new ones appended
    fresh = random_pages(len(changed), seed=5, lo=20, hi=40)
    for index in (flat, seg):
        index.add([pid(i) for i in changed], fresh, [payload(i) for i in changed])
    check()
    for index in (flat, seg):  # a fifth of the tokens dead: not compacted yet
        index.remove([pid(i) for i in range(5, 13)])
    assert seg._dead_tokens > 0
    check()
    for index in (flat, seg):  # over a quarter dead: compacted
        index.remove([pid(i) for i in range(30, 45)])
    assert seg._dead_tokens == 0
    check()
    for index in (flat, seg):
        index.remove([pid(i) for i in range(60)])
    assert seg.score(queries, k=3) == [[] for _ in queries] and held_segments(seg) == []
    for index in (flat, seg):  # an emptied index takes pages again
        index.add([pid(0)], pages[:1], [payload(0)])
    check()


def test_a_page_longer_than_a_segment_is_refused() -> None:
    index = TokenIndex(device="cpu", segment_tokens=SEG)
    with pytest.raises(ValueError, match="longer than an index segment"):
        index.add(["x"], random_pages(1, lo=SEG + 1, hi=SEG + 1))
    assert len(index) == 0 and held_segments(index) == []


def test_auto_layout_and_segment_size() -> None:
    """One buffer on the CPU unless forced; on an accelerator segments sized by the budget."""
    assert TokenIndex(device="cpu")._segs is None
    assert TokenIndex(device="cpu", segment_tokens=0)._segs is None
    assert segment_tokens_for(None, False) == 1 << 20
    assert segment_tokens_for(8 << 30, True) == 1 << 20  # an 8 GB budget: 132 MB int8 segments
    assert segment_tokens_for(1 << 30, False) == 1 << 18  # 1 GB: 64 MB segments, a sixteenth of it
    assert segment_tokens_for(1 << 20, False) == 1 << 14  # never below a few of the longest pages


# ------------------------------------------------------------------------------------------------ growth
def test_growth_fills_the_last_segment_and_never_copies_one(monkeypatch) -> None:
    pages = random_pages(40, seed=6, lo=20, hi=40)
    queries = random_queries(2, seed=7)
    index = TokenIndex(device="cpu", segment_tokens=SEG)
    segs = index._segs
    assert segs is not None
    allocs: list[int] = []
    real_alloc = TokenSegments._alloc

    def counting_alloc(self: TokenSegments, first_row: int) -> None:
        allocs.append(first_row)
        real_alloc(self, first_row)

    monkeypatch.setattr(TokenSegments, "_alloc", counting_alloc)
    index.add([pid(i) for i in range(20)], pages[:20])
    before = held_segments(index)
    contents = [t.clone() for t in before]
    used = list(segs.used)
    snap = index.snapshot()
    old_scores = snap.maxsim(*_padded(queries))
    expected_new = segs.new_segments([len(p) for p in pages[20:]])
    allocs.clear()
    for i in range(20, 40):  # one page at a time, as journal replays and small ingests do
        index.add([pid(i)], pages[i : i + 1])
    assert len(allocs) == expected_new > 0  # one segment at a time, only when a page does not fit the last
    after = held_segments(index)
    for i, (old, new) in enumerate(zip(before, after, strict=False)):
        assert new is old  # the same tensor: never moved or copied
        assert torch.equal(new[: used[i]], contents[i][: used[i]])  # rows held before are untouched
    # pages never straddle: each page's rows are one slice of one segment
    for start, length in zip(index._starts, index._lengths, strict=True):
        assert start // SEG == (start + length - 1) // SEG
    # the snapshot taken before the appends still scores what it held
    assert torch.equal(snap.maxsim(*_padded(queries)), old_scores)


def _padded(queries: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    from retriever.maxsim import pad_queries

    return pad_queries(queries)


# ------------------------------------------------------------------------------------------------ compaction
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_compaction_holds_at_most_one_segment_more_than_the_index(dtype: str, monkeypatch) -> None:
    """Every segment alive while compacting (old ones not yet released, counted by weak references, plus new
    ones) is counted at each allocation: at most the old count + 1, never twice the index."""
    pages = random_pages(100, seed=8, lo=20, hi=40)
    queries = random_queries(3, seed=9)
    flat, seg = both(dtype)
    for index in (flat, seg):
        index.compact_ratio = 1.0  # compact only when told to
        index.add([pid(i) for i in range(100)], pages, [payload(i) for i in range(100)])
        index.remove([pid(i) for i in range(100) if i % 5 in (1, 3)])  # dead pages spread over every segment
    old = [weakref.ref(t) for t in held_segments(seg)]
    k = len(old)
    segs = seg._segs
    assert segs is not None and k >= 20
    alive: list[int] = []
    real_alloc = TokenSegments._alloc

    def counting_alloc(self: TokenSegments, first_row: int) -> None:
        real_alloc(self, first_row)
        alive.append(sum(r() is not None for r in old) + len(self.tokens))

    monkeypatch.setattr(TokenSegments, "_alloc", counting_alloc)
    for index in (flat, seg):
        index.compact()
    assert alive and max(alive) <= k + 1, (max(alive), k)
    assert all(r() is None for r in old)  # every old segment was released
    # the live pages, packed: a segment leaves less than the longest page unused
    assert len(held_segments(seg)) <= -(-seg.n_tokens // (SEG - 40))
    assert_same_results(flat.score(queries, k=10), seg.score(queries, k=10))
    where = {"doc_id": "doc3"}
    assert_same_results(flat.score(queries, k=10, where=where), seg.score(queries, k=10, where=where))


def test_a_snapshot_stays_valid_across_a_compaction() -> None:
    pages = random_pages(30, seed=10, lo=20, hi=40)
    queries = random_queries(2, seed=11)
    index = TokenIndex(device="cpu", segment_tokens=SEG, compact_ratio=1.0)
    index.add([pid(i) for i in range(30)], pages)
    snap = index.snapshot()
    q, qm = _padded(queries)
    before = snap.maxsim(q, qm)
    index.remove([pid(i) for i in range(0, 30, 2)])
    index.compact()
    index.add([pid(100 + i) for i in range(10)], random_pages(10, seed=12, lo=20, hi=40))
    assert torch.equal(snap.maxsim(q, qm), before)


# ------------------------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_save_and_load_round_trip(dtype: str, tmp_path: Path) -> None:
    """A segmented save writes the same files as one buffer's (segment by segment to the host); either loads into
    segments of another size, or into one buffer, with the same results."""
    pages = random_pages(50, seed=13, lo=20, hi=40)
    queries = random_queries(3, seed=14)
    flat, seg = both(dtype)
    for index in (flat, seg):
        index.add([pid(i) for i in range(50)], pages, [payload(i) for i in range(50)])
        index.remove([pid(i) for i in range(0, 50, 7)])
        index.mark_synced("v1")
    flat.save(tmp_path / "flat")
    seg.save(tmp_path / "seg")
    for name in ["tokens.npy", "meta.json"] + (["scales.npy"] if dtype == "int8" else []):
        assert (tmp_path / "flat" / name).read_bytes() == (tmp_path / "seg" / name).read_bytes(), name
    want = flat.score(queries, k=10)
    for size in (SEG, 64, 1000):
        loaded = TokenIndex.load(tmp_path / "seg", device="cpu", segment_tokens=size)
        assert loaded._segs is not None and loaded.store_version == "v1"
        assert_same_results(loaded.score(queries, k=10), want)
        loaded.add([pid(99)], random_pages(1, seed=15, lo=20, hi=40), [payload(99)])  # and goes on growing
        assert pid(99) in loaded and len(loaded) == len(flat) + 1
    mapped = TokenIndex.load(tmp_path / "seg", device="cpu")  # the CPU default: the file mapped, one buffer
    assert mapped._segs is None
    assert_same_results(mapped.score(queries, k=10), want)
    empty = TokenIndex(device="cpu", dtype=dtype, segment_tokens=SEG)
    empty.save(tmp_path / "empty")
    assert len(TokenIndex.load(tmp_path / "empty", device="cpu", segment_tokens=SEG)) == 0


def test_load_past_the_budget_is_refused_before_allocating(tmp_path: Path, monkeypatch) -> None:
    index = TokenIndex(device="cpu", segment_tokens=SEG)
    index.add([pid(i) for i in range(30)], random_pages(30, seed=16, lo=20, hi=40))
    index.save(tmp_path / "snap")
    segments = len(held_segments(index))
    seg_bytes = SEG * 256
    allocs: list[int] = []
    monkeypatch.setattr(TokenSegments, "_alloc", lambda self, row: allocs.append(row))
    with pytest.raises(IndexBudgetExceeded):
        TokenIndex.load(tmp_path / "snap", device="cpu", segment_tokens=SEG, memory_budget_bytes=segments * seg_bytes)
    assert allocs == []
    monkeypatch.undo()
    fits = TokenIndex.load(
        tmp_path / "snap", device="cpu", segment_tokens=SEG, memory_budget_bytes=(segments + 1) * seg_bytes
    )
    assert len(fits) == 30


# ------------------------------------------------------------------------------------------------ budget
def test_budget_refuses_growth_with_one_clear_line() -> None:
    pages = random_pages(40, seed=17, lo=20, hi=40)
    budget = 6 * SEG * 256  # six fp16 segments: five for pages, one kept for a compaction
    index = TokenIndex(device="cpu", segment_tokens=SEG, memory_budget_bytes=budget)
    added = 0
    with pytest.raises(IndexBudgetExceeded) as info:
        for i in range(40):
            index.check_room([len(pages[i])])
            index.add([pid(i)], pages[i : i + 1])
            added += 1
    assert 12 <= added < 40 and len(index) == added and index.nbytes() <= budget - SEG * 256
    line = for_interface(info.value, "cli")
    assert "\n" not in line and f"{added + 1:,} pages" in line and "budget of 192.0 KB" in line
    assert "COLSMOL_SEARCH_MODE=tiered" in line and "COLSMOL_INDEX_MEMORY_GB" in line
    from api.http.errors import status_for

    assert status_for(info.value) == 507  # Insufficient Storage, not a 500
    assert not index.room_for([len(pages[added])])
    with pytest.raises(IndexBudgetExceeded):  # add itself refuses too, before anything changes
        index.add([pid(added)], pages[added : added + 1])
    assert len(index) == added and pid(added) not in index
    index.compact_ratio = 1.0  # no compaction on its own ...
    index.remove([pid(i) for i in range(6)])
    assert index._dead_tokens > 0
    index.check_room([len(pages[added])])  # ... but made when it gives the room asked for
    assert index._dead_tokens == 0
    index.add([pid(added)], pages[added : added + 1])
    tiered = TieredIndex(None, device="cpu", segment_tokens=SEG, memory_budget_bytes=3 * SEG * 132)
    try:
        with pytest.raises(IndexBudgetExceeded) as info:
            tiered.add([pid(i) for i in range(40)], random_pages(40, seed=18, lo=200, hi=300))
        assert "COLSMOL_SEARCH_MODE" not in str(info.value) and "COLSMOL_INDEX_MEMORY_GB" in str(info.value)
        assert len(tiered) == 0 and tiered.fine.n_tokens == 0  # refused before the token file grew
    finally:
        tiered.close()


def records(lo: int, hi: int, seed: int = 0) -> list[PageRecord]:
    pages = random_pages(hi - lo, seed=100 + lo + seed, lo=20, hi=40)
    return [PageRecord(pid(i), p, payload(i), prefetch_vectors(p)) for i, p in zip(range(lo, hi), pages, strict=True)]


def journal(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "journal").iterdir()) if (cache / "journal").is_dir() else []


@pytest.fixture
def store(tmp_path: Path):
    s = EdgeStore(tmp_path / "qdrant", "colsmol")
    yield s
    s.close()


def test_a_write_past_the_budget_is_refused_before_the_store_changes(store: EdgeStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    live = LiveIndex(
        store, device="cpu", cache_dir=cache, segment_tokens=SEG, memory_budget_bytes=6 * SEG * 256, sync_interval_s=0
    )
    live.load()  # the budget is the loaded index's
    queries = random_queries(2, seed=19)
    first = records(0, 12)
    live.apply(lambda: store.upsert_pages(first), upserted=first)
    ids, version, logged = sorted(live.get().point_ids()), store.version(), journal(cache)
    hits = ranked(live.get().score(queries, k=5))
    too_many = records(12, 40)
    calls: list[int] = []

    def write() -> None:
        calls.append(1)
        store.upsert_pages(too_many)

    with pytest.raises(IndexBudgetExceeded) as info:
        live.apply(write, upserted=too_many)
    assert "40 pages" in str(info.value) and "COLSMOL_SEARCH_MODE=tiered" in str(info.value)
    assert calls == []  # the store write never ran
    assert store.count_pages() == 12 and store.version() == version and journal(cache) == logged
    index = live.get()
    assert sorted(index.point_ids()) == ids and index.store_version == version and live.syncs == 0
    assert ranked(index.score(queries, k=5)) == hits  # searches go on as before
    fewer = records(12, 16)  # what fits still goes in
    live.apply(lambda: store.upsert_pages(fewer), upserted=fewer)
    assert sorted(live.get().point_ids()) == sorted(p.point_id for p in store.iter_pages(vectors=()))
    live.close()
    # a cache larger than a smaller budget is refused when loaded, with the same line, not rebuilt from the store
    small = LiveIndex(store, device="cpu", cache_dir=cache, segment_tokens=SEG, memory_budget_bytes=2 * SEG * 256)
    with pytest.raises(IndexBudgetExceeded, match="16 pages"):
        small.get()
    assert not small.loaded


def test_a_tiered_index_in_segments(tmp_path: Path) -> None:
    """Tier 1 in segments ranks, journals (spans) and round-trips like tier 1 in one buffer."""
    pages = random_pages(60, seed=21, lo=200, hi=300)
    queries = random_queries(3, seed=22)
    flat = TieredIndex(tmp_path / "a", device="cpu", candidates=20)
    seg = TieredIndex(tmp_path / "b", device="cpu", candidates=20, segment_tokens=64)
    try:
        for index in (flat, seg):
            index.add([pid(i) for i in range(60)], pages, [payload(i) for i in range(60)])
            index.remove([pid(i) for i in range(0, 60, 4)])
        assert seg._segs is not None and len(seg._segs.tokens) > 10
        assert_same_results(flat.score(queries, k=10), seg.score(queries, k=10))
        ids = [pid(i) for i in (1, 30, 59)]
        for a, b in zip(flat.spans(ids)[2], seg.spans(ids)[2], strict=True):
            assert np.array_equal(a, b)
        seg.save(tmp_path / "snap")
        loaded = TieredIndex.load(
            tmp_path / "snap", device="cpu", root=tmp_path / "b", candidates=20, segment_tokens=64
        )
        assert loaded._segs is not None
        assert_same_results(loaded.score(queries, k=10), flat.score(queries, k=10))
    finally:
        flat.close()
        seg.close()


def test_a_failed_index_add_leaves_store_and_index_consistent(store: EdgeStore, tmp_path: Path, monkeypatch) -> None:
    """The index raises half way through its add, after the store write: the write stays in the store, the index
    is reconciled on its next use, the journal takes nothing it cannot hold, and a restart (even without a clean
    close) finds the index equal to the store."""
    cache = tmp_path / "cache"

    def open_live() -> LiveIndex:
        return LiveIndex(store, device="cpu", cache_dir=cache, segment_tokens=SEG, sync_interval_s=3600)

    live = open_live()
    queries = random_queries(2, seed=20)
    first = records(0, 10)
    live.apply(lambda: store.upsert_pages(first), upserted=first)
    live.load()
    logged = journal(cache)
    index = live.get()
    real_add = index.add

    def failing_add(point_ids, vectors_list, payloads=None, pooled=None) -> None:
        real_add(point_ids[:2], vectors_list[:2], payloads[:2] if payloads else None)  # part of it, then fails
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(index, "add", failing_add)
    second = records(10, 16)
    gone = [pid(3)]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        live.apply(lambda: (store.upsert_pages(second), store.delete_pages(gone)), upserted=second, deleted=gone)
    monkeypatch.undo()
    stored = lambda: sorted(p.point_id for p in store.iter_pages(vectors=()))  # noqa: E731
    assert len(stored()) == 15  # the store kept the write
    assert journal(cache) == logged  # the journal holds none of it
    assert index.store_version != store.version()  # no version recorded for what the index missed
    third = records(16, 18)  # a later write that works: recorded in the index, still no version, no journal
    live.apply(lambda: store.upsert_pages(third), upserted=third)
    assert index.store_version != store.version() and journal(cache) == logged
    # a restart now, without a clean close (a kill): the snapshot and journal miss the writes, a sync finds them
    other = open_live()
    assert sorted(other.get().point_ids()) == stored() and other.syncs == 1
    other._index = None  # dropped without saving: this process still owns the cache
    # the next search reconciles this process's index too, though the sync interval has not passed
    index = live.get()
    assert live.syncs == 1 and sorted(index.point_ids()) == stored() and index.store_version == store.version()
    fresh = TokenIndex(device="cpu")
    fresh.build(store)
    assert_same_results(index.score(queries, k=10), fresh.score(queries, k=10))
    live.close()  # the snapshot is rewritten: the journal goes on from it
    again = open_live()
    assert sorted(again.get().point_ids()) == stored() and again.syncs == 0
    fourth = records(18, 20)
    again.apply(lambda: store.upsert_pages(fourth), upserted=fourth)
    assert journal(cache) != []
    again._index = None
    last = open_live()
    assert sorted(last.get().point_ids()) == stored() and last.syncs == 0  # journaled again: no scan needed
    last.close()


# ------------------------------------------------------------------------------------------------ ingest
def test_ingest_fails_only_the_file_the_budget_refuses(tiny_encoder, tmp_path: Path) -> None:
    """Three PDFs of same-sized pages through the real ingest (tiny encoder, Qdrant Edge) with the live index
    following it under a budget of eight pages: the long file fails with the budget's line once its pages no
    longer fit, the files around it are indexed, and with a larger budget the next run finishes it."""
    from indexer.images import PageImageStore
    from indexer.ingest import Ingestor
    from indexer.render import iter_file_pages, make_renderer
    from testkit.pdfs import LETTER, PageSpec, write_pdf

    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text="first")])
    write_pdf(docs / "big.pdf", [PageSpec(*LETTER, text=f"long {i}") for i in range(10)])
    write_pdf(docs / "z.pdf", [PageSpec(*LETTER, text="last")])
    image = next(iter(iter_file_pages(docs / "a.pdf", make_renderer("pdfium"), 50, None))).image
    (tokens,) = {v.shape[0] for v in tiny_encoder.embed_pages([image, image])}
    seg = 4 * tokens  # four pages a segment; three segments: two for pages, one kept for a compaction
    store = EdgeStore(tmp_path / "qdrant", "colsmol")
    images = PageImageStore(tmp_path / "pages")

    def run(budget_segments: int) -> tuple[Any, LiveIndex]:
        live = LiveIndex(
            store,
            device="cpu",
            cache_dir=tmp_path / "cache",
            segment_tokens=seg,
            memory_budget_bytes=budget_segments * seg * 256,
        )
        live.load()
        ing = Ingestor(store, tiny_encoder, images, dpi=50, batch_size=4, preprocess_workers=1, hooks=live)
        return ing.ingest([docs]), live

    try:
        report, live = run(3)
        status = {Path(f.path).name: f for f in report.files}
        assert status["a.pdf"].status == status["z.pdf"].status == "indexed"  # the batch went on
        big = status["big.pdf"]
        assert big.status == "failed" and report.exit_code == 1
        assert "over its budget" in (big.error or "") and "COLSMOL_INDEX_MEMORY_GB" in (big.error or "")
        assert {d.file_name for d in store.list_documents()} == {"a.pdf", "z.pdf"}
        visual = sorted(p.point_id for p in store.iter_pages(vectors=()) if p.payload.get("stage") != "text")
        assert sorted(live.get().point_ids()) == visual and live.syncs == 0  # the index followed every write
        assert 2 <= len(visual) <= 8 and big.pages == len(visual) - 2  # big.pdf's first batch fitted
        assert all(images.exists(pid) for pid in visual)  # refused pages left no image behind
        full = [p for p in (tmp_path / "pages").rglob("*.webp") if not p.name.endswith(".thumb.webp")]
        assert len(full) == len(visual)
        live.close()
        again, live = run(8)  # a larger budget: the next run resumes the failed file
        assert {Path(f.path).name: f.status for f in again.files}["big.pdf"] == "indexed"
        assert len(live.get()) == 12 and again.exit_code == 0
        live.close()
    finally:
        store.close()
