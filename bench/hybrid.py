"""Text beside the pictures: how soon pages are searchable, what the text side costs at ingest and at search.

Corpora (fpdf2, seeded, made in a temporary directory): one ``--pdf-pages``-page PDF, and a folder of
``--folder-pages`` pages in documents of ``--doc-pages``. Every page has about ``--words`` words of running text
(a fixed vocabulary) and one identifier that appears nowhere else (``QX-<page>-<n>``), like an invoice number.

Measured in one run, with one encoder loaded before the first timing (its load time is reported apart):

1. **Time to searchable**, per corpus, ``Ingestor`` into a fresh Qdrant Edge store:
   - *text first* (this version): seconds from the start of ``ingest`` to the first page searchable by text (the
     first text batch stored; checked by a BM25 search for that page's identifier), to every page searchable by
     text (the last text batch), and to the first page embedded;
   - *baseline* (the same ``Ingestor`` into a store created without the text index, as collections were before
     it): seconds to the first page embedded, the first moment anything is searchable. The page text is still
     read there (a few ms a page, item 2), so the baseline is, if anything, a little slow.
   Each run stops at its first embedded page (embedding all of them would take hours on a CPU).
2. **Text extraction** (PDF text layer, pypdfium2) seconds per page over both corpora, and **OCR** (Tesseract,
   ``--ocr-pages`` pages rendered at 200 dpi) seconds per page.
3. **Store cost**: bytes of page text and word boxes per page in the payload (JSON), and sparse vector entries.
4. **Search**: ``--queries`` queries (page identifiers and two-word phrases) against the folder, with the exact
   searcher over a resident index; every page has a random multivector of ``--tokens`` tokens (embedding 500 pages
   for real would take hours here; MaxSim cost depends only on the shapes), queries encoded by the real encoder.
   p50 / p95 of visual, text and hybrid, interleaved, after one warm-up round.

    python bench/make_checkpoints.py /tmp/ckpt
    python bench/hybrid.py --model /tmp/ckpt/encoder --out hybrid.json

``--smoke`` runs tiny corpora to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB = (
    "revenue growth quarter region margin battery charger frame wheel cargo bicycle service warranty dealer "
    "supplier invoice payment shipment order customer report annual safety inspection contract delivery "
    "production assembly factory design engineering test quality standard market share forecast budget cost "
    "profit loss tax audit compliance policy training employee manager director board meeting schedule"
).split()


class _Stop(Exception):
    """Raised from the progress callback at the first embedded page: the run has what it measures."""


def make_pdf(path: Path, first_page: int, pages: int, words: int, seed: int) -> list[str]:
    """One PDF of ``pages`` pages; returns each page's identifier."""
    from fpdf import FPDF

    rng = random.Random(seed)
    pdf = FPDF(format="letter")
    pdf.set_auto_page_break(False)
    pdf.set_font("Helvetica", size=9)
    ids = []
    for n in range(pages):
        ident = f"QX-{first_page + n:05d}-{rng.randrange(10_000):04d}"
        ids.append(ident)
        body = [rng.choice(VOCAB) for _ in range(words)]
        body.insert(rng.randrange(len(body)), ident)
        pdf.add_page()
        pdf.set_xy(15, 15)
        pdf.multi_cell(185, 4.2, " ".join(body))
    pdf.output(str(path))
    return ids


def make_corpora(root: Path, pdf_pages: int, folder_pages: int, doc_pages: int, words: int) -> dict[str, Any]:
    one = root / "one"
    one.mkdir()
    one_ids = make_pdf(one / "long.pdf", 0, pdf_pages, words, seed=1)
    folder = root / "folder"
    folder.mkdir()
    folder_ids: list[str] = []
    for d, start in enumerate(range(0, folder_pages, doc_pages)):
        n = min(doc_pages, folder_pages - start)
        folder_ids += make_pdf(folder / f"doc{d:03d}.pdf", 100_000 + start, n, words, seed=100 + d)
    return {"pdf": (one, one_ids), "folder": (folder, folder_ids)}


