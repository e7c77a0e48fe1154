"""One store test suite, run against both backends, plus the page image store.

No Qdrant server runs here (no Docker, no network), so the server backend's API calls are
exercised against qdrant-client's local mode, ``QdrantClient(":memory:")``, which stands in for a
server. Local mode stores float32 where a server stores fp16 and ignores payload indexes; the
congruence test therefore compares vectors to fp16 tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import SchemaMismatch, StoreUnavailable
from indexer.filters import Filter
from indexer.images import PageImageStore
from indexer.store import EdgeStore, ServerStore, open_store
from indexer.store.base import DIM, document_point_id, page_point_id
from indexer.types import DocumentInfo, PageRecord

BACKENDS = ["edge", "server"]


def make_store(kind: str, tmp_path: Path):
    if kind == "edge":
        return EdgeStore(tmp_path / "qdrant", "colsmol")
    from qdrant_client import QdrantClient

    return ServerStore(QdrantClient(":memory:"), "colsmol")


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    yield s
    s.close()


def page(
    doc_id: str,
    n: int,
    *,
    seed: int = 0,
    tokens: int = 24,
    pooled: bool = True,
    source: str | None = None,
    lang: str = "en",
) -> PageRecord:
    rng = np.random.default_rng([seed, n, len(doc_id)] + [ord(c) for c in doc_id])
    vectors = rng.standard_normal((tokens, DIM)).astype(np.float32)
    return PageRecord(
        point_id=page_point_id(doc_id, n),
        vectors=vectors,
        payload={
            "doc_id": doc_id,
            "source": source or f"/docs/{doc_id}.pdf",
            "file_name": f"{doc_id}.pdf",
            "page_number": n,
            "page_count": 3,
            "width": 850,
            "height": 1100,
            "content_hash": f"hash-{doc_id}",
            "ingested_at": "2026-11-23T00:00:00Z",
            "metadata": {"lang": lang},
        },
        pooled=vectors[:4].copy() if pooled else None,
    )


def info(doc_id: str, page_count: int = 3, lang: str = "en") -> DocumentInfo:
    return DocumentInfo(
        doc_id,
        f"/docs/{doc_id}.pdf",
        f"{doc_id}.pdf",
        page_count,
        page_count,
        f"hash-{doc_id}",
        "2026-11-23T00:00:00Z",
        True,
        {"lang": lang},
    )


def ingest(store, doc_id: str, pages: int = 3, complete: bool = True, lang: str = "en") -> list[PageRecord]:
    recs = [page(doc_id, n, lang=lang) for n in range(1, pages + 1)]
    store.upsert_pages(recs)
    if complete:
        store.mark_document_complete(info(doc_id, pages, lang))
    return recs


# ---------------------------------------------------------------------------------------------
# The shared suite: every test runs on Edge and on the server API.
# ---------------------------------------------------------------------------------------------


def test_documents_listed_with_counts_and_completion(store):
    ingest(store, "b-doc", 3)
    ingest(store, "a-doc", 2, complete=False)
    assert store.count_pages() == 5
    done = store.list_documents()
    assert [(d.doc_id, d.pages_stored, d.complete) for d in done] == [("b-doc", 3, True)]
    everything = store.list_documents(include_incomplete=True)
    assert [(d.doc_id, d.pages_stored, d.page_count, d.complete) for d in everything] == [
        ("a-doc", 2, 3, False),  # sorted by source; page_count from the page payload
        ("b-doc", 3, 3, True),
    ]
    assert everything[1].metadata == {"lang": "en"} and everything[1].content_hash == "hash-b-doc"
    assert store.get_document("b-doc").complete
    assert store.get_document("a-doc").pages_stored == 2
    assert store.get_document("nope") is None
    assert [d.doc_id for d in store.find_by_source("/docs/a-doc.pdf")] == ["a-doc"]
    assert sorted(store.page_ids("b-doc")) == sorted(page_point_id("b-doc", n) for n in (1, 2, 3))


def test_reupsert_is_idempotent(store):
    recs = ingest(store, "d", 3)
    store.upsert_pages(recs)
    store.mark_document_complete(info("d"))
    assert store.count_pages() == 3
    assert [d.pages_stored for d in store.list_documents()] == [3]


def test_payloads_and_iter_pages_roundtrip(store):
    recs = ingest(store, "d", 3)
    payloads = store.get_payloads([recs[0].point_id, "00000000-0000-0000-0000-000000000000", document_point_id("d")])
    assert list(payloads) == [recs[0].point_id]  # missing ids and the marker are absent
    assert payloads[recs[0].point_id]["page_number"] == 1
    assert payloads[recs[0].point_id]["kind"] == "page"
    by_id = {r.point_id: r for r in recs}
    seen = list(store.iter_pages(batch_size=2))  # several scroll pages
    assert sorted(p.point_id for p in seen) == sorted(by_id)
    for p in seen:
        assert p.tokens.dtype == np.float32 and p.tokens.shape == (24, DIM) and p.pooled is None
        np.testing.assert_allclose(p.tokens, by_id[p.point_id].vectors, rtol=1e-3, atol=1e-3)  # fp16 storage
        assert p.payload["doc_id"] == "d"
    assert all(p.tokens is None and p.pooled is None for p in store.iter_pages(vectors=()))
    both = {p.point_id: p for p in store.iter_pages(vectors=("tokens", "pooled"))}
    for pid, rec in by_id.items():
        np.testing.assert_allclose(both[pid].pooled, rec.pooled, rtol=1e-6)  # pooled are kept as float32
        assert both[pid].tokens.shape == (24, DIM)
    with pytest.raises(ValueError, match="unknown vector"):
        list(store.iter_pages(vectors=("colours",)))


def test_non_finite_vectors_refused_and_nothing_written(store):
    good = page("d", 1)
    bad = page("d", 2)
    bad.vectors[3, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        store.upsert_pages([good, bad])
    bad_pooled = page("d", 3)
    bad_pooled.pooled[0, 0] = np.inf
    with pytest.raises(ValueError, match="pooled"):
        store.upsert_pages([bad_pooled])
    with pytest.raises(ValueError, match="shape"):
        store.upsert_pages([PageRecord(page_point_id("d", 4), np.zeros((3, 64), np.float32), {"doc_id": "d"})])
    assert store.count_pages() == 0


def test_pooled_is_optional_and_markers_have_no_vectors(store):
    with_pooled = page("d", 1)
    without = page("d", 2, pooled=False)
    store.upsert_pages([with_pooled, without])
    store.mark_document_complete(info("d", 2))
    query = without.vectors[:5]
    assert [pid for pid, _ in store.prefetch(query, 10)] == [with_pooled.point_id]
    top = store.prefetch(query, 10, using="tokens")
    assert top[0][0] == without.point_id and len(top) == 2  # the marker never shows up
    assert store.count_pages() == 2


def test_prefetch_filters(store):
    ingest(store, "en-doc", 2, lang="en")
    ingest(store, "fr-doc", 2, lang="fr")
    q = page("en-doc", 1).vectors[:6]

    def ids(flt=None):
        return {pid for pid, _ in store.prefetch(q, 10, Filter.parse(flt))}

    assert ids() == {page_point_id(d, n) for d in ("en-doc", "fr-doc") for n in (1, 2)}
    fr = {page_point_id("fr-doc", n) for n in (1, 2)}
    assert ids({"metadata.lang": "fr"}) == fr
    assert ids({"doc_id": ["fr-doc", "other"]}) == fr
    assert ids({"doc_id": "fr-doc", "page_number": 2}) == {page_point_id("fr-doc", 2)}
    assert ids({"doc_id": []}) == set()
    assert store.prefetch(q, 1)[0][0] == page_point_id("en-doc", 1)


def test_delete_document_and_pages(store):
    ingest(store, "keep", 2)
    recs = ingest(store, "drop", 3)
    assert store.delete_document("drop") == 3
    assert [d.doc_id for d in store.list_documents(include_incomplete=True)] == ["keep"]
    assert store.get_document("drop") is None
    assert store.count_pages() == 2
    assert store.delete_document("drop") == 0
    store.delete_pages([page_point_id("keep", 1)])
    assert store.page_ids("keep") == [page_point_id("keep", 2)]
    assert store.list_documents()[0].pages_stored == 1
    assert store.get_payloads([recs[0].point_id]) == {}


def test_version_moves_on_every_change(store):
    seen = {store.version()}
    ingest(store, "d", 2, complete=False)
    seen.add(store.version())
    store.upsert_pages([page("d", 1)])  # same count, new content
    seen.add(store.version())
    store.delete_pages([page_point_id("d", 1)])
    seen.add(store.version())
    store.set_document_sources("d", ["/elsewhere/d.pdf"])
    seen.add(store.version())
    assert len(seen) == 5
    assert store.version() == store.version()
    assert store.count_pages() == 1 and store.list_documents(include_incomplete=True)[0].pages_stored == 1


def test_edge_version_survives_a_restart(tmp_path):
    """The version lives in the shard: reopened and untouched, a cached search index is current without a scan."""
    with EdgeStore(tmp_path / "qdrant", "c") as store:
        ingest(store, "d", 2)
        before = store.version()
    with EdgeStore(tmp_path / "qdrant", "c") as store:
        assert store.version() == before
        store.delete_pages([page_point_id("d", 1)])
        assert store.version() != before


def test_upserts_are_batched(store, monkeypatch):
    calls = []
    original = store._upsert
    monkeypatch.setattr(store, "_upsert", lambda pts: (calls.append(len(pts)), original(pts)))
    monkeypatch.setattr(store, "max_floats_per_request", 3 * 28 * DIM)  # 3 pages of 24 + 4 vectors
    store.upsert_pages([page("d", n) for n in range(1, 8)])
    assert calls == [3, 3, 1, 1]  # the last one is the state point that moves version()
    assert store.count_pages() == 7


def test_closed_store_refuses(store):
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.count_pages()
    store.close()  # idempotent


def test_thread_safety_reads_during_writes(store):
    errors = []

    def reader():
        try:
            for _ in range(20):
                store.count_pages()
                list(store.iter_pages(batch_size=4))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for n in range(1, 11):
        store.upsert_pages([page("d", n)])
    t.join()
    assert errors == [] and store.count_pages() == 10


# ---------------------------------------------------------------------------------------------
# Congruence: the same operations give the same answers on both backends.
# ---------------------------------------------------------------------------------------------


def _run_script(s) -> None:
    ingest(s, "alpha", 3, lang="en")
    ingest(s, "beta", 2, lang="fr")
    ingest(s, "gamma", 2, complete=False)
    s.upsert_pages([page("alpha", 2)])  # re-upsert
    s.upsert_pages([page("delta", 1, pooled=False)])
    s.delete_pages([page_point_id("beta", 2)])
    ingest(s, "eps", 2)
    s.delete_document("eps")


def test_backends_congruent(tmp_path):
    edge, server = make_store("edge", tmp_path), make_store("server", tmp_path)
    try:
        for s in (edge, server):
            _run_script(s)
        for incl in (False, True):
            assert edge.list_documents(incl) == server.list_documents(incl)
        ids = [page_point_id(d, n) for d in ("alpha", "beta", "gamma", "delta") for n in (1, 2, 3)]
        assert edge.get_payloads(ids) == server.get_payloads(ids)
        assert edge.count_pages() == server.count_pages() == 7
        e_pages = {p.point_id: (p.tokens, p.payload) for p in edge.iter_pages(batch_size=3)}
        s_pages = {p.point_id: (p.tokens, p.payload) for p in server.iter_pages(batch_size=3)}
        assert e_pages.keys() == s_pages.keys()
        for pid, (v, p) in e_pages.items():
            assert p == s_pages[pid][1]
            np.testing.assert_allclose(v, s_pages[pid][0], rtol=1e-3, atol=2e-3)
        q = page("alpha", 2).vectors[:8]
        for flt in (None, {"metadata.lang": "en"}, {"doc_id": ["beta", "gamma"]}):
            for using in ("pooled", "tokens"):
                e = edge.prefetch(q, 5, Filter.parse(flt), using=using)
                s = server.prefetch(q, 5, Filter.parse(flt), using=using)
                assert [i for i, _ in e] == [i for i, _ in s], (flt, using)
                np.testing.assert_allclose([x for _, x in e], [x for _, x in s], rtol=1e-2, atol=0.5)
    finally:
        edge.close()
        server.close()


# ---------------------------------------------------------------------------------------------
# Edge only: persistence, the one-process lock, schema checks.
# ---------------------------------------------------------------------------------------------


def test_edge_persists_across_close_and_reopen(tmp_path):
    with EdgeStore(tmp_path, "c") as s:
        recs = ingest(s, "d", 3)
    with EdgeStore(tmp_path, "c") as s:
        assert s.count_pages() == 3
        assert s.list_documents()[0].pages_stored == 3
        got = {p.point_id: p.tokens for p in s.iter_pages()}
        np.testing.assert_allclose(got[recs[2].point_id], recs[2].vectors, atol=1e-3, rtol=1e-3)
    cfg = json.loads((tmp_path / "c" / "edge_config.json").read_text())["vectors"]
    assert cfg["tokens"]["datatype"] == "float16" and cfg["tokens"]["hnsw_config"]["m"] == 0
    assert cfg["pooled"]["multivector_config"]["comparator"] == "max_sim"


def test_edge_same_process_second_open_refused(tmp_path):
    first = EdgeStore(tmp_path, "c")
    with pytest.raises(
        StoreUnavailable, match=rf"in use by process {os.getpid()} \(this process\).*COLSMOL_QDRANT_URL"
    ):
        EdgeStore(tmp_path, "c")
    first.upsert_pages([page("d", 1)])  # the refused open did not disturb the owner
    first.close()
    with EdgeStore(tmp_path, "c") as again:  # released on close
        assert again.count_pages() == 1


def test_edge_other_process_refused_and_lock_dies_with_it(tmp_path):
    holder = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from indexer.store import EdgeStore
        s = EdgeStore(Path({str(tmp_path)!r}), "c")
        print("ready", flush=True)
        sys.stdin.readline()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(StoreUnavailable, match=rf"in use by process {child.pid}\b"):
            EdgeStore(tmp_path, "c")
    finally:
        child.kill()  # dies without closing: the kernel drops the lock
        child.wait(timeout=30)
    with EdgeStore(tmp_path, "c") as s:
        s.upsert_pages([page("d", 1)])
        assert s.count_pages() == 1
    # And the other way round: a second process refused while we hold it.
    with EdgeStore(tmp_path, "c"):
        probe = textwrap.dedent(
            f"""
            from pathlib import Path
            from indexer.errors import StoreUnavailable
            from indexer.store import EdgeStore
            try:
                EdgeStore(Path({str(tmp_path)!r}), "c")
            except StoreUnavailable as exc:
                print(exc)
            """
        )
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert f"in use by process {os.getpid()}" in out.stdout, out.stderr


def test_edge_schema_mismatch(tmp_path):
    import qdrant_edge as qe

    maxsim = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)
    shard = qe.EdgeShard.create(
        str(tmp_path / "other"),
        qe.EdgeConfig(
            vectors={"tokens": qe.EdgeVectorParams(size=64, distance=qe.Distance.Cosine, multivector_config=maxsim)}
        ),
    )
    shard.close()
    with pytest.raises(SchemaMismatch) as err:
        EdgeStore(tmp_path, "other")
    msg = str(err.value)
    assert "'other'" in msg and "size=64" in msg and "'pooled' is missing" in msg and "COLSMOL_COLLECTION" in msg
    with pytest.raises(SchemaMismatch):  # the failed open released its lock: same error, not "in use"
        EdgeStore(tmp_path, "other")
    with EdgeStore(tmp_path, "fresh") as s:  # another collection in the same data dir works
        assert s.count_pages() == 0


# ---------------------------------------------------------------------------------------------
# Server API only (local mode standing in for a server).
# ---------------------------------------------------------------------------------------------


def test_server_schema_mismatch():
    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    client.create_collection(
        "c", vectors_config={"tokens": models.VectorParams(size=128, distance=models.Distance.COSINE)}
    )
    with pytest.raises(SchemaMismatch) as err:
        ServerStore(client, "c")
    msg = str(err.value)
    assert "'c'" in msg and "distance=Cosine" in msg and "'pooled' is missing" in msg and "COLSMOL_COLLECTION" in msg


def test_server_schema_keeps_tokens_on_disk_without_a_graph():
    """At scale the server's RAM holds the pooled vectors (and their HNSW graph); the full tokens, only ever
    rescored for a query's candidates, are on disk with no graph."""
    from qdrant_client import QdrantClient

    client = QdrantClient(":memory:")
    ServerStore(client, "c")
    vectors = client.get_collection("c").config.params.vectors
    assert vectors["tokens"].on_disk is True and vectors["tokens"].hnsw_config.m == 0
    assert not vectors["pooled"].on_disk and vectors["pooled"].hnsw_config.m > 0


