"""Folder ingest end to end: real PDFs rendered by pypdfium2, tiny real encoder, real Qdrant stores."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.images import PageImageStore
from indexer.ingest import Ingestor, parse_metadata
from indexer.store import EdgeStore, ServerStore
from indexer.store.base import page_point_id
from testkit.pdfs import LETTER, PageSpec, mixed_pages, write_pdf

FIXTURES = Path(__file__).parent / "fixtures"


class CountingEncoder:
    """The real tiny encoder, with a count of the pages it was asked to embed (instrumentation, not a mock)."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.pages = 0
        self.batch_size = encoder.batch_size

    def load(self):
        return self.encoder.load()

    def preprocess_pages(self, images):
        return self.encoder.preprocess_pages(images)

    def embed_preprocessed(self, batch):
        out = self.encoder.embed_preprocessed(batch)
        self.pages += len(out)
        return out


def _corpus(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    write_pdf(docs / "mixed.pdf", mixed_pages())
    write_pdf(docs / "sub" / "two.pdf", [PageSpec(*LETTER, text="alpha"), PageSpec(*LETTER, text="beta")])
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(docs / "photo.png")
    frames = [Image.new("RGB", (200, 260), c) for c in ("white", "gray", "black")]
    frames[0].save(docs / "scan.tiff", save_all=True, append_images=frames[1:])
    (docs / ".hidden.pdf").write_bytes((docs / "mixed.pdf").read_bytes())
    (docs / "notes.log").write_text("not a page")
    for name in ("corrupt.pdf", "truncated.pdf", "encrypted_secret.pdf", "zero_pages.pdf", "empty.pdf"):
        shutil.copy(FIXTURES / name, docs / name)
    os.symlink(docs, docs / "sub" / "loop")
    return docs


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    if request.param == "edge":
        s = EdgeStore(tmp_path / "qdrant", "test")
    else:
        # No Qdrant server runs here: qdrant-client's local mode stands in for the server API.
        from qdrant_client import QdrantClient

        s = ServerStore(QdrantClient(path=str(tmp_path / "local")), "test")
    yield s
    s.close()


def _ingestor(store, tiny_encoder, tmp_path, **kw) -> tuple[Ingestor, CountingEncoder]:
    enc = CountingEncoder(tiny_encoder)
    images = PageImageStore(tmp_path / "pages")
    return Ingestor(store, enc, images, dpi=50, batch_size=3, pool=lambda v: v[::8].copy(), **kw), enc


def test_folder_ingest_incremental_and_bad_files(store, tiny_encoder, tmp_path) -> None:
    docs = _corpus(tmp_path)
    ing, enc = _ingestor(store, tiny_encoder, tmp_path)
    report = ing.ingest([docs], metadata={"team": "a"})

    by_name = {Path(f.path).name: f for f in report.files}
    assert by_name["mixed.pdf"].status == "indexed" and by_name["mixed.pdf"].pages == 5
    assert by_name["two.pdf"].pages == 2
    assert by_name["scan.tiff"].pages == 3  # a multi-page TIFF gives several pages
    assert by_name["photo.png"].pages == 1
    assert ".hidden.pdf" not in by_name
    assert by_name["notes.log"].status == "skipped"
    reasons = {n: by_name[n].error for n in by_name if by_name[n].status == "failed"}
    assert reasons == {
        "corrupt.pdf": reasons["corrupt.pdf"],
        "truncated.pdf": reasons["truncated.pdf"],
        "encrypted_secret.pdf": "encrypted: needs a password",
        "zero_pages.pdf": "no pages",
        "empty.pdf": "empty file",
    }
    assert "corrupt" in reasons["corrupt.pdf"] and "truncated" in reasons["truncated.pdf"]
    assert report.exit_code == 1
    assert report.pages_embedded == enc.pages == 11

    listed = {d.file_name: d for d in store.list_documents()}
    assert set(listed) == {"mixed.pdf", "two.pdf", "photo.png", "scan.tiff"}
    assert all(d.complete and d.pages_stored == d.page_count for d in listed.values())
    assert store.count_pages() == 11

    # The payload carries everything a hit needs, and the page image is stored.
    doc = listed["two.pdf"]
    pid = page_point_id(doc.doc_id, 2)
    payload = store.get_payloads([pid])[pid]
    assert payload["page_number"] == 2 and payload["page_count"] == 2 and payload["file_name"] == "two.pdf"
    assert payload["metadata"] == {"team": "a"} and payload["content_hash"].startswith(doc.doc_id)
    assert payload["width"] > 0 and payload["height"] > 0
    assert ing.images.load(pid).size == (payload["width"], payload["height"])

    # Second run: nothing is embedded, nothing duplicated.
    again = ing.ingest([docs])
    assert enc.pages == 11 and again.pages_embedded == 0
    assert {Path(f.path).name for f in again.files if f.status == "unchanged"} == set(listed)
    assert store.count_pages() == 11


def test_changed_file_reindexed_and_stale_pages_gone(store, tiny_encoder, tmp_path) -> None:
    path = write_pdf(tmp_path / "report.pdf", [PageSpec(*LETTER, text="v1")] * 3)
    ing, _ = _ingestor(store, tiny_encoder, tmp_path)
    ing.ingest([path])
    (old,) = store.list_documents()
    old_ids = store.page_ids(old.doc_id)
    assert len(old_ids) == 3 and all(ing.images.exists(p) for p in old_ids)

    write_pdf(path, [PageSpec(*LETTER, text="v2")] * 2)
    report = ing.ingest([path])
    assert report.files[0].status == "indexed"
    (new,) = store.list_documents()
    assert new.doc_id != old.doc_id and new.page_count == 2
    assert store.page_ids(old.doc_id) == [] and store.count_pages() == 2
    assert not any(ing.images.exists(p) for p in old_ids)


def test_prune_and_delete(store, tiny_encoder, tmp_path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "other").mkdir()
    a = write_pdf(tmp_path / "docs" / "a.pdf", [PageSpec(*LETTER, text="a")])
    write_pdf(tmp_path / "docs" / "b.pdf", [PageSpec(*LETTER, text="b")] * 2)
    c = write_pdf(tmp_path / "other" / "c.pdf", [PageSpec(*LETTER, text="c")])
    ing, _ = _ingestor(store, tiny_encoder, tmp_path)
    ing.ingest([tmp_path / "docs", c])
    a.unlink()
    c.unlink()
    # Pruning a folder only removes vanished files from under that folder: c.pdf lives elsewhere.
    report = ing.ingest([tmp_path / "docs"], prune=True)
    assert len(report.pruned) == 1
    assert sorted(d.file_name for d in store.list_documents()) == ["b.pdf", "c.pdf"]
    assert len(ing.ingest([c.parent], prune=True).pruned) == 1
    (left,) = store.list_documents()
    assert left.file_name == "b.pdf"
    assert ing.delete(left.doc_id) == 2
    assert store.list_documents() == [] and store.count_pages() == 0


def test_encrypted_with_password(store, tiny_encoder, tmp_path) -> None:
    ing, _ = _ingestor(store, tiny_encoder, tmp_path, password="secret")
    report = ing.ingest([FIXTURES / "encrypted_secret.pdf"])
    assert report.files[0].status == "indexed" and report.exit_code == 0


def test_parse_metadata_rejects_bad_pairs() -> None:
    from indexer.errors import ColsmolError

    with pytest.raises(ColsmolError, match="key=value"):
        parse_metadata(["novalue"])


def _cli_env(tiny_models, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        COLSMOL_DATA_DIR=str(data_dir),
        COLSMOL_ENCODER_MODEL=str(tiny_models["encoder"]),
        COLSMOL_GENERATOR_MODEL=str(tiny_models["generator"]),
        COLSMOL_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
    )
    return env


def _colsmol(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_kill_9_mid_ingest_then_resume(tiny_models, tmp_path) -> None:
    """kill -9 in the middle of an ingest, run again: everything stored once, every document complete."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        write_pdf(docs / f"d{i}.pdf", [PageSpec(*LETTER, text=f"doc {i} page {p}") for p in range(40)])
    data = tmp_path / "data"
    env = _cli_env(tiny_models, data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "ingest", str(docs), "--dpi", "40", "--batch-size", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pages_dir = data / "pages"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        stored = sum(1 for p in pages_dir.rglob("*") if p.is_file()) if pages_dir.exists() else 0
        if stored >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "ingest finished before it could be killed; make the corpus larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    res = _colsmol("ingest", str(docs), "--json", "--dpi", "40", env=env)
    assert res.returncode == 0, res.stderr
    import json

    summary = json.loads(res.stdout)
    assert summary["failed"] == 0
    assert 0 < summary["pages_embedded"] < 120, "the second run must resume, not start over"

    store = EdgeStore(data / "qdrant", "colsmol")
    try:
        listed = store.list_documents()
        assert len(listed) == 3 and all(d.complete and d.pages_stored == 40 for d in listed)
        assert store.count_pages() == 120
        ids = [p.point_id for p in store.iter_pages(vectors=())]
        assert len(ids) == len(set(ids)) == 120
    finally:
        store.close()


def test_cli_help_and_exit_codes(tiny_models, tmp_path) -> None:
    env = _cli_env(tiny_models, tmp_path / "data")
    res = _colsmol("--help", env=env)
    assert res.returncode == 0
    for cmd in ("ingest", "documents", "delete", "search", "answer", "serve"):
        assert cmd in res.stdout
    assert "Exit codes" in _colsmol("ingest", "--help", env=env).stdout

    good = write_pdf(tmp_path / "good.pdf", [PageSpec(*LETTER)])
    res = _colsmol("ingest", str(good), str(FIXTURES / "corrupt.pdf"), "--json", env=env)
    assert res.returncode == 1, res.stderr
    assert '"failed": 1' in res.stdout and '"indexed": 1' in res.stdout
    assert _colsmol("ingest", env=env).returncode == 2  # usage error
    res = _colsmol("documents", "--json", env=env)
    assert res.returncode == 0 and "good.pdf" in res.stdout


def test_cli_unreachable_model_is_one_line(tmp_path) -> None:
    env = dict(os.environ, COLSMOL_DATA_DIR=str(tmp_path), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("COLSMOL_ENCODER_MODEL", None)
    good = write_pdf(tmp_path / "good.pdf", [PageSpec(*LETTER)])
    res = _colsmol("ingest", str(good), env=env)
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "vidore/colSmol-256M" in lines[0] and "COLSMOL_ENCODER_MODEL" in lines[0]
    assert "Traceback" not in res.stderr


def test_memory_stays_bounded_on_a_long_pdf(tiny_encoder, tmp_path) -> None:
    """Pages rendered but not yet stored never exceed what the bounded queues can hold."""
    path = write_pdf(tmp_path / "long.pdf", [PageSpec(*LETTER, text=f"p{i}") for i in range(60)])
    store = EdgeStore(tmp_path / "qdrant", "test")
    try:
        ing, _ = _ingestor(store, tiny_encoder, tmp_path, queue_pages=4, preprocess_workers=1)
        ing.batch_size = 2
        state = {"rendered": 0, "stored": 0, "peak": 0}
        real_render = ing.renderer.render

        def counting_render(*args, **kwargs):
            for page in real_render(*args, **kwargs):
                state["rendered"] += 1
                state["peak"] = max(state["peak"], state["rendered"] - state["stored"])
                yield page

        ing.renderer.render = counting_render  # instrumentation around the real renderer

        def on_progress(event) -> None:
            if event.kind == "pages":
                state["stored"] += event.n

        report = ing.ingest([path], progress=on_progress)
        assert report.files[0].pages == 60 and state["stored"] == 60
        # pages queue (4) + one batch being filled + one preprocessing + write queue (4 batches)
        # + one batch being written + the page in hand: 4 + 2 * (1 + 1 + 4 + 1) + 1 = 19, not 60.
        assert state["peak"] <= 19, state
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- bad inputs


def _truncated_tiff(path: Path) -> Path:
    frames = [Image.new("RGB", (300, 400), (i * 60, 90, 120)) for i in range(4)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # PIL then fails counting frames (TypeError)
    return path


def test_a_truncated_multipage_tiff_fails_alone(store, tiny_encoder, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    _truncated_tiff(docs / "a-cut.tiff")
    write_pdf(docs / "b-good.pdf", [PageSpec(*LETTER, text="good")])
    ing, _ = _ingestor(store, tiny_encoder, tmp_path)
    report = ing.ingest([docs])
    by_name = {Path(f.path).name: f for f in report.files}
    assert by_name["a-cut.tiff"].status == "failed" and "corrupt TIFF" in by_name["a-cut.tiff"].error
    assert by_name["b-good.pdf"].status == "indexed" and report.exit_code == 1
    assert [d.file_name for d in store.list_documents()] == ["b-good.pdf"]


def test_a_file_name_that_is_not_utf8(store, tiny_encoder, tmp_path) -> None:
    """Indexed under a faithful, displayable name; --prune keeps it while it exists and forgets it once gone."""
    docs = tmp_path / "docs"
    docs.mkdir()
    raw = os.fsencode(docs) + b"/caf\xe9-latin1.pdf"
    write_pdf(Path(os.fsdecode(raw)), [PageSpec(*LETTER, text="latin-1 name")])
    ing, _ = _ingestor(store, tiny_encoder, tmp_path)
    report = ing.ingest([docs], prune=True)
    assert report.exit_code == 0 and report.files[0].path.endswith("caf\\xe9-latin1.pdf")
    (doc,) = store.list_documents()
    assert doc.file_name == "caf\\xe9-latin1.pdf" and report.pruned == []
    assert ing.ingest([docs], prune=True).files[0].status == "unchanged"
    assert len(store.list_documents()) == 1
    os.unlink(raw)
    assert len(ing.ingest([docs], prune=True).pruned) == 1 and store.list_documents() == []


def test_renames_and_identical_copies_survive_prune(store, tiny_encoder, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    old = write_pdf(docs / "old.pdf", [PageSpec(*LETTER, text="same content")] * 2)
    ing, enc = _ingestor(store, tiny_encoder, tmp_path)
    ing.ingest([docs])
    old.rename(docs / "new.pdf")
    report = ing.ingest([docs], prune=True)
    assert [f.status for f in report.files] == ["unchanged"] and report.pruned == []
    (doc,) = store.list_documents()
    assert doc.file_name == "new.pdf" and [Path(s).name for s in doc.paths] == ["new.pdf"]
    pid = page_point_id(doc.doc_id, 1)
    assert store.get_payloads([pid])[pid]["file_name"] == "new.pdf"  # hits show the current name too

    # Two identical copies are one document with both paths; removing one keeps the document.
    shutil.copy(docs / "new.pdf", docs / "copy.pdf")
    ing.ingest([docs], prune=True)
    (doc,) = store.list_documents()
    assert sorted(Path(s).name for s in doc.paths) == ["copy.pdf", "new.pdf"]
    (docs / "new.pdf").unlink()
    report = ing.ingest([docs], prune=True)
    assert report.pruned == []
    (doc,) = store.list_documents()
    assert [Path(s).name for s in doc.paths] == ["copy.pdf"] and doc.file_name == "copy.pdf"
    assert enc.pages == 2  # embedded once, whatever the renames
    (docs / "copy.pdf").unlink()
    assert len(ing.ingest([docs], prune=True).pruned) == 1 and store.list_documents() == []


def test_editing_one_of_two_copies_keeps_the_other(store, tiny_encoder, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    a = write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text="v1")])
    shutil.copy(a, docs / "b.pdf")
    ing, _ = _ingestor(store, tiny_encoder, tmp_path)
    ing.ingest([docs])
    write_pdf(a, [PageSpec(*LETTER, text="v2")] * 2)  # a.pdf edited in place; b.pdf still holds v1
    ing.ingest([docs])
    by_name = {d.file_name: d for d in store.list_documents()}
    assert set(by_name) == {"a.pdf", "b.pdf"}
    assert by_name["a.pdf"].page_count == 2 and [Path(s).name for s in by_name["b.pdf"].paths] == ["b.pdf"]


def test_one_password_for_a_folder_of_encrypted_and_owner_only_pdfs(store, tiny_encoder, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("encrypted_secret.pdf", "owner_password_only.pdf"):
        shutil.copy(FIXTURES / name, docs / name)
    ing, _ = _ingestor(store, tiny_encoder, tmp_path, password="secret")
    report = ing.ingest([docs])
    assert [(Path(f.path).name, f.status) for f in report.files] == [
        ("encrypted_secret.pdf", "indexed"),
        ("owner_password_only.pdf", "indexed"),
    ]


def test_animated_images_give_their_first_frame(store, tiny_encoder, tmp_path) -> None:
    frames = [Image.new("RGB", (120, 160), c) for c in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:])
    ing, _ = _ingestor(store, tiny_encoder, tmp_path)
    report = ing.ingest([tmp_path / "anim.png", tmp_path / "anim.webp"])
    assert [(f.status, f.pages) for f in report.files] == [("indexed", 1), ("indexed", 1)]


def test_stale_temporary_images_are_removed(store, tiny_encoder, tmp_path) -> None:
    ing, _ = _ingestor(store, tiny_encoder, tmp_path)
    ing.images.tmp_dir.mkdir(parents=True)
    stale = ing.images.tmp_dir / "ab12.webp.x1y2.tmp"
    fresh = ing.images.tmp_dir / "cd34.webp.z3.tmp"
    stale.write_bytes(b"half an image")
    fresh.write_bytes(b"a live writer's")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    ing.ingest([write_pdf(tmp_path / "a.pdf", [PageSpec(*LETTER)])])
    assert not stale.exists() and fresh.exists()


def test_model_load_time_is_not_counted_in_pages_per_second(tiny_models, store, tmp_path) -> None:
    from indexer.models.encoder import ColSmolEncoder

    enc = ColSmolEncoder(tiny_models["encoder"], device="cpu", batch_size=2)  # not loaded yet
    ing = Ingestor(store, enc, PageImageStore(tmp_path / "pages"), dpi=40, batch_size=2)
    report = ing.ingest([write_pdf(tmp_path / "a.pdf", [PageSpec(*LETTER)] * 3)])
    assert report.load_seconds > 0 and report.pages_embedded == 3
    assert report.pages_per_second == pytest.approx(3 / (report.seconds - report.load_seconds))


def test_page_images_encoded_in_parallel_each_land_with_their_own_point(tiny_encoder, tmp_path) -> None:
    """Four image threads, pages of different sizes in one batch: every point has its own image and thumbnail."""
    docs = tmp_path / "docs"
    docs.mkdir()
    sizes = [(200, 260), (260, 200), (120, 400), (333, 111), (90, 90), (400, 120), (150, 150)]
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (30 * i, 255 - 30 * i, 128)).save(docs / f"p{i}.png")
    store = EdgeStore(tmp_path / "qdrant", "test")
    try:
        ing, _ = _ingestor(store, tiny_encoder, tmp_path, image_workers=4)
        assert ing.image_workers == 4
        assert ing.ingest([docs]).pages_embedded == len(sizes)
        for doc in store.list_documents():
            pid = page_point_id(doc.doc_id, 1)
            payload = store.get_payloads([pid])[pid]
            full = ing.images.load(pid)
            assert full.size == (payload["width"], payload["height"])
            i = int(doc.file_name[1:-4])
            assert full.size == sizes[i] and full.getpixel((0, 0))[0] in range(30 * i - 3, 30 * i + 4)
            thumb = ing.images.load(pid, "thumb")
            assert max(thumb.size) <= 256 and abs(thumb.size[0] / thumb.size[1] - sizes[i][0] / sizes[i][1]) < 0.1
        assert not list((ing.images.root / ".tmp").glob("*"))
    finally:
        store.close()