def time_to_searchable(path: Path, first_id: str, encoder: Any, tmp: Path, text_index: bool, dpi: int) -> dict:
    from indexer.images import PageImageStore
    from indexer.ingest import Ingestor
    from indexer.store import EdgeStore
    from retriever.pooling import prefetch_vectors

    name = f"c{time.perf_counter_ns()}"
    if not text_index:
        _old_schema_shard(tmp / "q", name)
    store = EdgeStore(tmp / "q", name)
    ing = Ingestor(store, encoder, PageImageStore(tmp / f"p-{name}"), dpi=dpi, batch_size=encoder.batch_size,
                   pool=prefetch_vectors, ocr="off")  # fmt: skip
    marks: dict[str, float] = {}
    t0 = time.perf_counter()

    def progress(e: Any) -> None:
        now = time.perf_counter() - t0
        if e.kind == "text":
            if "first_text" not in marks:
                marks["first_text"] = now
                hits = store.text_search(first_id, 1)
                marks["first_text_found"] = float(bool(hits))
            marks["all_text"] = now
        elif e.kind == "pages":
            marks["first_visual"] = now
            raise _Stop

    try:
        ing.ingest([path], progress=progress)
    except _Stop:
        pass
    finally:
        store.close()
    return {k: round(v, 3) for k, v in marks.items()}


def _old_schema_shard(path: Path, name: str) -> None:
    """An Edge shard made as colsmol made them before the text index (no sparse ``text`` vector)."""
    import qdrant_edge as qe

    path.mkdir(parents=True, exist_ok=True)
    maxsim = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)
    hnsw0 = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)
    hnsw16 = qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000)
    vectors = {
        "tokens": qe.EdgeVectorParams(size=128, distance=qe.Distance.Dot, multivector_config=maxsim,
                                      datatype=qe.VectorStorageDatatype.Float16, hnsw_config=hnsw0),
        "pooled": qe.EdgeVectorParams(size=128, distance=qe.Distance.Dot, multivector_config=maxsim,
                                      hnsw_config=hnsw16),
    }  # fmt: skip
    qe.EdgeShard.create(str(path / name), qe.EdgeConfig(vectors=vectors)).close()


def extraction_cost(paths: list[Path], ocr_pages: int) -> dict[str, Any]:
    from indexer.render import iter_file_pages
    from indexer.text import OCR_DPI, ocr_image, pdf_page_texts, tesseract_path

    pages = 0
    t = time.perf_counter()
    texts = []
    for p in paths:
        got = pdf_page_texts(p)
        pages += len(got)
        texts += got
    layer = (time.perf_counter() - t) / max(pages, 1)
    payload_bytes = statistics.mean(len(json.dumps(x.payload())) for x in texts)
    out: dict[str, Any] = {"text_layer_s_per_page": round(layer, 5), "pages": pages,
                           "payload_bytes_per_page": round(payload_bytes)}  # fmt: skip
    if ocr_pages and tesseract_path():
        images = []
        for page in iter_file_pages(paths[0], None, OCR_DPI):
            images.append(page.image)
            if len(images) >= ocr_pages:
                break
        t = time.perf_counter()
        words = sum(len(ocr_image(im, i + 1).words) for i, im in enumerate(images))
        out["ocr_s_per_page"] = round((time.perf_counter() - t) / len(images), 3)
        out["ocr_words_per_page"] = round(words / len(images))
    return out


