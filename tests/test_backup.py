"""Export and import of a collection (indexer/backup.py), across both backends.

No Qdrant server runs here (no Docker, no network). The server backend is exercised through
qdrant-client's local mode, ``QdrantClient(path=...)``, handed to ``ServerStore`` as a stand-in
for a server: the same qdrant-client API calls, answered in process. Local mode keeps float32
where a server keeps fp16, so comparisons that cross into or out of it use fp16 tolerance.
What a real server does with the cluster settings cannot run here either; the last test checks
the request ``ServerStore`` hands qdrant-client (a spy on ``create_collection``), which is the
part colsmol owns.

Vectors are random normalized ``(n, 128)`` arrays and pages are ``PageRecord``s built directly:
no models are needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.backup import BackupError, export_collection, import_collection, read_manifest
from indexer.images import PageImageStore
from indexer.store import EdgeStore, ServerStore
from indexer.store.base import DIM, POOLED_VECTOR, TOKENS_VECTOR, page_point_id
from indexer.types import DocumentInfo, PageRecord

FP16_TOL = dict(rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------------------------
# a small corpus
# ---------------------------------------------------------------------------------------------


def normalized(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def info(doc_id: str, pages: int, meta: dict) -> DocumentInfo:
    return DocumentInfo(
        doc_id,
        f"/docs/{doc_id}.pdf",
        f"{doc_id}.pdf",
        pages,
        pages,
        f"hash-{doc_id}",
        "2026-11-23T10:00:00Z",
        True,
        meta,
    )


# (doc_id, pages, complete, metadata)
DOCS = [
    ("alpha", 4, True, {"lang": "en", "year": 2024}),
    ("beta", 3, True, {"lang": "fr", "draft": False}),
    ("gamma", 2, False, {"lang": "de", "score": 0.5}),  # interrupted ingest: pages, no marker
]


def fill(store, images: PageImageStore, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for doc_id, pages, complete, meta in DOCS:
        recs = []
        for n in range(1, pages + 1):
            tokens = normalized(rng, int(rng.integers(20, 70)))
            pooled = None if (doc_id == "beta" and n == 2) else normalized(rng, 3)  # one page without pooled
            pid = page_point_id(doc_id, n)
            recs.append(
                PageRecord(
                    pid,
                    tokens,
                    {
                        "doc_id": doc_id,
                        "source": f"/docs/{doc_id}.pdf",
                        "file_name": f"{doc_id}.pdf",
                        "page_number": n,
                        "page_count": pages,
                        "width": 60,
                        "height": 80,
                        "content_hash": f"hash-{doc_id}",
                        "ingested_at": "2026-11-23T10:00:00Z",
                        "metadata": meta,
                    },
                    pooled,
                )
            )
            if not (doc_id == "gamma" and n == 2):  # one page without an image
                pixels = rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)
                images.save(pid, Image.fromarray(pixels))
        store.upsert_pages(recs)
        if complete:
            store.mark_document_complete(info(doc_id, pages, meta))


def snapshot(store, images: PageImageStore) -> dict:
    """Everything a round trip must keep: documents, payloads, both vector sets, image bytes."""
    pages = {}
    for page in store.iter_pages(vectors=(TOKENS_VECTOR, POOLED_VECTOR)):
        pid = page.point_id
        files = {s: images.path(pid, s).read_bytes() if images.exists(pid, s) else None for s in ("full", "thumb")}
        pages[pid] = (page.payload, page.tokens, page.pooled, files)
    return {"documents": store.list_documents(include_incomplete=True), "pages": pages}


def maxsim_ranking(store, queries: list[np.ndarray]) -> list[list[tuple[str, float]]]:
    """Exact MaxSim with numpy over ``iter_pages`` vectors: for each query, all pages best first."""
    pages = [(p.point_id, p.tokens) for p in store.iter_pages()]
    out = []
    for q in queries:
        scored = [(pid, float((q @ v.T).max(axis=1).sum())) for pid, v in pages]
        out.append(sorted(scored, key=lambda t: (-t[1], t[0])))
    return out


def assert_same(before: dict, after: dict, *, exact: bool) -> None:
    assert after["documents"] == before["documents"]
    assert after["pages"].keys() == before["pages"].keys()
    for pid, (payload, tokens, pooled, files) in before["pages"].items():
        payload2, tokens2, pooled2, files2 = after["pages"][pid]
        assert payload2 == payload, pid
        assert tokens2.shape == tokens.shape
        if exact:
            np.testing.assert_array_equal(tokens2, tokens)
        else:
            np.testing.assert_allclose(tokens2, tokens, **FP16_TOL)
        if pooled is None:
            assert pooled2 is None, pid
        else:
            np.testing.assert_allclose(pooled2, pooled, rtol=1e-6, atol=1e-6)  # pooled is kept as float32
        assert files2 == files, pid  # byte-identical images (or both absent)


def edge(tmp_path: Path, name: str) -> tuple[EdgeStore, PageImageStore]:
    return EdgeStore(tmp_path / name / "qdrant", "colsmol"), PageImageStore(tmp_path / name / "pages")


def server(tmp_path: Path, name: str) -> tuple[ServerStore, PageImageStore, object]:
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(tmp_path / name / "local-qdrant"))  # stand-in for a server
    return ServerStore(client, "colsmol"), PageImageStore(tmp_path / name / "pages"), client


QUERIES = [normalized(np.random.default_rng(100 + i), 12) for i in range(5)]


def check_ranking(before: list, after: list, *, exact: bool) -> None:
    for b, a in zip(before, after, strict=True):
        assert [pid for pid, _ in a] == [pid for pid, _ in b]
        if exact:
            assert a == b
        else:
            np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


def test_edge_round_trip_is_lossless(tmp_path):
    src, src_images = edge(tmp_path, "src")
    fill(src, src_images)
    before, ranking = snapshot(src, src_images), maxsim_ranking(src, QUERIES)
    calls: list[tuple[str, int, int | None]] = []
    summary = export_collection(src, src_images, tmp_path / "export", progress=lambda *a: calls.append(a))
    src.close()
    assert (summary.pages, summary.documents, summary.images, summary.pooled_pages) == (9, 2, 8, 8)
    assert calls[-1] == ("documents", 2, 2) and ("pages", 9, 9) in calls

    manifest = read_manifest(tmp_path / "export")
    assert manifest["counts"] == {"pages": 9, "documents": 2, "images": 8, "pooled_pages": 8}
    assert manifest["collection"] == "colsmol" and manifest["format_version"] == 1
    assert manifest["created_at"] and manifest["colsmol_version"]

    dst, dst_images = edge(tmp_path, "dst")
    result = import_collection(dst, dst_images, tmp_path / "export")
    assert (result.pages, result.documents, result.images, result.pooled_pages) == (9, 2, 8, 8)
    # Edge keeps fp16 and the export stores fp16: nothing is lost.
    assert_same(before, snapshot(dst, dst_images), exact=True)
    check_ranking(ranking, maxsim_ranking(dst, QUERIES), exact=True)
    assert [d.doc_id for d in dst.list_documents()] == ["alpha", "beta"]
    assert not dst.get_document("gamma").complete
    # Pooled vectors came back: the pooled prefetch finds the pages that had them, only those.
    found = {pid for pid, _ in dst.prefetch(QUERIES[0], 100)}
    assert found == {pid for pid, (_, _, pooled, _) in before["pages"].items() if pooled is not None}
    dst.close()


def test_edge_to_server_api(tmp_path):
    src, src_images = edge(tmp_path, "src")
    fill(src, src_images, seed=1)
    before, ranking = snapshot(src, src_images), maxsim_ranking(src, QUERIES)
    export_collection(src, src_images, tmp_path / "export", pages_per_shard=4)  # several shards
    src.close()
    assert len(list((tmp_path / "export" / "points").glob("*.jsonl"))) == 3

    dst, dst_images, client = server(tmp_path, "dst")
    import_collection(dst, dst_images, tmp_path / "export")
    # fp16 values written to a float32 store read back unchanged.
    assert_same(before, snapshot(dst, dst_images), exact=True)
    check_ranking(ranking, maxsim_ranking(dst, QUERIES), exact=False)
    dst.close()
    client.close()


def test_server_api_to_edge(tmp_path):
    src, src_images, client = server(tmp_path, "src")
    fill(src, src_images, seed=2)
    before, ranking = snapshot(src, src_images), maxsim_ranking(src, QUERIES)
    export_collection(src, src_images, tmp_path / "export")
    src.close()
    client.close()

    dst, dst_images = edge(tmp_path, "dst")
    import_collection(dst, dst_images, tmp_path / "export")
    # Local mode kept float32; the export (and Edge) keep fp16, as a real server does.
    assert_same(before, snapshot(dst, dst_images), exact=False)
    check_ranking(ranking, maxsim_ranking(dst, QUERIES), exact=False)
    dst.close()


# ---------------------------------------------------------------------------------------------
# refusals and damage
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path) -> Path:
    src, src_images = edge(tmp_path, "src")
    fill(src, src_images)
    export_collection(src, src_images, tmp_path / "export")
    src.close()
    return tmp_path / "export"


def test_import_refuses_a_non_empty_store_unless_merging(tmp_path, exported):
    dst, dst_images = edge(tmp_path, "dst")
    rng = np.random.default_rng(9)
    other = PageRecord(page_point_id("other", 1), normalized(rng, 10), {"doc_id": "other", "source": "/o.pdf"})
    dst.upsert_pages([other])
    with pytest.raises(BackupError, match="not empty"):
        import_collection(dst, dst_images, exported)
    assert dst.count_pages() == 1  # nothing written
    import_collection(dst, dst_images, exported, allow_merge=True)
    assert dst.count_pages() == 10
    import_collection(dst, dst_images, exported, allow_merge=True)  # idempotent: same ids overwrite
    assert dst.count_pages() == 10
    dst.close()


def test_an_interrupted_import_resumes_when_run_again(tmp_path, exported, monkeypatch):
    """Killed half way (here: the progress callback raises after the first batch), the same import finishes when
    run again, without --merge; another export into that collection is still refused."""
    import indexer.backup

    monkeypatch.setattr(indexer.backup, "IMPORT_BATCH", 2)  # several batches from this small export
    dst, dst_images = edge(tmp_path, "dst")

    def die(stage: str, done: int, total: int | None) -> None:
        if stage == "pages" and done:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        import_collection(dst, dst_images, exported, progress=die)
    counts = json.loads((exported / "manifest.json").read_text())["counts"]
    assert 0 < dst.count_pages() < counts["pages"] and dst.list_documents() == []  # no document marked complete
    result = import_collection(dst, dst_images, exported)  # plain rerun
    assert result.pages == dst.count_pages() == counts["pages"]
    assert len(dst.list_documents()) == counts["documents"]
    with pytest.raises(BackupError, match="already imported"):
        import_collection(dst, dst_images, exported)
    dst.close()


def test_export_refuses_a_non_empty_folder(tmp_path):
    src, src_images = edge(tmp_path, "src")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(BackupError, match="not empty"):
        export_collection(src, src_images, tmp_path / "busy")
    src.close()


def _fresh(tmp_path: Path, name: str):
    return edge(tmp_path, name)


def test_missing_manifest_is_named(tmp_path, exported):
    (exported / "manifest.json").unlink()
    dst, dst_images = _fresh(tmp_path, "dst")
    with pytest.raises(BackupError, match=r"manifest\.json is missing"):
        import_collection(dst, dst_images, exported)
    dst.close()


def test_corrupt_manifest_is_named(tmp_path, exported):
    (exported / "manifest.json").write_text("{not json")
    dst, dst_images = _fresh(tmp_path, "dst")
    with pytest.raises(BackupError, match=r"manifest\.json is corrupt"):
        import_collection(dst, dst_images, exported)
    dst.close()


def test_newer_format_is_refused(tmp_path, exported):
    m = json.loads((exported / "manifest.json").read_text())
    m["format_version"] = 99
    (exported / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BackupError, match="format version 99"):
        read_manifest(exported)


def test_corrupt_point_file_is_named_and_nothing_written(tmp_path, exported):
    shard = next((exported / "points").glob("*.jsonl"))
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    dst, dst_images = _fresh(tmp_path, "dst")
    with pytest.raises(BackupError, match=rf"{shard.name} is corrupt"):
        import_collection(dst, dst_images, exported)
    assert dst.count_pages() == 0
    dst.close()


def test_missing_point_file_is_named(tmp_path, exported):
    shard = next((exported / "points").glob("*.jsonl"))
    shard.unlink()
    with pytest.raises(BackupError, match=rf"{shard.name} is missing"):
        read_manifest(exported)


def test_missing_or_corrupt_image_is_named(tmp_path, exported):
    img = sorted((exported / "images").rglob("*.thumb.webp"))[0]
    img.write_bytes(b"garbage")
    dst, dst_images = _fresh(tmp_path, "dst")
    with pytest.raises(BackupError, match=rf"{img.name} is corrupt"):
        import_collection(dst, dst_images, exported)
    dst.close()
    img.unlink()
    dst, dst_images = _fresh(tmp_path, "dst2")
    with pytest.raises(BackupError, match=rf"{img.name} is missing"):
        import_collection(dst, dst_images, exported)
    dst.close()


# ---------------------------------------------------------------------------------------------
# cluster settings reach the collection-creation request
# ---------------------------------------------------------------------------------------------


def test_cluster_settings_pass_through_to_create_collection(tmp_path):
    """A spy on a local-mode client's ``create_collection``: the kwargs are what a server receives
    in ``PUT /collections/{name}`` (no server or cluster can run here, so that is mocked)."""
    from qdrant_client import QdrantClient

    client = QdrantClient(":memory:")
    seen: list[tuple[tuple, dict]] = []
    real = client.create_collection

    def spy(*args, **kwargs):
        seen.append((args, kwargs))
        return real(*args, **kwargs)

    client.create_collection = spy  # type: ignore[method-assign]
    store = ServerStore(client, "clustered", shard_number=6, replication_factor=2, write_consistency_factor=2)
    assert len(seen) == 1
    args, kwargs = seen[0]
    assert (args[0] if args else kwargs["collection_name"]) == "clustered"
    assert kwargs["shard_number"] == 6
    assert kwargs["replication_factor"] == 2
    assert kwargs["write_consistency_factor"] == 2
    tokens = kwargs["vectors_config"][TOKENS_VECTOR]
    assert tokens.size == DIM and tokens.hnsw_config.m == 0
    # Opening an existing collection never re-creates it.
    ServerStore(client, "clustered", shard_number=1)
    assert len(seen) == 1
    store.close()
    client.close()