def test_server_version_sees_other_writers():
    from qdrant_client import QdrantClient

    client = QdrantClient(":memory:")
    api, ingester = ServerStore(client, "c"), ServerStore(client, "c")  # two "processes"
    before = api.version()
    ingester.upsert_pages([page("d", 1)])
    mid = api.version()
    ingester.upsert_pages([page("d", 1, seed=1)])  # same count, new content
    assert len({before, mid, api.version()}) == 3
    assert api.count_pages() == 1 and api.list_documents(include_incomplete=True)[0].pages_stored == 1


def test_server_unreachable_is_store_unavailable():
    with pytest.raises(StoreUnavailable, match="cannot reach"):
        ServerStore("http://127.0.0.1:9", "c", timeout=1)


def test_open_store_picks_backend(tmp_path):
    from indexer.settings import Settings

    with open_store(Settings(data_dir=tmp_path, collection="c")) as s:
        assert isinstance(s, EdgeStore) and s.shard_path == tmp_path / "qdrant" / "c"
    with pytest.raises(StoreUnavailable):
        open_store(Settings(data_dir=tmp_path, collection="c", qdrant_url="http://127.0.0.1:9"), timeout=1)


# ---------------------------------------------------------------------------------------------
# Page images.
# ---------------------------------------------------------------------------------------------


