"""HTTP search throughput and latency: the real app under uvicorn, concurrent clients on POST /v1/search.

The server is ``api.http.app.create_app`` with a ``RAGPipeline`` whose encoder is the real ColSmolVLM from
``--model`` (queries are embedded on every request, in the API's dynamic batches) and whose
``TokenIndex`` holds ``--pages`` synthetic pages: unit-norm random vectors of 870 to 1,145 tokens
(ColSmol's Letter/A4 range), added with ``TokenIndex.add`` as float32 host arrays. The store is an
empty Edge shard in a temporary directory; the index is marked as in step with it
(``TokenIndex.mark_synced(store.version())``), so the version check every search makes finds nothing
to do and keeps the synthetic pages. Payloads name 20 pages per document; the API's document-name
cache is filled for every document before the clock starts, as a long-running server's would be.

Clients run in ``--client-procs`` separate processes (asyncio + httpx, keep-alive connections),
``--concurrency`` requests in flight in all, each sending its next query as soon as the last one is
answered, for ``--warmup`` then ``--duration`` seconds. Only requests started and finished within the
measured window count: requests/s = those / ``--duration``; latency p50/p99 is the client's wall time
per request (HTTP and JSON included). Uvicorn runs in this process on loopback, access log off.

On the GPU machine, with the full-size random checkpoint (bench/make_checkpoints.py):

    python bench/make_checkpoints.py /tmp/ckpt
    python bench/serve.py --model /tmp/ckpt/encoder --out serve.json

``--smoke`` runs a few hundred pages for a few seconds on CPU with whatever model is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM = 128
PAGES_PER_DOC = 20
WORDS = (
    "revenue total quarterly annual report invoice tax table figure chart summary operating cost margin "
    "employees agreement signature due date amount net income balance sheet cash flow growth forecast "
    "region product segment customer contract clause liability asset depreciation audit risk"
).split()


def make_queries(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    starts = ["what is the", "which page shows the", "where is the", "how much was the", "show the"]
    return [
        f"{rng.choice(starts)} {' '.join(rng.choices(WORDS, k=rng.randint(3, 8)))} in {rng.randint(2015, 2025)}?"
        for _ in range(n)
    ]


def client_proc(
    url: str, concurrency: int, queries: list[str], k: int, t_start: float, t_end: float, offset: int
) -> list[tuple[float, float, float, int]]:
    """One client process: ``concurrency`` loops of POST /v1/search until ``t_end`` (wall clock).

    Returns ``(started, finished, latency_s, status)`` per request (wall-clock seconds)."""
    import asyncio

    import httpx

    async def run() -> list[tuple[float, float, float, int]]:
        out: list[tuple[float, float, float, int]] = []
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
            delay = t_start - time.time()
            if delay > 0:
                await asyncio.sleep(delay)

            async def loop(i: int) -> None:
                j = offset + i
                while time.time() < t_end:
                    q = queries[j % len(queries)]
                    j += concurrency
                    wall = time.time()
                    t0 = time.perf_counter()
                    try:
                        r = await client.post("/v1/search", json={"query": q, "k": 10})
                        status = r.status_code
                        if status == 200 and len(r.json()["hits"]) != 10:
                            status = -2  # a search that came back short: the index lost its pages
                    except httpx.HTTPError:
                        status = -1
                    dt = time.perf_counter() - t0
                    out.append((wall, wall + dt, dt, status))

            await asyncio.gather(*(loop(i) for i in range(concurrency)))
        return out

    return asyncio.run(run())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill_index(index, n_pages: int, chunk: int, seed: int, device):  # noqa: ANN001
    """Add ``n_pages`` synthetic pages; returns ``(tokens, doc_ids)``."""
    import numpy as np
    import torch

    from indexer.store.base import page_point_id

    rng = np.random.default_rng(seed)
    lengths = rng.integers(870, 1146, n_pages)
    gen = torch.Generator(device=device).manual_seed(seed)
    docs: list[str] = []
    for c0 in range(0, n_pages, chunk):
        lens = lengths[c0 : c0 + chunk]
        block = torch.randn(int(lens.sum()), DIM, generator=gen, device=device)
        block = torch.nn.functional.normalize(block, dim=-1).float().cpu().numpy()  # host float32, as a store yields
        pages = np.split(block, np.cumsum(lens)[:-1])
        ids, pays = [], []
        for i in range(c0, c0 + len(pages)):
            doc, page = f"synthetic{i // PAGES_PER_DOC:07d}", i % PAGES_PER_DOC + 1
            if page == 1:
                docs.append(doc)
            ids.append(page_point_id(doc, page))
            pays.append(
                {
                    "kind": "page",
                    "doc_id": doc,
                    "page_number": page,
                    "file_name": f"{doc}.pdf",
                    "source": f"/synthetic/{doc}.pdf",
                    "page_count": PAGES_PER_DOC,
                }
            )
        index.add(ids, pages, pays)
        del block, pages
    return int(lengths.sum()), docs


def pct(xs: list[float], p: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="encoder checkpoint directory")
    ap.add_argument("--pages", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight, all client processes together")
    ap.add_argument("--client-procs", type=int, default=4)
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the measured window")
    ap.add_argument("--window-ms", type=float, default=3.0, help="Settings.search_batch_window_ms")
    ap.add_argument("--max-batch", type=int, default=64, help="Settings.search_max_batch")
    ap.add_argument("--index-dtype", default="fp16", choices=["fp16", "int8"])
    ap.add_argument("--queries", type=int, default=1000, help="distinct query texts, cycled")
    ap.add_argument("--chunk", type=int, default=2048, help="pages per TokenIndex.add call")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.smoke:
        args.pages, args.concurrency, args.client_procs, args.duration, args.warmup = 200, 4, 1, 3.0, 1.0
        args.queries, args.chunk = 50, 64
    args.client_procs = max(1, min(args.client_procs, args.concurrency))

    import multiprocessing

    import httpx
    import torch
    import uvicorn

    from api.http.app import create_app
    from indexer.images import PageImageStore
    from indexer.models.encoder import ColSmolEncoder
    from indexer.settings import Settings
    from indexer.store.edge import EdgeStore
    from rag.pipeline import RAGPipeline
    from retriever.token_index import TokenIndex

    queries = make_queries(args.queries, args.seed)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        settings = Settings(
            data_dir=tmp,
            api_key=None,
            device=args.device,
            index_dtype=args.index_dtype,
            search_batch_window_ms=args.window_ms,
            search_max_batch=args.max_batch,
        )
        store = EdgeStore(tmp / "qdrant", "bench")
        encoder = ColSmolEncoder.from_settings(settings, model=args.model, query_batch_size=args.max_batch)
        pipeline = RAGPipeline(
            store,
            PageImageStore(tmp / "images"),
            encoder,
            generator=None,
            index_device=args.device,
            index_dtype=args.index_dtype,
        )
        index = TokenIndex(device=args.device, dtype=args.index_dtype, initial_capacity_tokens=args.pages * 1146)
        t = time.perf_counter()
        tokens, docs = fill_index(index, args.pages, args.chunk, args.seed, index.device)
        fill_s = time.perf_counter() - t
        index.mark_synced(store.version())  # the empty store is "in step": search's sync keeps these pages
        pipeline._index = index  # what RAGPipeline.index would have built from a store holding these pages
        cuda = index.device.type == "cuda"
        device_name = (
            torch.cuda.get_device_name(index.device)
            if cuda
            else f"CPU ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads)"
        )
        print(
            f"index: {args.pages} pages, {tokens} tokens, {index.nbytes() / 2**30:.2f} GiB {args.index_dtype} on "
            f"{index.device}, filled in {fill_s:.1f}s",
            flush=True,
        )

        app = create_app(settings, pipeline)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 600
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline or not thread.is_alive():
                    raise SystemExit("the server did not become ready")
                time.sleep(0.2)
            t = time.perf_counter()
            app.state.doc_names._lookup(docs)  # fill the document-name cache, as a warm server has it
            print(
                f"server ready on {url}; document-name cache filled ({len(docs)} documents) in "
                f"{time.perf_counter() - t:.1f}s",
                flush=True,
            )
            q_tokens = [len(v) for v in encoder.embed_queries(queries[:32])]
            r = httpx.post(f"{url}/v1/search", json={"query": queries[0], "k": 10}, timeout=60)
            if r.status_code != 200 or len(r.json()["hits"]) != 10:
                raise SystemExit(f"a first search failed: {r.status_code} {r.text[:300]}")

            per = [
                args.concurrency // args.client_procs + (i < args.concurrency % args.client_procs)
                for i in range(args.client_procs)
            ]
            t_start = time.time() + 3.0  # client processes start and import first
            t_measure = t_start + args.warmup
            t_end = t_measure + args.duration
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.client_procs, mp_context=ctx) as ex:
                futs = [
                    ex.submit(client_proc, url, c, queries, 10, t_start, t_end, 7919 * i) for i, c in enumerate(per)
                ]
                time.sleep(max(0.0, t_measure - time.time()))
                batches0 = app.state.batcher.batches
                time.sleep(max(0.0, t_end - time.time()))
                batches1 = app.state.batcher.batches
                samples = [s for f in futs for s in f.result()]
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            pipeline.close()

    window = [s for s in samples if s[0] >= t_measure and s[1] <= t_end]
    ok = [s for s in window if s[3] == 200]
    lat_ms = [s[2] * 1e3 for s in ok]
    errors = len(window) - len(ok)
    n_batches = batches1 - batches0
    row = {
        "pages": args.pages,
        "tokens": tokens,
        "index_dtype": args.index_dtype,
        "index_bytes": index.nbytes(),
        "concurrency": args.concurrency,
        "client_procs": args.client_procs,
        "window_ms": args.window_ms,
        "max_batch": args.max_batch,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "requests": len(ok),
        "errors": errors,
        "requests_per_s": len(ok) / args.duration,
        "p50_ms": pct(lat_ms, 50),
        "p90_ms": pct(lat_ms, 90),
        "p99_ms": pct(lat_ms, 99),
        "max_ms": max(lat_ms) if lat_ms else float("nan"),
        "pipeline_search_calls": n_batches,
        "mean_queries_per_call": (len(window) / n_batches) if n_batches else None,
        "query_tokens_mean": sum(q_tokens) / len(q_tokens),
        "index_fill_s": fill_s,
    }
    result = {
        "device": device_name,
        "date": date.today().isoformat(),
        "model": args.model,
        "torch": torch.__version__,
        "smoke": args.smoke,
        "rows": [row],
    }
    mq = row["mean_queries_per_call"]
    print(
        f"\nserve: {args.pages} synthetic pages ({args.index_dtype}), {args.concurrency} clients in "
        f"{args.client_procs} processes, {args.duration:.0f}s after {args.warmup:.0f}s warm-up; "
        f"{n_batches} pipeline.search calls, {mq if mq is None else round(mq, 1)} queries each on average; "
        f"queries {row['query_tokens_mean']:.0f} tokens on average; {errors} errors"
    )
    print(
        "\n| pages | concurrency | batch window ms / max | requests/s | p50 ms | p99 ms | queries per batch | errors "
        "| device | date |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.pages} | {args.concurrency} | {args.window_ms:g} / {args.max_batch} | {row['requests_per_s']:.0f} "
        f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {'n/a' if mq is None else f'{mq:.1f}'} | {errors} "
        f"| {device_name} | {result['date']} |"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if errors:
        raise SystemExit(f"{errors} requests failed")


if __name__ == "__main__":
    main()