def search_latency(folder: Path, ids: list[str], encoder: Any, tmp: Path, tokens: int, queries: int) -> dict:
    import numpy as np

    from indexer.images import PageImageStore
    from indexer.ingest import Ingestor
    from indexer.store import EdgeStore
    from indexer.types import PageRecord
    from retriever.hybrid import HybridSearcher
    from retriever.live_index import LiveIndex
    from retriever.search import ExactSearcher

    store = EdgeStore(tmp / "q", "search")
    # The text stage of the real Ingestor stores every page's text; then each page gets a random multivector.
    ing = Ingestor(store, encoder, PageImageStore(tmp / "p-search"), ocr="off")
    marks: dict[str, bool] = {}

    def stop_at_visual(e: Any) -> None:
        if e.kind == "pages":
            marks["stopped"] = True
            raise _Stop

    try:
        ing.ingest([folder], progress=stop_at_visual)
    except _Stop:
        pass
    rng = np.random.default_rng(0)
    pids = [p.point_id for p in store.iter_pages(vectors=())]
    payloads = store.get_payloads(pids)
    records = []
    for pid in pids:
        vec = rng.standard_normal((tokens, 128)).astype(np.float32)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        records.append(PageRecord(pid, vec, payloads[pid], vec[::16].copy()))
    for start in range(0, len(records), 16):
        store.upsert_pages(records[start : start + 16])
    live = LiveIndex(store, device="cpu")
    searcher = HybridSearcher(ExactSearcher(live, encoder.embed_queries), store)
    live.load()
    rng2 = random.Random(0)
    qs = [rng2.choice(ids) for _ in range(queries // 2)]
    qs += [f"{rng2.choice(VOCAB)} {rng2.choice(VOCAB)} {rng2.choice(ids)}" for _ in range(queries - len(qs))]
    times: dict[str, list[float]] = {"visual": [], "text": [], "hybrid": []}
    for q in qs[:3]:  # warm-up
        for mode in times:
            searcher.search_batch([q], k=10, mode=mode)  # type: ignore[arg-type]
    found = 0
    for q in qs:
        for mode in times:
            t = time.perf_counter()
            hits = searcher.search_batch([q], k=10, mode=mode)[0]  # type: ignore[arg-type]
            times[mode].append(time.perf_counter() - t)
            if mode == "hybrid" and hits and q.split()[-1] in (payloads.get(hits[0].point_id, {}).get("text") or ""):
                found += 1
    store.close()

    def pct(xs: list[float], p: float) -> float:
        return round(1000 * sorted(xs)[min(len(xs) - 1, int(p * len(xs)))], 1)

    out = {m: {"p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95)} for m, v in times.items()}
    out["hybrid_over_visual_p50"] = round(out["hybrid"]["p50_ms"] / out["visual"]["p50_ms"], 3)  # type: ignore[index]
    out["identifier_on_top1_share"] = round(found / len(qs), 3)  # type: ignore[assignment]
    out["pages"] = len(pids)  # type: ignore[assignment]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="encoder checkpoint (bench/make_checkpoints.py)")
    ap.add_argument("--pdf-pages", type=int, default=100)
    ap.add_argument("--folder-pages", type=int, default=500)
    ap.add_argument("--doc-pages", type=int, default=10)
    ap.add_argument("--words", type=int, default=350)
    ap.add_argument("--dpi", type=int, default=150)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--runtime", default="fp32")
    ap.add_argument("--longest-edge", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=1030, help="tokens per page of the random multivectors")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--ocr-pages", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only-search", action="store_true", help="item 4 only (the folder corpus is still made)")
    args = ap.parse_args()
    if args.smoke:
        args.pdf_pages, args.folder_pages, args.doc_pages, args.queries, args.ocr_pages = 6, 12, 4, 6, 1
        args.tokens = 64

    from indexer.models.encoder import ColSmolEncoder

    with tempfile.TemporaryDirectory(prefix="colsmol-hybrid-") as tmp_:
        tmp = Path(tmp_)
        t = time.perf_counter()
        corpora = make_corpora(tmp, args.pdf_pages, args.folder_pages, args.doc_pages, args.words)
        made = time.perf_counter() - t
        encoder = ColSmolEncoder(args.model, device="cpu", batch_size=args.batch, runtime=args.runtime,
                                 longest_edge=args.longest_edge)  # fmt: skip
        t = time.perf_counter()
        encoder.load()
        load_s = time.perf_counter() - t
        result: dict[str, Any] = {
            "date": date.today().isoformat(),
            "machine": platform.platform(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "corpus_seconds": round(made, 1),
            "encoder_load_s": round(load_s, 2),
        }
        for name, (path, ids) in corpora.items():
            if args.only_search:
                break
            result[f"{name}_text_first"] = time_to_searchable(path, ids[0], encoder, tmp, True, args.dpi)
            result[f"{name}_baseline"] = time_to_searchable(path, ids[0], encoder, tmp, False, args.dpi)
            print(name, result[f"{name}_text_first"], result[f"{name}_baseline"], flush=True)
        pdfs = sorted(corpora["pdf"][0].glob("*.pdf")) + sorted(corpora["folder"][0].glob("*.pdf"))
        if not args.only_search:
            result["extraction"] = extraction_cost(pdfs, args.ocr_pages)
        print("extraction", result.get("extraction"), flush=True)
        folder, ids = corpora["folder"]
        result["search"] = search_latency(folder, ids, encoder, tmp, args.tokens, args.queries)
        print("search", result["search"], flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