def test_page_images_roundtrip(tmp_path):
    from PIL import Image

    images = PageImageStore(tmp_path / "pages")
    pid = page_point_id("d", 1)
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((1100, 850, 3)) * 40 + 100).astype(np.uint8))
    path = images.save(pid, img)
    assert path == tmp_path / "pages" / pid[:2] / f"{pid}.webp" and images.exists(pid)
    assert images.exists(pid, "thumb")
    full = images.load(pid)
    assert full.size == (850, 1100) and full.mode == "RGB"
    assert np.abs(np.asarray(full, float) - np.asarray(img, float)).mean() < 12  # lossy, close
    assert images.load(pid, "thumb").size == (198, 256)
    assert path.stat().st_size < 1100 * 850 * 3 / 2
    images.save(pid, Image.new("RGBA", (40, 30)))  # overwrite, any mode
    assert images.load(pid).size == (40, 30)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert images.delete([pid, page_point_id("d", 9)]) == 1
    assert not images.exists(pid) and not images.exists(pid, "thumb")
    with pytest.raises(FileNotFoundError):
        images.load(pid)


def test_page_images_reject_bad_ids(tmp_path):
    images = PageImageStore(tmp_path)
    for bad in ("../etc/passwd", "a/b", "", "x"):
        with pytest.raises(ValueError):
            images.path(bad)
    with pytest.raises(ValueError):
        images.path("abcd", "huge")  # type: ignore[arg-type]


