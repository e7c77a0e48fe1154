"""Tiered search (retriever/tiered_index.py): recall when tier 1 can miss, filters, the token file across writes,
restarts and a kill -9, and ``auto`` choosing the mode by the memory budget. Corpora are a few hundred short
pages of :class:`testkit.corpus.TopicMixture`, so the file runs in seconds.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from indexer.filters import Filter
from indexer.settings import Settings
from indexer.store.edge import EdgeStore
from indexer.types import PageRecord
from rag.searchers import build_searcher
from retriever.cpu_maxsim import kernel_available
from retriever.live_index import LiveIndex
from retriever.pooling import prefetch_vectors
from retriever.tiered_index import TieredIndex
from retriever.token_index import TokenIndex
from testkit.corpus import TopicMixture

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[np.ndarray], list[np.ndarray]]:
    gen = TopicMixture(seed=4, n_topics=48, tokens=(200, 260))
    return [gen.page(i) for i in range(300)], list(gen.queries(12))


def payload(i: int) -> dict:
    return {
        "kind": "page",
        "doc_id": f"doc{i % 50}",
        "source": f"/corpus/doc{i % 50}.pdf",
        "file_name": f"doc{i % 50}.pdf",
        "page_number": i // 50 + 1,
        "page_count": 10,
        "width": 100,
        "height": 100,
        "content_hash": f"h{i % 50}",
        "ingested_at": "2026-12-05T00:00:00Z",
        "metadata": {},
    }


def ids_of(rows) -> list[list[str]]:
    return [[p.point_id for p in row] for row in rows]


def recall(got: list[list[str]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, want, strict=True)]))


def test_tier_two_recovers_what_tier_one_misses(corpus) -> None:
    """Candidates (20) far fewer than pages (300): tier 1 alone misses pages of the exact top 10; tiered finds them."""
    pages, queries = corpus
    ids = [f"p{i}" for i in range(len(pages))]
    exact = TokenIndex(device="cpu", dtype="int8")
    exact.add(ids, pages)
    want = ids_of(exact.score(queries, k=10))
    tiered = TieredIndex(None, device="cpu", candidates=20)
    try:
        tiered.add(ids, pages)
        tier1 = ids_of(TokenIndex.score(tiered, queries, k=10))  # the pooled vectors alone
        assert recall(tier1, want) < 0.95, "the corpus is too easy: tier 1 alone must miss some of the exact top 10"
        assert recall(ids_of(tiered.score(queries, k=10)), want) >= 0.95
        assert recall(ids_of(tiered.score_exact(queries, k=10)), want) == 1.0
        # Scores are exact MaxSim (int8 tokens), not tier 1's.
        top = tiered.score(queries[:1], k=3)[0]
        ref = {p.point_id: p.score for p in exact.score(queries[:1], k=3)[0]}
        for p in top:
            assert p.score == pytest.approx(ref[p.point_id], abs=1e-3)
    finally:
        tiered.close()


@pytest.mark.skipif(not kernel_available(), reason="tier 0 runs with the compiled CPU kernel only")
def test_tier_zero_sign_bits_keep_recall_and_filters(corpus, monkeypatch) -> None:
    """With tier 0 on (30 pages of 300 go to tier 1), recall stays what it is without it, a selective filter still
    gives k hits, and adds, deletes and compaction keep the sign bits in step with the pooled rows."""
    import retriever.tiered_index as tiered_mod

    pages, queries = corpus
    ids = [f"p{i}" for i in range(len(pages))]
    pays = [payload(i) for i in range(len(pages))]
    exact = TokenIndex(device="cpu", dtype="int8")
    exact.add(ids, pages, pays)
    want = ids_of(exact.score(queries, k=10))
    calls = []
    real = tiered_mod.hamming_maxsim
    monkeypatch.setattr(tiered_mod, "hamming_maxsim", lambda *a: calls.append(1) or real(*a))
    tiered = TieredIndex(None, device="cpu", candidates=20, sketch_factor=3)
    plain = TieredIndex(None, device="cpu", candidates=20, sketch_factor=0)
    try:
        for index in (tiered, plain):
            index.add(ids[:200], pages[:200], pays[:200])
            index.add(ids[200:], pages[200:], pays[200:])  # codes catch up with appends
        got, without = ids_of(tiered.score(queries, k=10)), ids_of(plain.score(queries, k=10))
        assert calls and not plain._sketch_usable()
        assert recall(got, want) >= 0.95 and recall(got, want) >= recall(without, want) - 0.05
        flt = Filter.parse({"doc_id": ["doc1", "doc2"]})
        rows = tiered.score(queries, k=10, where=flt)
        assert all(len(r) == 10 and {p.bits["doc_id"] for p in r} <= {"doc1", "doc2"} for r in rows)
        tiered.remove(ids[:100])  # a third dead: compacted, sign bits rebuilt from the new rows
        exact.remove(ids[:100])
        assert tiered._codes_n == 0 or tiered._codes_n == tiered.n_tokens
        after = ids_of(tiered.score(queries, k=10))
        assert tiered._sketch_usable() is False or calls  # 200 pages > 2 x 60: still on
        assert recall(after, ids_of(exact.score(queries, k=10))) >= 0.95
    finally:
        tiered.close()
        plain.close()


def test_a_selective_filter_still_returns_k_hits(corpus) -> None:
    """The filter applies inside tier 1: 12 pages match, 10 candidates, 10 hits, all matching."""
    pages, queries = corpus
    ids = [f"p{i}" for i in range(len(pages))]
    pays = [payload(i) for i in range(len(pages))]
    flt = Filter.parse({"doc_id": ["doc1", "doc2"]})
    exact = TokenIndex(device="cpu", dtype="int8")
    exact.add(ids, pages, pays)
    tiered = TieredIndex(None, device="cpu", candidates=10)
    try:
        tiered.add(ids, pages, pays, pooled=[prefetch_vectors(v) for v in pages])
        got = tiered.score(queries, k=10, where=flt)
        assert all(len(row) == 10 and {p.bits["doc_id"] for p in row} <= {"doc1", "doc2"} for row in got)
        ref = {p.point_id: p.score for p in exact.score(queries[:1], k=12, where=flt)[0]}
        assert all(p.score == pytest.approx(ref[p.point_id], abs=1e-3) for p in got[0])  # exact scores
    finally:
        tiered.close()


def test_the_token_file_is_rewritten_without_dead_pages(corpus, tmp_path) -> None:
    pages, queries = corpus
    ids = [f"p{i}" for i in range(60)]
    index = TieredIndex(tmp_path / "tiers", device="cpu", candidates=30)
    index.add(ids, pages[:60])
    index.remove(ids[:30])
    before = ids_of(index.score(queries, k=5))
    index.save(tmp_path / "snapshot")
    live_tokens = sum(v.shape[0] for v in pages[30:60])
    assert [p.name for p in sorted((tmp_path / "tiers").iterdir())] == ["scales-2.f32", "tokens-2.i8"]
    assert (tmp_path / "tiers" / "tokens-2.i8").stat().st_size == live_tokens * 128
    loaded = TieredIndex.load(tmp_path / "snapshot", device="cpu", root=tmp_path / "tiers", candidates=30)
    assert len(loaded) == 30 and ids_of(loaded.score(queries, k=5)) == before
    got = loaded.get_vectors(["p45"])["p45"].numpy()  # what cited regions read: the full tokens, from the file
    np.testing.assert_allclose(got, pages[45], atol=1e-2)


def _records(pages: list[np.ndarray], start: int, n: int) -> list[PageRecord]:
    return [
        PageRecord(str(uuid.uuid5(uuid.NAMESPACE_URL, f"p{i}")), pages[i], payload(i), prefetch_vectors(pages[i]))
        for i in range(start, start + n)
    ]


def test_the_live_tiered_index_follows_writes_and_restarts_without_reading_vectors(corpus, tmp_path) -> None:
    pages, queries = corpus
    store = EdgeStore(tmp_path / "qdrant", "colsmol")
    cache = tmp_path / "cache"
    try:
        live = LiveIndex(store, device="cpu", tiered=True, candidates=20, cache_dir=cache)
        for start in (0, 40, 80):
            recs = _records(pages, start, 40)
            live.apply(lambda recs=recs: store.upsert_pages(recs), upserted=recs)
        gone = [r.point_id for r in _records(pages, 0, 10)]
        live.apply(lambda: store.delete_pages(gone), deleted=gone)
        searcher_ids = ids_of(live.get().score(queries, k=10))
        assert isinstance(live.get(), TieredIndex) and len(live.get()) == 110
        journal = sorted((cache / "journal").iterdir())
        assert journal and not (journal[-1] / "tokens.npy").exists(), "a tiered journal holds spans, not tokens"
        live.close()

        reopened = LiveIndex(store, device="cpu", tiered=True, candidates=20, cache_dir=cache)
        index = reopened.get()
        assert reopened.syncs == 0, "the snapshot and its journal were current: no store scan"
        assert isinstance(index, TieredIndex) and len(index) == 110 and not set(gone) & set(index.point_ids())
        assert ids_of(index.score(queries, k=10)) == searcher_ids
        reopened.close()
    finally:
        store.close()


KILLED_WRITER = textwrap.dedent(
    """
    import sys, uuid
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from indexer.store.edge import EdgeStore
    from indexer.types import PageRecord
    from retriever.live_index import LiveIndex
    from retriever.pooling import prefetch_vectors
    from testkit.corpus import TopicMixture
    from tests.test_tiered import payload

    gen = TopicMixture(seed=4, n_topics=48, tokens=(200, 260))
    root = Path({root!r})
    store = EdgeStore(root / "qdrant", "colsmol")
    live = LiveIndex(store, device="cpu", tiered=True, candidates=20, cache_dir=root / "cache")
    i = 0
    while True:  # until killed
        recs = []
        for j in range(i, i + 8):
            v = gen.page(j)
            recs.append(PageRecord(str(uuid.uuid5(uuid.NAMESPACE_URL, f"p{{j}}")), v, payload(j), prefetch_vectors(v)))
        live.apply(lambda: store.upsert_pages(recs), upserted=recs)
        if i % 16 == 0:  # every other batch also replaces a page written before (an upsert of a known id)
            live.apply(lambda: store.upsert_pages(recs[:1]), upserted=recs[:1])
        i += 8
        (root / "written").write_text(str(i))
    """
)


@pytest.mark.slow
def test_kill_9_during_a_tiered_ingest_leaves_the_tiers_consistent(tmp_path) -> None:
    """A writer killed at a random point of its loop: on restart the tiered index holds every stored page once
    and ranks like an index built afresh from the store."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER.format(repo=str(REPO), root=str(tmp_path))],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    marker = tmp_path / "written"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if marker.exists() and marker.read_text().strip() and int(marker.read_text()) >= 24:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "the writer stopped"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    store = EdgeStore(tmp_path / "qdrant", "colsmol")
    try:
        live = LiveIndex(store, device="cpu", tiered=True, candidates=20, cache_dir=tmp_path / "cache")
        index = live.get()
        stored = sorted(p.point_id for p in store.iter_pages(vectors=()))
        assert sorted(index.point_ids()) == stored and len(stored) >= 24
        queries = list(TopicMixture(seed=4, n_topics=48).queries(5))
        # A fresh index of the same pages from the float32 vectors the writer had (the pages are deterministic).
        gen = TopicMixture(seed=4, n_topics=48, tokens=(200, 260))
        j_of = {str(uuid.uuid5(uuid.NAMESPACE_URL, f"p{j}")): j for j in range(len(stored) + 64)}
        pages = [gen.page(j_of[pid]) for pid in stored]
        fresh = TieredIndex(None, device="cpu", candidates=20)
        try:
            pooled = [prefetch_vectors(v) for v in pages]
            fresh.add(stored, pages, [payload(j_of[pid]) for pid in stored], pooled=pooled)
            got, want = index.score(queries, k=10), fresh.score(queries, k=10)
            # Pages the journal missed were recovered from the store's fp16 copy: their int8 scores may differ in
            # the third decimal, so two pages that close may swap; anything else is the crash's doing.
            tie = 5e-3
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose([p.score for p in g], [p.score for p in w], atol=tie)
                mine = {p.point_id: p.score for p in w}
                for p in g:
                    assert abs(mine[p.point_id] - p.score) < tie if p.point_id in mine else p.score < w[-1].score + tie
        finally:
            fresh.close()
        live.close()
    finally:
        store.close()


