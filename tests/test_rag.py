"""RAGPipeline end to end on tiny real models: ingest real PDFs, search, answer, stream, explain."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.errors import InvalidRequest, NotFound, StoreUnavailable
from indexer.settings import Settings
from indexer.store import EdgeStore
from rag.pipeline import MAX_ANSWER_K, NO_DOCUMENTS, RAGPipeline
from rag.types import Answer
from testkit.pdfs import A4, LETTER, PageSpec, write_pdf
from tests.conftest import tiny_settings


def _settings(tiny_models, tmp_path, **overrides) -> Settings:
    return tiny_settings(tiny_models, tmp_path / "data", dpi=60, **overrides)


@pytest.fixture(scope="module")
def rag(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rag")
    docs = tmp / "docs"
    docs.mkdir()
    write_pdf(docs / "report.pdf", [PageSpec(*LETTER, text=f"revenue table {i}") for i in range(4)])
    write_pdf(docs / "manual.pdf", [PageSpec(*A4, text="battery safety"), PageSpec(*A4, text="", scan=True)])
    pipeline = RAGPipeline.from_settings(_settings(tiny_models, tmp))
    report = pipeline.ingest([docs], metadata={"team": "a"})
    assert report.exit_code == 0 and report.pages_embedded == 6
    yield pipeline
    pipeline.close()


def test_sources_are_the_top_k_hits(rag: RAGPipeline) -> None:
    hits = rag.search("what was the revenue?", k=3)
    answer = rag.answer("what was the revenue?", k=3, max_new_tokens=8)
    assert isinstance(answer, Answer) and isinstance(answer.text, str)
    assert [h.point_id for h in answer.sources] == [h.point_id for h in hits]
    assert answer.timings["search"] > 0 and answer.timings["generate"] > 0
    assert answer.warnings == []


def test_stream_equals_answer_greedy(rag: RAGPipeline) -> None:
    full = rag.answer("battery charging?", k=2, max_new_tokens=10)
    events = list(rag.stream_answer("battery charging?", k=2, max_new_tokens=10))
    *pieces, final = events
    assert all(isinstance(p, str) for p in pieces) and isinstance(final, Answer)
    assert "".join(pieces).strip() == full.text == final.text
    assert [h.point_id for h in final.sources] == [h.point_id for h in full.sources]
    assert final.timings["first_token"] > 0


def test_search_filters_and_batches(rag: RAGPipeline) -> None:
    docs = {d.file_name: d.doc_id for d in rag.documents()}
    hits = rag.search("battery", k=10, filter={"doc_id": docs["manual.pdf"]})
    assert len(hits) == 2 and {h.file_name for h in hits} == {"manual.pdf"}
    assert len(rag.search("battery", k=10, filter={"metadata.team": "a"})) == 6
    assert rag.search("battery", k=10, filter={"metadata.team": "b"}) == []
    batch = rag.search_batch(["battery", "revenue"], k=2)
    assert len(batch) == 2 and all(len(b) == 2 for b in batch)
    single = rag.search("revenue", k=2)
    assert [h.point_id for h in batch[1]] == [h.point_id for h in single]


def test_explain_heatmap(rag: RAGPipeline) -> None:
    hit = rag.search("revenue table", k=1)[0]
    smap = rag.explain("revenue table", hit)
    page = rag.images.load(hit.point_id)
    assert smap.heatmap.shape == (page.height, page.width)
    assert float(np.ptp(smap.heatmap)) > 0
    assert smap.overlay().size == page.size
    with pytest.raises(NotFound):
        rag.explain("revenue", "not-a-point-id")


@pytest.mark.parametrize(
    "kwargs",
    [{"question": ""}, {"question": "   "}, {"question": "x", "k": 0}, {"question": "x", "k": MAX_ANSWER_K + 1}],
)
def test_bad_questions(rag: RAGPipeline, kwargs) -> None:
    with pytest.raises(InvalidRequest):
        rag.answer(**kwargs)


def test_missing_page_image_is_skipped_with_warning(tiny_models, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text="one"), PageSpec(*LETTER, text="two")])
    with RAGPipeline.from_settings(_settings(tiny_models, tmp_path)) as rag:
        rag.ingest([docs])
        top = rag.search("one", k=2)
        rag.images.path(top[0].point_id).unlink()
        answer = rag.answer("one", k=2, max_new_tokens=4)
        assert [h.point_id for h in answer.sources] == [top[1].point_id]
        assert len(answer.warnings) == 1 and "missing" in answer.warnings[0]


def test_empty_index_answers_without_loading_the_generator(tiny_models, tmp_path) -> None:
    with RAGPipeline.from_settings(_settings(tiny_models, tmp_path)) as rag:
        answer = rag.answer("anything?")
        assert answer.text == NO_DOCUMENTS and answer.sources == []
        assert rag.generator is not None and not rag.generator.loaded
        assert rag.search("anything", k=3) == []


def test_context_manager_releases_the_store(tiny_models, tmp_path) -> None:
    s = _settings(tiny_models, tmp_path)
    with RAGPipeline.from_settings(s) as rag:
        with pytest.raises(StoreUnavailable, match="in use"):
            EdgeStore(s.qdrant_path, s.collection)
        assert rag.encoder.load() is rag.encoder
    # Closed: the Edge lock is free again and the models are dropped.
    EdgeStore(s.qdrant_path, s.collection).close()
    assert not rag.encoder.loaded


def test_delete_updates_search(tiny_models, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text="alpha")])
    write_pdf(docs / "b.pdf", [PageSpec(*LETTER, text="beta")] * 2)
    with RAGPipeline.from_settings(_settings(tiny_models, tmp_path)) as rag:
        rag.ingest([docs])
        assert len(rag.search("alpha", k=10)) == 3
        doc_b = next(d.doc_id for d in rag.documents() if d.file_name == "b.pdf")
        assert rag.delete(doc_b) == 2
        hits = rag.search("alpha", k=10)
        assert [h.file_name for h in hits] == ["a.pdf"]
        with pytest.raises(NotFound):
            rag.delete(doc_b)


def test_index_follows_ingest_in_place_and_restarts_from_its_cache(tiny_models, tmp_path, monkeypatch) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text="alpha")] * 2)
    s = _settings(tiny_models, tmp_path)
    with RAGPipeline.from_settings(s) as rag:
        rag.ingest([docs])
        before = rag.search("alpha", k=5)
        assert rag.live_index is not None
        index = rag.live_index.get()
        # A second ingest updates the resident index in place: no rebuild, no vector re-read.
        monkeypatch.setattr(rag.live_index, "_build", lambda *_a: pytest.fail("index rebuilt"))
        monkeypatch.setattr(index, "build", lambda *_a, **_k: pytest.fail("index rebuilt"))
        write_pdf(docs / "b.pdf", [PageSpec(*A4, text="beta")])
        rag.ingest([docs])
        assert rag.live_index.get() is index and len(index) == 3
        assert len(rag.search("alpha", k=5)) == 3
        monkeypatch.undo()

    # Restart: the index comes from the cache (reconciled with the store), not from a rebuild.
    with RAGPipeline.from_settings(s) as rag:
        assert rag.live_index is not None
        monkeypatch.setattr(rag.live_index, "_build", lambda *_a: pytest.fail("cache not used"))
        hits = rag.search("alpha", k=5)
        assert len(hits) == 3
        assert {h.point_id for h in before} <= {h.point_id for h in hits}
        monkeypatch.undo()

    # A corrupt cache is ignored and rebuilt from Qdrant, never fatal.
    (s.data_dir / "index-cache" / s.collection / "snapshot" / "tokens.npy").write_bytes(b"garbage")
    with RAGPipeline.from_settings(s) as rag:
        assert len(rag.search("alpha", k=5)) == 3


def test_two_stage_mode_matches_exact_on_a_small_corpus(tiny_models, tmp_path) -> None:
    """With more prefetch candidates than pages, two-stage must rank exactly like the resident index."""
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text=f"page {i}") for i in range(5)])
    write_pdf(docs / "b.pdf", [PageSpec(*A4, text="", scan=True)] * 2)
    s = _settings(tiny_models, tmp_path)
    with RAGPipeline.from_settings(s) as rag:
        rag.ingest([docs])
        exact = rag.search("page three", k=7)
    with RAGPipeline.from_settings(s.model_copy(update={"search_mode": "two-stage"})) as rag:
        two = rag.search("page three", k=4)
        assert rag.live_index is None, "two-stage mode must not build the resident index"
        doc_a = next(d.doc_id for d in rag.documents() if d.file_name == "a.pdf")
        filtered = rag.search("page three", k=10, filter={"doc_id": doc_a})
    # Same scores for the same pages (up to fp16 rounding, so near-ties may swap places).
    exact_scores = {h.point_id: h.score for h in exact}
    for h in two:
        assert abs(h.score - exact_scores[h.point_id]) < 2e-2
    np.testing.assert_allclose([h.score for h in two], [h.score for h in exact[:4]], atol=2e-2)
    assert len(filtered) == 5 and {h.file_name for h in filtered} == {"a.pdf"}


class CountingStore:
    """The real store, counting the payload-only scans a sync costs (every other call passes through)."""

    def __init__(self, store) -> None:
        self._store = store
        self.scans = 0

    def iter_pages(self, batch_size: int = 256, vectors=("tokens",)):
        if not vectors:
            self.scans += 1
        return self._store.iter_pages(batch_size, vectors)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_searches_during_an_ingest_never_rescan_the_store(tiny_models, tmp_path) -> None:
    """The live index follows in-process writes itself: concurrent searches must not trigger payload scans."""
    import threading

    from retriever.live_index import LiveIndex
    from retriever.search import ExactSearcher

    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "seed.pdf", [PageSpec(*LETTER, text="seed")])
    for i in range(4):
        write_pdf(docs / f"more-{i}.pdf", [PageSpec(*LETTER, text=f"more {i} {j}") for j in range(3)])
    s = _settings(tiny_models, tmp_path, index_sync_interval_s=0)  # check the version on every search
    with RAGPipeline.from_settings(s) as built:
        built.ingest([docs / "seed.pdf"])
        store, encoder = built.store, built.encoder
        counting = CountingStore(store)
        live = LiveIndex(counting, device="cpu", sync_interval_s=0)
        rag = RAGPipeline(
            counting, built.images, encoder, live_index=live, searcher=ExactSearcher(live, encoder.embed_queries)
        )
        assert len(rag.search("seed", k=5)) == 1
        counting.scans = 0
        searches, stop = [], threading.Event()

        def search_loop() -> None:
            while not stop.is_set():
                searches.append(len(rag.search("more", k=20)))

        thread = threading.Thread(target=search_loop)
        thread.start()
        try:
            report = rag.ingest([docs])
        finally:
            stop.set()
            thread.join()
        assert report.pages_embedded == 12 and len(searches) >= 3
        assert counting.scans == 0, f"{counting.scans} payload scans during an ingest with {len(searches)} searches"
        assert len(rag.search("more", k=20)) == 13
        # A write by someone else (here: straight to the store) is found by the version check, with one scan.
        pid = rag.search("seed", k=1)[0].point_id
        store.delete_pages([pid])
        assert len(rag.search("more", k=20)) == 12 and counting.scans == 1


def _no_vector_reads(monkeypatch, rag: RAGPipeline) -> CountingStore:
    """Make the pipeline's store count payload scans and fail on any bulk vector read or index build."""
    assert rag.live_index is not None
    counting = CountingStore(rag.store)
    rag.live_index.store = counting
    monkeypatch.setattr(rag.live_index, "_build", lambda: pytest.fail("the index was rebuilt from the store"))
    return counting


