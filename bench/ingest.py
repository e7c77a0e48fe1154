"""End-to-end ingest pages/s versus the encoder's own pages/s, same pages, same batch size, same run.

The corpus is generated PDFs (testkit/pdfs.py): ``--text-pages`` Letter text pages and ``--scan-pages``
Letter scanned-style pages (a full-page 100 dpi JPEG each), cut into documents of ``--doc-pages`` pages,
text and scanned documents interleaved. Measured, in this order, with one loaded encoder:

1. stage breakdown, each stage alone on one thread: render (pdfium, ``--dpi``) of every corpus page,
   Idefics3 preprocessing of the first ``--baseline-pages`` pages, and the writer's per-page work
   (WebP page image + thumbnail, prefetch pooling, Edge upsert) into a scratch store;
2. encoder only: those ``--baseline-pages`` pages, preprocessed up front, forward only, ``--batch`` pages
   a batch (after one warm-up batch);
3. end to end: ``Ingestor`` (render thread, preprocessing pool, encoder, writer thread) over the whole
   corpus into a fresh EdgeStore + PageImageStore in a temporary directory, with the production
   prefetch pooling callback. pages/s = pages embedded / ``IngestReport.seconds``.

4. ``--reference-pages N`` (on a CPU, default: the whole corpus): the loop from colpali-engine's README over
   the same PDFs, ``ColIdefics3.from_pretrained`` (fp32 eager on a CPU, bf16 on CUDA) and
   ``ColIdefics3Processor.process_images`` on ``--batch`` rendered pages, ``model(**batch)`` under
   ``torch.no_grad()``; nothing stored. pages/s = pages / wall seconds including rendering.

The ratio (3) / (2) is the target (at least 0.90, BENCHMARKS.md); on a CPU also (3) / (4) (at least 1.2).
``--runtime`` (default ``auto``) and ``--longest-edge`` set the encoder as ``COLSMOL_ENCODER_RUNTIME`` and
``COLSMOL_PAGE_LONGEST_EDGE`` do (the reference loop gets the same longest edge). On the GPU machine, with
the full-size random checkpoint (bench/make_checkpoints.py):

    python bench/make_checkpoints.py /tmp/ckpt
    python bench/ingest.py --model /tmp/ckpt/encoder --out ingest.json

On a 2-core CPU a full-size page takes seconds to tens of seconds: use a few pages, e.g.

    python bench/ingest.py --model /tmp/ckpt/encoder --device cpu --text-pages 4 \
        --scan-pages 2 --doc-pages 3 --batch 2 --baseline-pages 4 --longest-edge 1024

``--smoke`` runs a few pages on CPU with whatever model is given, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_corpus(root: Path, text_pages: int, scan_pages: int, doc_pages: int) -> list[tuple[Path, str, int]]:
    """Write the PDFs; returns ``(path, kind, pages)`` in ingest order (text and scan documents interleaved)."""
    from testkit.pdfs import LETTER, PageSpec, write_pdf

    def docs(kind: str, n: int) -> list[tuple[Path, str, int]]:
        out = []
        for d, start in enumerate(range(0, n, doc_pages)):
            k = min(doc_pages, n - start)
            scan = kind == "scan"
            # Every document gets distinct text, so distinct bytes and a distinct doc id.
            specs = [PageSpec(*LETTER, text=f"{kind} document {d} page {j + 1}", scan=scan) for j in range(k)]
            out.append((write_pdf(root / f"{kind}-{d:04d}.pdf", specs), kind, k))
        return out

    text, scan = docs("text", text_pages), docs("scan", scan_pages)
    order: list[tuple[Path, str, int]] = []
    # Spread the scanned documents evenly through the text ones.
    ti = si = 0
    while ti < len(text) or si < len(scan):
        if si < len(scan) and (ti >= len(text) or si * max(1, len(text)) <= ti * max(1, len(scan))):
            order.append(scan[si])
            si += 1
        else:
            order.append(text[ti])
            ti += 1
    return order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="encoder checkpoint directory")
    ap.add_argument("--text-pages", type=int, default=512)
    ap.add_argument("--scan-pages", type=int, default=128)
    ap.add_argument(
        "--doc-pages", type=int, default=64, help="pages per PDF (the Ingestor flushes a batch at each document end)"
    )
    ap.add_argument("--batch", type=int, default=32, help="pages per encoder forward, both measurements")
    ap.add_argument(
        "--baseline-pages", type=int, default=256, help="pages of the encoder-only and preprocess measurements"
    )
    ap.add_argument(
        "--preprocess-workers", type=int, default=None, help="Ingestor's preprocessing threads (default: its own)"
    )
    ap.add_argument("--dpi", type=int, default=150)
    ap.add_argument("--prefetch-pool", type=int, default=16, help="pool factor of the stored prefetch vectors")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runtime", default="auto", help="encoder runtime on a CPU (COLSMOL_ENCODER_RUNTIME)")
    ap.add_argument("--longest-edge", type=int, default=None, help="page longest edge (COLSMOL_PAGE_LONGEST_EDGE)")
    ap.add_argument(
        "--runtime-cache", type=Path, default=None, help="runtime choices, converted graphs (default: new temp dir)"
    )
    ap.add_argument(
        "--reference-pages", type=int, default=None, help="pages of the colpali README loop (default: all on a CPU)"
    )
    ap.add_argument("--tmp", type=Path, default=None, help="where the corpus and the stores go (default: system temp)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.smoke:
        args.text_pages, args.scan_pages, args.doc_pages, args.batch, args.baseline_pages = 12, 4, 4, 4, 8

    import torch

    from indexer.images import PageImageStore
    from indexer.ingest import Ingestor
    from indexer.models.encoder import ColSmolEncoder
    from indexer.render import iter_file_pages, make_renderer
    from indexer.store.base import page_point_id
    from indexer.store.edge import EdgeStore
    from indexer.types import PageRecord
    from retriever.pooling import prefetch_vectors

    t = time.perf_counter()
    enc = ColSmolEncoder(
        args.model,
        device=args.device,
        batch_size=args.batch,
        longest_edge=args.longest_edge,
        runtime=args.runtime,
        runtime_cache=args.runtime_cache or Path(tempfile.mkdtemp(prefix="colsmol-bench-rt-", dir=args.tmp)),
    ).load()
    load_s = time.perf_counter() - t
    runtime = enc.runtime_choice.name if enc.runtime_choice is not None else "cuda"
    print(f"encoder loaded in {load_s:.1f}s (runtime {runtime}: {enc.runtime_choice and enc.runtime_choice.reason})")
    cuda = enc.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    device_name = (
        torch.cuda.get_device_name()
        if cuda
        else f"CPU ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads)"
    )
    pool = lambda v: prefetch_vectors(v, args.prefetch_pool)  # noqa: E731 - as RAGPipeline.ingestor does (16)

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "corpus").mkdir()
        t = time.perf_counter()
        corpus = make_corpus(tmp / "corpus", args.text_pages, args.scan_pages, args.doc_pages)
        n_pages = sum(n for _, _, n in corpus)
        print(f"corpus: {len(corpus)} PDFs, {n_pages} pages, written in {time.perf_counter() - t:.1f}s", flush=True)

        # 1a. render, one thread, every page; keep the first --baseline-pages images
        renderer = make_renderer("pdfium")
        render_s = {"text": 0.0, "scan": 0.0}
        render_n = {"text": 0, "scan": 0}
        images = []
        for path, kind, _ in corpus:
            t = time.perf_counter()
            for page in iter_file_pages(path, renderer, args.dpi):
                render_s[kind] += time.perf_counter() - t
                render_n[kind] += 1
                if len(images) < args.baseline_pages:
                    images.append(page.image)
                t = time.perf_counter()
        size = images[0].size
        tiles = enc.tile_count(images[0])

        # 1b. preprocess, one thread, in encoder batches
        pre = []
        t = time.perf_counter()
        for i in range(0, len(images), args.batch):
            pre.append(enc.preprocess_pages(images[i : i + args.batch]))
        preprocess_pps = len(images) / (time.perf_counter() - t)
        tokens = int(pre[0]["attention_mask"][0].sum())

        # 2. encoder only (warm-up batch first: kernel choice, allocator)
        vectors = enc.embed_preprocessed(pre[0])
        sync()
        t = time.perf_counter()
        vectors = []
        for batch in pre:
            vectors.extend(enc.embed_preprocessed(batch))
        sync()
        encoder_pps = len(vectors) / (time.perf_counter() - t)
        del pre

        # 1c. the writer's per-page work, one thread, on those pages and vectors
        scratch = EdgeStore(tmp / "scratch-qdrant", "bench")
        scratch_images = PageImageStore(tmp / "scratch-images")
        t = time.perf_counter()
        try:
            for i in range(0, len(images), args.batch):
                recs = []
                for j in range(i, min(i + args.batch, len(images))):
                    pid = page_point_id("scratch", j + 1)
                    scratch_images.save(pid, images[j])
                    payload = {"kind": "page", "doc_id": "scratch", "page_number": j + 1, "source": "x"}
                    recs.append(PageRecord(pid, vectors[j], payload, pool(vectors[j])))
                scratch.upsert_pages(recs)
            write_pps = len(images) / (time.perf_counter() - t)
        finally:
            scratch.close()
        # 1d. page images alone (WebP + thumbnail) on the Ingestor's image threads: what the writer sustains in parallel
        from concurrent.futures import ThreadPoolExecutor

        image_workers = Ingestor(scratch, enc, scratch_images).image_workers
        with ThreadPoolExecutor(image_workers) as image_pool:
            t = time.perf_counter()
            save = scratch_images.save
            saves = [image_pool.submit(save, page_point_id("par", j + 1), im) for j, im in enumerate(images)]
            for fut in saves:
                fut.result()
            images_parallel_pps = len(images) / (time.perf_counter() - t)
        n_baseline = len(images)
        del images, vectors

        # 3. end to end through the Ingestor, fresh store
        busy = [0.0]
        embed = enc.embed_preprocessed

        def timed_embed(batch):  # time the ingest spends inside the encoder (its output is copied to host: synced)
            t0 = time.perf_counter()
            try:
                return embed(batch)
            finally:
                busy[0] += time.perf_counter() - t0

        enc.embed_preprocessed = timed_embed  # type: ignore[method-assign]
        store = EdgeStore(tmp / "qdrant", "bench")
        try:
            ing = Ingestor(
                store,
                enc,
                PageImageStore(tmp / "images"),
                dpi=args.dpi,
                batch_size=args.batch,
                preprocess_workers=args.preprocess_workers,
                pool=pool,
            )
            report = ing.ingest([p for p, _, _ in corpus])
            stored = store.count_pages()
        finally:
            store.close()
        enc.embed_preprocessed = embed  # type: ignore[method-assign]
        if report.failed or report.pages_embedded != n_pages or stored != n_pages:
            raise SystemExit(
                f"ingest incomplete: {report.pages_embedded} embedded, {stored} stored of {n_pages}; "
                f"failed: {[(f.path, f.error) for f in report.failed]}"
            )
        ingest_pps = report.pages_per_second

        # 4. the colpali-engine README loop over the same PDFs
        ref_pages = args.reference_pages if args.reference_pages is not None else (0 if cuda else n_pages)
        reference_pps = reference_loop(args, corpus, ref_pages, enc.device) if ref_pages else None

    row = {
        "pages": n_pages,
        "text_pages": args.text_pages,
        "scan_pages": args.scan_pages,
        "doc_pages": args.doc_pages,
        "page_px": list(size),
        "tiles": tiles,
        "tokens_per_page": tokens,
        "batch": args.batch,
        "preprocess_workers": ing.preprocess_workers,
        "baseline_pages": n_baseline,
        "runtime": runtime,
        "longest_edge": enc.page_longest_edge,
        "encoder_load_s": load_s,
        "ingest_pages_per_s": ingest_pps,
        "reference_loop_pages_per_s": reference_pps,
        "ingest_vs_reference": ingest_pps / reference_pps if reference_pps else None,
        "ingest_seconds": report.seconds,
        "ingest_encoder_busy_fraction": busy[0] / report.seconds,
        "encoder_only_pages_per_s": encoder_pps,
        "ratio": ingest_pps / encoder_pps,
        "render_text_pages_per_s_1thread": render_n["text"] / render_s["text"] if render_n["text"] else None,
        "render_scan_pages_per_s_1thread": render_n["scan"] / render_s["scan"] if render_n["scan"] else None,
        "preprocess_pages_per_s_1thread": preprocess_pps,
        "write_pages_per_s_1thread": write_pps,
        "image_workers": image_workers,
        "images_pages_per_s_parallel": images_parallel_pps,
    }
    result = {
        "device": device_name,
        "date": date.today().isoformat(),
        "model": args.model,
        "dtype": str(enc.model.dtype),
        "torch": torch.__version__,
        "smoke": args.smoke,
        "rows": [row],
    }
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    print(
        f"\ningest: {n_pages} pages ({args.text_pages} text + {args.scan_pages} scanned Letter, {args.dpi} dpi, "
        f"{tiles} tiles, {tokens} tokens), batch {args.batch}, {row['preprocess_workers']} preprocess workers; "
        f"encoder busy {100 * row['ingest_encoder_busy_fraction']:.0f}% of the ingest wall time; runtime {runtime}, "
        f"longest edge {row['longest_edge']} px"
    )
    print(
        "\n| pages (text + scan) | batch | ingest pages/s | encoder-only pages/s | ratio "
        "| render text / scan pages/s (1 thread) "
        "| preprocess pages/s (1 thread) | write pages/s (1 thread) | device | date |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {n_pages} ({args.text_pages} + {args.scan_pages}) | {args.batch} | {ingest_pps:.3g} | {encoder_pps:.3g} "
        f"| {row['ratio']:.2f} "
        f"| {f(row['render_text_pages_per_s_1thread'])} / {f(row['render_scan_pages_per_s_1thread'])} "
        f"| {preprocess_pps:.3g} | {write_pps:.3g} | {device_name} | {result['date']} |"
    )
    render_text, render_scan = row["render_text_pages_per_s_1thread"], row["render_scan_pages_per_s_1thread"]
    print(
        "\nstage breakdown, seconds a page, each stage alone on one thread: "
        f"render {f(render_text and 1 / render_text)} (text) / {f(render_scan and 1 / render_scan)} (scan), "
        f"preprocess {1 / preprocess_pps:.3f}, encode {1 / encoder_pps:.3f} ({runtime}, batch {args.batch}), "
        f"write {1 / write_pps:.3f}; the writer alone sustains {write_pps / encoder_pps:.1f}x the encoder's pages/s; "
        f"page images on {image_workers} threads: {images_parallel_pps:.1f} pages/s"
    )
    if reference_pps:
        print(
            f"colpali README loop: {reference_pps:.3f} pages/s; colsmol ingest {ingest_pps:.3f} pages/s = "
            f"{ingest_pps / reference_pps:.2f}x"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


def reference_loop(args: argparse.Namespace, corpus: list, pages: int, device) -> float:
    """colpali-engine's README usage over the PDFs: render, ``process_images``, ``model(**batch)``; pages/s."""
    import torch
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor

    from indexer.render import iter_file_pages, make_renderer

    cuda = device.type == "cuda"
    model = ColIdefics3.from_pretrained(
        args.model, dtype=torch.bfloat16 if cuda else torch.float32, device_map=str(device)
    ).eval()
    processor = ColIdefics3Processor.from_pretrained(args.model)
    if args.longest_edge:
        ip = processor.image_processor
        size = {**dict(ip.size), "longest_edge": args.longest_edge}
        ip.size = size if isinstance(ip.size, dict) else type(ip.size)(**size)
    renderer = make_renderer("pdfium")
    embeddings = []
    done = 0
    t = time.perf_counter()
    batch = []

    def flush() -> None:
        inputs = processor.process_images(batch).to(model.device)
        with torch.no_grad():
            out = model(**inputs)
        embeddings.extend(out.float().cpu().unbind(0))
        batch.clear()

    for path, _, _ in corpus:
        for page in iter_file_pages(path, renderer, args.dpi):
            if done >= pages:
                break
            batch.append(page.image)
            done += 1
            if len(batch) == args.batch:
                flush()
        if batch:
            flush()
        if done >= pages:
            break
    if cuda:
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