def test_get_vectors_returns_token_vectors_by_id(store):
    """The two-stage rerank fetches candidates' full vectors from the store by id."""
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((40, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    pid = page_point_id("gv-doc", 1)
    store.upsert_pages([PageRecord(pid, vecs, {"kind": "page", "doc_id": "gv-doc", "page_number": 1})])
    got = store.get_vectors([pid, page_point_id("gv-doc", 2)])
    assert list(got) == [pid]
    np.testing.assert_allclose(got[pid], vecs, atol=2e-3)
    assert store.get_vectors([]) == {}


def test_replacing_swaps_in_whole_files_and_leaves_nothing_on_failure(tmp_path) -> None:
    """indexer.disk.replacing, under page images, page features, exports and the server's advertisement."""
    from indexer.disk import replacing

    target = tmp_path / "f.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    with replacing(target) as tmp:
        assert oct(tmp.stat().st_mode & 0o777) == "0o600"
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_drop_deletes_one_collection_and_nothing_else(tmp_path):
    """``drop`` (a deleted colsmol collection) removes its points; a neighbour in the same place is untouched."""
    from qdrant_client import QdrantClient

    edge_a, edge_b = EdgeStore(tmp_path / "qdrant", "a"), EdgeStore(tmp_path / "qdrant", "b")
    client = QdrantClient(":memory:")
    server_a, server_b = ServerStore(client, "a"), ServerStore(client, "b")
    for s in (edge_a, edge_b, server_a, server_b):
        ingest(s, "d1", pages=2)
    edge_a.drop()
    server_a.drop()
    assert not (tmp_path / "qdrant" / "a").exists() and not (tmp_path / "qdrant" / "a.lock").exists()
    assert not client.collection_exists("a") and client.collection_exists("b")
    assert edge_b.count_pages() == server_b.count_pages() == 2
    with EdgeStore(tmp_path / "qdrant", "a") as again:  # the name is free again, and empty
        assert again.count_pages() == 0
    edge_b.close()


# ---------------------------------------------------------------------------------------------
# The text index: text-only pages, BM25 search, Qdrant-side fusion (both backends).
# ---------------------------------------------------------------------------------------------

TEXTS = {
    ("alpha", 1): "Quarterly revenue of the bicycle division grew in every region",
    ("alpha", 2): "Invoice INV-20231187 was paid late by the northern distributor",
    ("beta", 1): "The battery pack must be charged at room temperature",
    ("beta", 2): "Rechnungen werden monatlich bezahlt",
}


def text_payload(doc_id: str, n: int, lang: str = "en") -> dict:
    payload = dict(page(doc_id, n).payload)
    metadata = {"lang": lang} | ({"language": "de"} if (doc_id, n) == ("beta", 2) else {})
    boxes = [0, 0, 10, 10] * len(TEXTS[(doc_id, n)].split())
    return payload | {"text": TEXTS[(doc_id, n)], "word_boxes": boxes, "metadata": metadata}


def test_text_pages_are_searchable_before_their_visual_embedding(store):
    assert store.text_enabled
    store.upsert_text_pages([(page_point_id(d, n), text_payload(d, n)) for d, n in TEXTS])
    assert store.count_pages() == 4
    hits = store.text_search("INV-20231187", 5)
    assert [h for h, _ in hits][:1] == [page_point_id("alpha", 2)]
    # stemming: "charging" finds "charged"; stopwords alone find nothing
    assert [h for h, _ in store.text_search("charging batteries", 5)][:1] == [page_point_id("beta", 1)]
    assert store.text_search("the of and", 5) == []
    # a German page is stemmed as German (metadata.language), and the query is embedded in both languages
    assert "german" in store.text_languages()
    assert [h for h, _ in store.text_search("Rechnung", 5)] == [page_point_id("beta", 2)]
    # filters mean the same as in every other search
    by_beta = store.text_search("invoice revenue battery", 5, Filter.parse({"doc_id": "beta"}))
    assert [h for h, _ in by_beta] == [page_point_id("beta", 1)]
    assert store.text_search("invoice", 5, Filter.parse({"doc_id": []})) == []
    # text-only pages: listed as such, not visual, no token vectors
    docs = {d.doc_id: d for d in store.list_documents(include_incomplete=True)}
    assert {k: (d.state, d.pages_stored, d.pages_visual) for k, d in docs.items()} == {
        "alpha": ("text", 2, 0),
        "beta": ("text", 2, 0),
    }
    assert store.visual_page_count("alpha") == 0
    assert store.get_vectors([page_point_id("alpha", 1)]) == {}
    assert all(p.tokens is None and "text" not in p.payload for p in store.iter_pages())
    # the visual write replaces the point and keeps its text searchable
    rec = page("alpha", 2)
    store.upsert_pages([PageRecord(rec.point_id, rec.vectors, text_payload("alpha", 2), rec.pooled)])
    assert store.visual_page_count("alpha") == 1
    assert store.get_document("alpha").state == "visual"
    assert [h for h, _ in store.text_search("INV-20231187", 5)][:1] == [rec.point_id]
    full = store.get_payloads([rec.point_id])[rec.point_id]
    assert full["stage"] == "visual" and full["text"] == TEXTS[("alpha", 2)]
    assert [p.payload["stage"] for p in store.iter_pages() if p.tokens is not None] == ["visual"]


def test_hybrid_search_fuses_in_qdrant(store):
    ingest(store, "gamma", 3)  # visual pages without text
    store.upsert_text_pages([(page_point_id(d, n), text_payload(d, n)) for d, n in TEXTS])
    q = page("gamma", 2).vectors[:8]
    fused = store.hybrid_search(q, "INV-20231187 invoice", 5, depth=10, rrf_k=60, candidates=50)
    ids = [h for h, _ in fused]
    # the visual side's best page and the text side's best page tie at 1 / (k + 0): both on top
    assert set(ids[:2]) == {page_point_id("gamma", 2), page_point_id("alpha", 2)}
    assert fused[0][1] == pytest.approx(1 / 60, rel=1e-4)
    # no text terms: the visual side alone
    alone = store.hybrid_search(q, "the", 3, depth=10, candidates=50)
    assert [h for h, _ in alone][:1] == [page_point_id("gamma", 2)]
    flt = Filter.parse({"doc_id": "alpha"})
    only_alpha = store.hybrid_search(q, "invoice", 5, flt, depth=10, candidates=50)
    assert {h for h, _ in only_alpha} == {page_point_id("alpha", 2)}


def test_collection_without_text_index_is_searched_by_pictures(tmp_path):
    import qdrant_edge as qe

    maxsim = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)
    params = {
        "tokens": qe.EdgeVectorParams(
            size=DIM, distance=qe.Distance.Dot, multivector_config=maxsim, datatype=qe.VectorStorageDatatype.Float16,
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
        ),
        "pooled": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Dot, multivector_config=maxsim),
    }  # fmt: skip
    qe.EdgeShard.create(str(tmp_path / "old"), qe.EdgeConfig(vectors=params)).close()
    with EdgeStore(tmp_path, "old") as s:
        assert not s.text_enabled
        rec = page("d", 1)
        s.upsert_pages([PageRecord(rec.point_id, rec.vectors, text_payload("alpha", 1), rec.pooled)])
        assert s.text_search("revenue", 5) == []
        assert [h for h, _ in s.hybrid_search(rec.vectors[:4], "revenue", 3, candidates=10)] == [rec.point_id]