def test_the_cache_is_current_after_every_write(tiny_models, tmp_path, monkeypatch) -> None:
    """Ingest in one process (no search: the index is never loaded), search in the next: the snapshot and its
    journal hold every page, so the search reads no vector from the store and scans nothing."""
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text=f"alpha {i}") for i in range(3)])
    s = _settings(tiny_models, tmp_path)
    with RAGPipeline.from_settings(s) as rag:
        rag.ingest([docs])
        assert rag.live_index is not None and not rag.live_index.loaded
    cache = s.data_dir / "index-cache" / s.collection
    assert (cache / "snapshot" / "meta.json").is_file() and any((cache / "journal").iterdir())
    with RAGPipeline.from_settings(s) as rag:
        counting = _no_vector_reads(monkeypatch, rag)
        assert len(rag.search("alpha", k=5)) == 3 and counting.scans == 0
        write_pdf(docs / "b.pdf", [PageSpec(*A4, text="beta")])
        rag.ingest([docs])  # the index is loaded now: in place, and journaled
        assert len(rag.search("beta", k=5)) == 4 and counting.scans == 0
        monkeypatch.undo()
    with RAGPipeline.from_settings(s) as rag:
        counting = _no_vector_reads(monkeypatch, rag)
        assert len(rag.search("beta", k=5)) == 4 and counting.scans == 0
        monkeypatch.undo()