def test_auto_picks_exact_within_the_memory_budget_and_tiered_beyond(corpus, tmp_path, caplog) -> None:
    pages, _ = corpus
    settings = Settings(data_dir=tmp_path, device="cpu", search_mode="auto")
    store = EdgeStore(tmp_path / "qdrant", "colsmol")
    try:
        store.upsert_pages(_records(pages, 0, 4))
        with caplog.at_level(logging.INFO, logger="rag.searchers"):
            small = build_searcher(settings.model_copy(update={"index_memory_gb": 1.0}), store, None, None)
            big = build_searcher(settings.model_copy(update={"index_memory_gb": 0.001}), store, None, None)
        assert small.mode == "exact" and small.live is not None and not small.live.tiered
        assert big.mode == "tiered" and big.live is not None and big.live.tiered
        assert "auto: 4 pages" in big.reason and "search mode: tiered" in caplog.text
        hits = big.searcher.search_vectors([pages[2][:20]], k=2)[0]
        assert hits and hits[0].point_id == _records(pages, 2, 1)[0].point_id
        big.live.close()
        small.live.close()
    finally:
        store.close()


def test_bench_scale_runs_the_production_path(tmp_path, monkeypatch) -> None:
    """bench/scale.py end to end (in process) on a tiny generated corpus: the Edge store, the pipeline's tiered
    searcher, the JSON the bench promises."""
    from bench import scale

    corpus, out = tmp_path / "c.npz", tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["scale.py", "--generate", "40", "--queries", "3", "--corpus", str(corpus)])
    scale.main()
    argv = ["scale.py", "--corpus", str(corpus), "--mode", "tiered", "--candidates", "8", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--tmp", str(tmp_path)])
    scale.main()
    got = json.loads(out.read_text())
    assert {"top10", "latency_ms", "resident_bytes", "disk_bytes", "build_s"} <= set(got)
    assert got["mode"] == "tiered" and len(got["top10"]) == 3 and all(len(r) == 10 for r in got["top10"])
    assert all(0 <= i < 40 for row in got["top10"] for i in row)


def test_the_pipeline_searches_tiered_with_cited_regions_and_readyz_says_so(tiny_models, tmp_path) -> None:
    """COLSMOL_SEARCH_MODE=tiered end to end on the tiny models: real PDFs ingested, hits ranked like exact (more
    candidates than pages here: the recall tests above cover the case where tier 1 can miss), regions from the
    token file, and /readyz naming the mode."""
    from fastapi.testclient import TestClient

    from api.http.app import create_app
    from rag.pipeline import RAGPipeline
    from testkit.pdfs import LETTER, PageSpec, write_pdf
    from tests.conftest import tiny_settings

    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text=f"quarterly revenue table {i}") for i in range(4)])
    s = tiny_settings(tiny_models, tmp_path / "data", dpi=60, index_dtype="int8")  # both modes score int8 tokens
    with RAGPipeline.from_settings(s) as rag:
        rag.ingest([docs])
        exact = rag.search("revenue table", k=3)
    tiered_settings = s.model_copy(update={"search_mode": "tiered", "prefetch_candidates": 8})
    with RAGPipeline.from_settings(tiered_settings) as rag:
        assert rag.search_mode == "tiered"
        hits = rag.search("revenue table", k=3)
        assert isinstance(rag.live_index.get() if rag.live_index else None, TieredIndex)
        assert [h.point_id for h in hits] == [h.point_id for h in exact]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in exact], atol=1e-3)
        assert [bool(h.regions) for h in hits] == [bool(h.regions) for h in exact]
        with TestClient(create_app(tiered_settings, rag)) as client:
            ready = client.get("/readyz").json()
            assert ready["status"] == "ready" and ready["search_mode"] == "tiered", ready
