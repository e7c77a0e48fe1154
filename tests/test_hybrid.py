"""Page text beside the page images: text layer and OCR, text-first ingest, search modes, fusion, text regions.

Everything is real: PDFs with real text layers (samples/, tests/fixtures/) read by pypdfium2, Tesseract for OCR,
Qdrant Edge in process (and qdrant-client's local mode standing in for a Qdrant server), the tiny random encoder.
Queries are rare words of the corpus found at test time (retriever.evaluation.known_items), never written here.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont

from indexer.errors import ConfigError, InvalidRequest
from indexer.images import PageImageStore
from indexer.ingest import Ingestor
from indexer.store import EdgeStore
from indexer.store.base import page_point_id
from indexer.text import OcrUnavailable, check_ocr, iter_page_texts, pdf_page_texts
from rag.pipeline import RAGPipeline
from retriever.evaluation.known_items import known_items, score_known_items
from retriever.hybrid import HybridSearcher, rrf, text_regions
from retriever.live_index import LiveIndex
from retriever.search import ExactSearcher
from testkit.pdfs import LETTER, PageSpec, write_pdf
from tests.conftest import tiny_settings

ROOT = Path(__file__).resolve().parent.parent
REAL_PDFS = [*sorted((ROOT / "samples").glob("*.pdf")), ROOT / "tests" / "fixtures" / "fpdf2_report.pdf"]
needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs the tesseract command")


def _corpus(tmp: Path) -> Path:
    docs = tmp / "docs"
    docs.mkdir()
    for pdf in REAL_PDFS:
        shutil.copy(pdf, docs / pdf.name)
    return docs


def _page_texts(docs: Path) -> dict[tuple[str, int], str]:
    return {(p.name, t.page_number): t.text for p in sorted(docs.glob("*.pdf")) for t in pdf_page_texts(p)}


# ---------------------------------------------------------------------------------------------- extraction
def test_text_layer_gives_words_with_page_relative_boxes() -> None:
    pages = pdf_page_texts(ROOT / "samples" / "northwind-annual-report-2023.pdf")
    assert len(pages) == 3 and all(p.source == "pdf" and p.words for p in pages)
    for p in pages:
        assert len(p.boxes) == len(p.words) == len(p.text.split())
        assert all(0 <= x0 <= x1 <= 1000 and 0 <= y0 <= y1 <= 1000 for x0, y0, x1, y1 in p.boxes)
    first = pages[0]
    assert first.boxes[0][1] < 200, "the first word of a page sits near its top (y down)"
    payload = first.payload()
    assert len(payload["word_boxes"]) == 4 * len(first.words) and payload["text_source"] == "pdf"
    cut = pdf_page_texts(ROOT / "samples" / "northwind-annual-report-2023.pdf", max_chars=40)[0]
    assert len(cut.text) <= 40 and cut.words == first.words[: len(cut.words)] and len(cut.boxes) == len(cut.words)
    # a scanned PDF has no text layer
    assert [p.source for p in pdf_page_texts(ROOT / "tests" / "fixtures" / "pillow_scans.pdf")] == ["none", "none"]


@needs_tesseract
def test_ocr_reads_a_page_without_a_text_layer(tmp_path: Path) -> None:
    image = Image.new("RGB", (1200, 500), "white")
    font = ImageFont.truetype("DejaVuSans.ttf", 64) if _has_dejavu() else ImageFont.load_default(64)
    ImageDraw.Draw(image).text((60, 180), "Invoice QX7731 overdue", fill="black", font=font)
    image.save(tmp_path / "scan.png")
    off = list(iter_page_texts(tmp_path / "scan.png", 1, ocr="off"))
    assert off[0].words == () and off[0].source == "none"
    (page,) = iter_page_texts(tmp_path / "scan.png", 1, ocr="on")
    assert page.source == "ocr" and "QX7731" in page.words
    x0, y0, x1, y1 = page.boxes[page.words.index("QX7731")]
    assert 300 < y0 < y1 < 700 and x0 < x1  # the middle band of the image, in thousandths


def _has_dejavu() -> bool:
    try:
        ImageFont.truetype("DejaVuSans.ttf", 10)
    except OSError:
        return False
    return True


def test_ocr_on_without_tesseract_is_one_clear_error(tmp_path: Path, monkeypatch, tiny_encoder) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no tesseract on it
    assert check_ocr("auto") is False and check_ocr("off") is False
    with pytest.raises(OcrUnavailable) as err:
        check_ocr("on")
    assert "tesseract" in str(err.value) and "COLSMOL_OCR=auto" in str(err.value)
    write_pdf(tmp_path / "a.pdf", [PageSpec(*LETTER, text="one")])
    with EdgeStore(tmp_path / "q", "c") as store:
        ing = Ingestor(store, tiny_encoder, PageImageStore(tmp_path / "pages"), dpi=40, ocr="on")
        with pytest.raises(OcrUnavailable):
            ing.ingest([tmp_path / "a.pdf"])
        assert store.count_pages() == 0  # refused before any work


# ---------------------------------------------------------------------------------------------- fusion pieces
def test_rrf_matches_qdrants_formula_and_keeps_side_order() -> None:
    fused = rrf([["a", "b", "c"], ["c", "d"]], k=60)
    assert [p for p, _, _ in fused] == ["c", "a", "d", "b"]  # b and d tie: the text side's page first
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 60) and fused[0][2] == (0, 1)
    assert [p for p, _, _ in rrf([["x", "y"], []], k=1)] == ["x", "y"]


def test_text_regions_cover_the_matched_words() -> None:
    (page,) = [p for p in pdf_page_texts(ROOT / "samples" / "cargo-bike-battery-safety.pdf") if p.page_number == 1]
    items = known_items({("cargo", 1): page.text}, per_page=1, phrases=False)
    word = items[0].query
    regions = text_regions(word, page.payload())
    i = page.words.index(word) if word in page.words else [w.strip(".,;:") for w in page.words].index(word)
    x0, y0, x1, y1 = (v / 1000 for v in page.boxes[i])
    assert regions and regions[0].score >= 1
    r = regions[0]
    assert r.x0 <= x0 + 1e-6 and r.y0 <= y0 + 1e-6 and r.x1 >= x1 - 1e-6 and r.y1 >= y1 - 1e-6
    assert text_regions("zzqqxx", page.payload()) == ()


# ---------------------------------------------------------------------------------------------- ingest
class GatedEncoder:
    """The real tiny encoder, whose model load waits for ``go`` (so a test can look at the store between the text
    stage and the first embedding) and which can fail after ``fail_after`` pages (a crash mid-ingest)."""

    def __init__(self, encoder, fail_after: int | None = None) -> None:
        self.encoder = encoder
        self.batch_size = 2
        self.go = threading.Event()
        self.waiting = threading.Event()
        self.pages = 0
        self.fail_after = fail_after

    def load(self):
        self.waiting.set()
        assert self.go.wait(120), "the test never released the encoder"
        return self.encoder.load()

    def preprocess_pages(self, images):
        return self.encoder.preprocess_pages(images)

    def embed_preprocessed(self, batch):
        if self.fail_after is not None and self.pages >= self.fail_after:
            raise RuntimeError("the encoder crashed")
        out = self.encoder.embed_preprocessed(batch)
        self.pages += len(out)
        return out


def _parts(tmp_path: Path, tiny_encoder, encoder=None):
    store = EdgeStore(tmp_path / "qdrant", "c")
    live = LiveIndex(store, device="cpu")
    searcher = ExactSearcher(live, tiny_encoder.embed_queries)
    images = PageImageStore(tmp_path / "pages")
    ing = Ingestor(store, encoder or tiny_encoder, images, dpi=40, batch_size=2, hooks=live, ocr="off")
    return store, live, HybridSearcher(searcher, store), ing


def test_ingest_stores_text_first_then_embeds_without_duplicates(tmp_path: Path, tiny_encoder) -> None:
    docs = _corpus(tmp_path)
    texts = _page_texts(docs)
    items = known_items(texts, per_page=1, phrases=False)
    gated = GatedEncoder(tiny_encoder)
    store, live, hybrid, ing = _parts(tmp_path, tiny_encoder, gated)
    events: list[str] = []
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(report=ing.ingest([docs], progress=lambda e: events.append(e.kind)))
    )
    worker.start()
    try:
        assert gated.waiting.wait(60)
        # Before any page is embedded: every page of the batch is stored and searchable by text.
        assert store.count_pages() == len(texts) and "pages" not in events and "text" in events
        states = {d.file_name: d.state for d in store.list_documents(include_incomplete=True)}
        assert set(states.values()) == {"text"} and len(states) == len(REAL_PDFS)
        for item in items:
            hits = hybrid.search_batch([item.query], k=3, mode="hybrid")[0]  # fuses what exists: text only
            assert (hits[0].file_name, hits[0].page_number) == (item.source, item.page_number), item
            assert hits[0].found_by == ("text",) and hits[0].regions
        assert hybrid.search_batch(["anything"], k=3, mode="visual")[0] == []
    finally:
        gated.go.set()
        worker.join(300)
    report = result["report"]
    assert report.exit_code == 0 and report.pages_embedded == len(texts)
    assert events.index("pages") > max(i for i, e in enumerate(events) if e == "text")
    assert all(d.state == "complete" for d in store.list_documents(include_incomplete=True))
    ids = [p.point_id for p in store.iter_pages(vectors=())]
    assert len(ids) == len(set(ids)) == len(texts)
    payloads = store.get_payloads(ids)
    assert {(p["file_name"], p["page_number"]): p["text"] for p in payloads.values()} == texts
    assert all(p["stage"] == "visual" for p in payloads.values())
    for item in items:  # after the embedding, the exact identifier is still found on its page
        hits = hybrid.search_batch([item.query], k=3, mode="hybrid")[0]
        assert (hits[0].file_name, hits[0].page_number) == (item.source, item.page_number)
        assert "text" in hits[0].found_by
    assert len(live.get()) == len(texts)
    store.close()


def test_interrupted_ingest_resumes_with_no_lost_text_and_no_duplicate(tmp_path: Path, tiny_encoder, monkeypatch):
    docs = _corpus(tmp_path)
    texts = _page_texts(docs)
    crashing = GatedEncoder(tiny_encoder, fail_after=2)
    crashing.go.set()
    store, live, hybrid, ing = _parts(tmp_path, tiny_encoder, crashing)
    with pytest.raises(RuntimeError, match="crashed"):
        ing.ingest([docs])
    docs_state = {d.file_name: d.state for d in store.list_documents(include_incomplete=True)}
    assert {"text", "visual"} <= set(docs_state.values())  # cut short: one file half embedded, one text only
    assert store.count_pages() == len(texts)

    import indexer.ingest as ingest_module

    read: list[int] = []
    real = ingest_module.iter_page_texts

    def counting(*args, **kwargs):  # instrumentation: the real extraction, counted
        for page in real(*args, **kwargs):
            read.append(page.page_number)
            yield page

    monkeypatch.setattr(ingest_module, "iter_page_texts", counting)
    again = Ingestor(store, tiny_encoder, ing.images, dpi=40, batch_size=2, hooks=live, ocr="off")
    report = again.ingest([docs])
    assert report.exit_code == 0 and read == [], "stored text is read back, never extracted again"
    assert report.pages_embedded == len(texts) - crashing.pages
    ids = [p.point_id for p in store.iter_pages(vectors=())]
    assert len(ids) == len(set(ids)) == len(texts)
    assert all(d.complete for d in store.list_documents(include_incomplete=True))
    got = {(p["file_name"], p["page_number"]): p["text"] for p in store.get_payloads(ids).values()}
    assert got == texts
    store.close()


# ---------------------------------------------------------------------------------------------- pipeline, modes
@pytest.fixture(scope="module")
def rag(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hybrid")
    docs = _corpus(tmp)
    pipeline = RAGPipeline.from_settings(tiny_settings(tiny_models, tmp / "data", dpi=40, ocr="off"))
    report = pipeline.ingest([docs], metadata={"team": "a"})
    assert report.exit_code == 0
    pipeline.known = known_items(_page_texts(docs))  # type: ignore[attr-defined]
    yield pipeline
    pipeline.close()


def _ranked(rag: RAGPipeline, items, mode: str) -> list[list[tuple[str, int]]]:
    rows = rag.search_batch([i.query for i in items], k=10, mode=mode)
    return [[(h.file_name or "", h.page_number or 0) for h in row] for row in rows]


def test_known_items_text_and_hybrid_find_the_page(rag: RAGPipeline, capsys) -> None:
    items = rag.known  # type: ignore[attr-defined]
    assert len(items) >= 10
    scores = {mode: score_known_items(items, _ranked(rag, items, mode)) for mode in ("visual", "text", "hybrid")}
    with capsys.disabled():
        line = ", ".join(f"{m} MRR@10 {s['mrr@10']:.3f} recall@10 {s['recall@10']:.3f}" for m, s in scores.items())
        print(f"\nknown items ({len(items)} queries; visual on random weights is the floor): {line}")
    assert scores["text"]["mrr@10"] >= 0.9 and scores["text"]["recall@10"] == 1.0
    assert scores["hybrid"]["recall@10"] == 1.0 and scores["hybrid"]["mrr@10"] >= 0.5
    assert scores["hybrid"]["mrr@10"] >= scores["visual"]["mrr@10"]


def test_every_mode_and_filter(rag: RAGPipeline) -> None:
    item = rag.known[0]  # type: ignore[attr-defined]
    doc = {d.file_name: d.doc_id for d in rag.documents()}[item.source]
    visual = rag.search(item.query, k=5, mode="visual")
    assert visual and all(h.found_by == ("visual",) for h in visual)
    text = rag.search(item.query, k=5, mode="text")
    assert text[0].found_by == ("text",) and (text[0].file_name, text[0].page_number) == (item.source, item.page_number)
    hybrid = rag.search(item.query, k=5)  # the default mode
    assert hybrid[0].point_id == text[0].point_id and set(hybrid[0].found_by) <= {"visual", "text"}
    assert any("visual" in h.found_by for h in hybrid)
    for mode in ("visual", "text", "hybrid"):  # a filter means the same in every mode
        hits = rag.search(item.query, k=10, filter={"doc_id": doc}, mode=mode)
        assert hits and {h.doc_id for h in hits} == {doc}, mode
        assert rag.search(item.query, k=10, filter={"doc_id": []}, mode=mode) == []
    with pytest.raises(InvalidRequest, match="mode must be one of visual, text, hybrid; got 'words'"):
        rag.search(item.query, mode="words")


def test_two_stage_hybrid_fuses_in_qdrant(rag: RAGPipeline, tiny_models, tmp_path) -> None:
    from retriever.search import TwoStageSearcher

    two = TwoStageSearcher(rag.store, rag.encoder.embed_queries, candidates=50)
    store_side = HybridSearcher(two, rag.store)
    items = rag.known  # type: ignore[attr-defined]
    ranked = [
        [(h.file_name or "", h.page_number or 0) for h in row]
        for row in store_side.search_batch([i.query for i in items], k=10, mode="hybrid")
    ]
    assert score_known_items(items, ranked)["recall@10"] == 1.0
    here = rag.search_batch([i.query for i in items], k=10, mode="hybrid")
    there = store_side.search_batch([i.query for i in items], k=10, mode="hybrid")
    for i, (a, b) in enumerate(zip(here, there, strict=True)):  # the same fusion in Qdrant as in process
        assert a[0].point_id == b[0].point_id, items[i]
        assert {h.point_id: h.found_by for h in a[:3]} == {h.point_id: h.found_by for h in b[:3]}


def test_http_search_modes_documents_state_and_job_stages(rag: RAGPipeline, tiny_models, tmp_path) -> None:
    from api.http.app import create_app

    item = rag.known[0]  # type: ignore[attr-defined]
    settings = tiny_settings(tiny_models, tmp_path / "unused", dpi=40, ocr="off")
    with TestClient(create_app(settings, rag)) as client:
        r = client.post("/v1/search", json={"query": item.query, "k": 3, "mode": "text"})
        assert r.status_code == 200, r.text
        top = r.json()["hits"][0]
        assert top["found_by"] == ["text"] and top["page_number"] == item.page_number and top["regions"]
        assert client.post("/v1/search", json={"query": item.query, "mode": "words"}).status_code == 422
        r = client.post("/v1/answer", json={"question": item.query, "k": 1, "mode": "text", "max_new_tokens": 2})
        assert r.status_code == 200, r.text
        assert r.json()["sources"][0]["page_number"] == item.page_number
        docs = client.get("/v1/documents").json()["items"]
        assert {d["state"] for d in docs} == {"complete"} and all(d["pages_visual"] == d["page_count"] for d in docs)
        pdf = tmp_path / "new.pdf"
        write_pdf(pdf, [PageSpec(*LETTER, text=f"upload page {i}") for i in range(3)])
        r = client.post("/v1/documents", files=[("files", ("new.pdf", pdf.read_bytes(), "application/pdf"))])
        assert r.status_code in (200, 202), r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("done", "failed"):
            assert job["stage"] in ("text", "visual") and time.monotonic() < deadline
            time.sleep(0.05)
        assert job["state"] == "done" and job["stage"] == "done"
        assert job["pages_text"] == job["pages_done"] == job["pages_total"] == 3
        assert page_point_id  # the uploaded file is searchable by its text
        hits = client.post("/v1/search", json={"query": "upload", "k": 3, "mode": "text"}).json()["hits"]
        assert hits and hits[0]["file_name"] == "new.pdf"


# ---------------------------------------------------------------------------------------------- eval --mode
@needs_tesseract
def test_eval_modes_rank_an_image_corpus_by_its_ocr_text(tmp_path: Path, tiny_encoder) -> None:
    import json as _json

    from retriever.evaluation.datasets import load_dataset
    from retriever.evaluation.modes import parse_modes
    from retriever.evaluation.runner import run_eval

    font = ImageFont.truetype("DejaVuSans.ttf", 40) if _has_dejavu() else ImageFont.load_default(40)
    words = ["Zanzibar", "Quokka", "Fjordline", "Kestrel"]  # one per page, what the page is about
    (tmp_path / "corpus").mkdir()
    rows, queries, qrels = [], [], []
    for i, word in enumerate(words):
        img = Image.new("RGB", (640, 240), "white")
        ImageDraw.Draw(img).text((30, 90), f"{word} report {i}", fill="black", font=font)
        img.save(tmp_path / "corpus" / f"p{i}.png")
        rows.append({"_id": f"p{i}", "image": f"corpus/p{i}.png"})
        queries.append({"_id": f"q{i}", "text": word})
        qrels.append({"query-id": f"q{i}", "corpus-id": f"p{i}", "score": 1})
    for name, data in (("corpus", rows), ("queries", queries), ("qrels", qrels)):
        (tmp_path / f"{name}.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in data))
    report = run_eval(load_dataset(tmp_path), tiny_encoder, "exact", [1], device="cpu",
                      modes=parse_modes("visual,text,hybrid"))  # fmt: skip
    assert [c.name for c in report.configs] == ["exact", "mode:text", "mode:hybrid"]
    assert report.config("mode:text").metrics["mrr@10"] == 1.0 and report.config("mode:text").params["text"] == "ocr"
    assert report.config("mode:hybrid").metrics["recall@1"] >= report.config("exact").metrics["recall@1"]
    with pytest.raises(ConfigError, match="words is not a mode"):
        parse_modes("visual,words")


def test_cli_modes_found_by_and_document_state(tiny_models, tmp_path: Path) -> None:
    import json as _json

    from tests.test_ingest import _cli_env, _colsmol

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "samples" / "northwind-annual-report-2023.pdf", docs)
    item = known_items(_page_texts(docs), per_page=1, phrases=False)[-1]
    env = dict(_cli_env(tiny_models, tmp_path / "data"), COLSMOL_OCR="off")
    res = _colsmol("ingest", str(docs), "--dpi", "40", "--json", env=env)
    assert res.returncode == 0, res.stderr
    hits = _json.loads(_colsmol("search", item.query, "--mode", "text", "--json", "-k", "2", env=env).stdout)
    assert hits[0]["found_by"] == ["text"] and hits[0]["page_number"] == item.page_number and hits[0]["regions"]
    listed = _json.loads(_colsmol("documents", "--json", env=env).stdout)
    assert [(d["state"], d["pages_visual"]) for d in listed] == [("complete", 3)]
    bad = _colsmol("search", item.query, "--mode", "words", env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "visual, text, hybrid" in bad.stderr