def test_a_write_the_cache_missed_is_recovered_by_one_scan(tiny_models, tmp_path, monkeypatch) -> None:
    """A write that never reached the journal (the process died in between; here: straight to the store) shows
    as another store version: the next start reconciles it with one payload scan, no rebuild."""
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text=f"alpha {i}") for i in range(3)])
    s = _settings(tiny_models, tmp_path)
    with RAGPipeline.from_settings(s) as rag:
        rag.ingest([docs])
        gone = rag.search("alpha", k=1)[0].point_id
        rag.store.delete_pages([gone])  # behind the live index's back
    with RAGPipeline.from_settings(s) as rag:
        counting = _no_vector_reads(monkeypatch, rag)
        hits = rag.search("alpha", k=5)
        assert len(hits) == 2 and gone not in {h.point_id for h in hits} and counting.scans == 1
        monkeypatch.undo()


def test_a_snapshot_is_memory_mapped_copy_on_write(tmp_path) -> None:
    """Loading reads no token data into memory up front; writing to the loaded index never touches the file."""
    from retriever.token_index import TokenIndex
    from testkit.corpus import random_pages

    pages = random_pages(4, lo=200, hi=300)
    index = TokenIndex(device="cpu")
    index.add([f"p{i}" for i in range(4)], pages)
    index.save(tmp_path / "snap")
    before = (tmp_path / "snap" / "tokens.npy").read_bytes()
    loaded = TokenIndex.load(tmp_path / "snap", device="cpu")
    n = sum(len(p) for p in pages)
    base = loaded._tokens.untyped_storage()
    assert base.nbytes() == (n + n // 4) * 128 * 2  # the file's fp16 data and its room: mapped, not copied
    assert str((tmp_path / "snap" / "tokens.npy").resolve()) in Path("/proc/self/maps").read_text()  # mapped
    assert os.stat(tmp_path / "snap" / "tokens.npy").st_blocks * 512 <= n * 128 * 2 + 8192  # the room is a hole
    small = random_pages(1, seed=8, lo=5, hi=6)
    loaded.add(["p8"], small)  # fits the room: written into the private mapping, no copy of the index
    assert loaded._tokens.untyped_storage().data_ptr() == base.data_ptr()
    assert torch.equal(loaded.get_vectors(["p8"])["p8"].float(), torch.from_numpy(small[0]).half().float())
    loaded.add(["p9"], random_pages(1, seed=9, lo=400, hi=500))  # past the room: moved to memory
    assert loaded._tokens.untyped_storage().data_ptr() != base.data_ptr()
    loaded.remove(["p0", "p1", "p2", "p8"])  # compacts into new buffers
    loaded.compact()
    assert (tmp_path / "snap" / "tokens.npy").read_bytes() == before
    assert sorted(loaded.point_ids()) == ["p3", "p9"]
