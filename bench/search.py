"""Search benchmark: exact MaxSim over a resident TokenIndex on synthetic ColSmol-shaped pages.

Measures, in one run, and prints only what it measured (a markdown table, plus JSON to stdout and ``--json``):

- per corpus size (``--pages 10000 100000``): start-up = TokenIndex construction from host arrays (float32 pages as
  ``store.iter_pages`` yields them, handed to ``TokenIndex.add`` in chunks of ``--chunk`` pages; generating the
  random arrays is not timed; this is NOT a build from a Qdrant store), single-query p50/p99 (kernel only and
  end to end through ``TokenIndex.score``), batched queries/s (``--batch`` queries per call), the memory-bandwidth
  bound of the bytes one pass reads (``bytes / --peak-bw``), and colpali-engine ``score_multi_vector`` on the same
  data and device (on ``--colpali-pages`` pages, scaled linearly to the corpus size; stated in the output);
- on a structured corpus of ``--recall-pages`` pages: recall@10 vs exact fp16 of int8, pool 2, pool 3 and
  two-stage (Qdrant Edge prefetch on pooled vectors + exact rerank), pooling ms/page, and Qdrant Edge's own MaxSim
  on CPU (ms per page per query) compared to ours.

On the CPU (``--device cpu``, or ``auto`` without a GPU) the script instead prints a side-by-side table of colsmol,
maxsim-cpu, colpali-engine, Qdrant Edge and an fp32 torch reference on the same vectors (``bench/search_cpu.py``);
defaults there: ``--pages 2000 10000``, ``--batch 16``, no recall section unless ``--recall-pages`` is given.

CPU smoke test: ``python bench/search.py --device cpu --pages 300 --colpali-pages 100 --edge-pages 100 --reps 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retriever.maxsim import pad_queries, topk  # noqa: E402
from retriever.pooling import pool_tokens  # noqa: E402
from retriever.token_index import TokenIndex  # noqa: E402

DIM = 128


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, iters: int, warmup: int = 2) -> list[float]:
    """Wall-clock ms of ``fn()`` per call (synchronized), ``iters`` samples after ``warmup``."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def random_queries(n: int, device: torch.device, seed: int) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    qs = []
    for _ in range(n):
        nq = int(torch.randint(20, 31, (1,), generator=g))
        qs.append(torch.nn.functional.normalize(torch.randn(nq, DIM, generator=g), dim=-1))
    return qs


# ------------------------------------------------------------------------------------------------ one size


def bench_size(n_pages: int, args: argparse.Namespace, device: torch.device) -> dict:
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(870, 1146, n_pages)
    total = int(lengths.sum())
    index = TokenIndex(device=device, dtype="fp16", initial_capacity_tokens=total, segment_tokens=args.segment_tokens)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    t_add = 0.0
    for c0 in range(0, n_pages, args.chunk):
        lens = lengths[c0 : c0 + args.chunk]
        block = torch.randn(int(lens.sum()), DIM, generator=gen, device=device)
        block = torch.nn.functional.normalize(block, dim=-1).float().cpu().numpy()  # host float32, as a store yields
        pages = np.split(block, np.cumsum(lens)[:-1])
        ids = [f"p{c0 + i:07d}" for i in range(len(pages))]
        pays = [{"doc_id": f"d{(c0 + i) // 20}", "page_number": (c0 + i) % 20 + 1} for i in range(len(pages))]
        sync(device)
        t0 = time.perf_counter()
        index.add(ids, pages, pays)
        sync(device)
        t_add += time.perf_counter() - t0
        del block, pages
    res: dict = {
        "pages": n_pages,
        "tokens": total,
        "index_bytes": index.nbytes(),
        "build_from_arrays_s": t_add,
        "build_from_arrays_pages_per_s": n_pages / t_add,
    }
    snap = index.snapshot()
    qs = random_queries(args.batch, device, args.seed + 1)
    q1, m1 = pad_queries(qs[:1], device=device)
    qb, mb = pad_queries(qs, device=device)

    def kernel(q, m):  # MaxSim of every page (segment by segment where the index is in segments) + top-k
        return topk(snap.maxsim(q, m, backend=args.backend), 10)

    k1 = timed(lambda: kernel(q1, m1), device, args.iters)
    e1 = timed(lambda: index.score(qs[:1], k=10), device, args.iters)
    kb = timed(lambda: kernel(qb, mb), device, max(3, args.iters // 5))
    eb = timed(lambda: index.score(qs, k=10), device, max(3, args.iters // 5))
    bytes_read = total * DIM * 2 + (snap.n_rows + len(snap.parts or [None])) * 8  # token rows + offsets
    bound_ms = bytes_read / args.peak_bw * 1e3
    res.update(
        single_kernel_p50_ms=pct(k1, 50),
        single_kernel_p99_ms=pct(k1, 99),
        single_e2e_p50_ms=pct(e1, 50),
        single_e2e_p99_ms=pct(e1, 99),
        batch=args.batch,
        batch_kernel_qps=args.batch / (pct(kb, 50) / 1e3),
        batch_e2e_qps=args.batch / (pct(eb, 50) / 1e3),
        bytes_read_per_pass=bytes_read,
        bandwidth_bound_ms=bound_ms,
        peak_bw=args.peak_bw,
        single_kernel_vs_bound=pct(k1, 50) / bound_ms,
    )
    # colpali-engine on a subset of the same pages, same device, scaled linearly
    if args.colpali_pages > 0:
        try:
            from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor

            sub = min(args.colpali_pages, n_pages)
            ids = snap.point_ids[:sub]
            vec = index.get_vectors(ids)
            ps = [vec[i] if device.type == "cuda" else vec[i].float() for i in ids]
            qc = [qs[0].to(device, ps[0].dtype)]
            cp = timed(
                lambda: BaseVisualRetrieverProcessor.score_multi_vector(qc, ps, batch_size=128, device=device),
                device,
                max(3, args.iters // 5),
                warmup=1,
            )
            scaled = pct(cp, 50) * n_pages / sub
            res.update(
                colpali_subset_pages=sub,
                colpali_subset_ms=pct(cp, 50),
                colpali_scaled_ms=scaled,
                speedup_vs_colpali=scaled / res["single_kernel_p50_ms"],
            )
        except Exception as exc:  # noqa: BLE001
            res["colpali_error"] = repr(exc)
    index = snap = None  # free device memory before the next size
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


# ------------------------------------------------------------------------------------------------ recall


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def structured_corpus(n_pages: int, n_queries: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Documents of 8 pages sharing topic centres; tokens = centre + noise; a query = 24 noisy tokens of a page."""
    rng = np.random.default_rng(seed)
    pages = []
    for g in range(0, n_pages, 8):
        doc = _unit(rng.standard_normal((48, DIM)))
        for _ in range(min(8, n_pages - g)):
            centres = np.concatenate([doc[rng.choice(48, 24, replace=False)], _unit(rng.standard_normal((16, DIM)))])
            n = int(rng.integers(870, 1146))
            pages.append(_unit(centres[rng.integers(0, len(centres), n)] + 0.035 * rng.standard_normal((n, DIM))))
    queries = []
    for _ in range(n_queries):
        t = pages[int(rng.integers(len(pages)))]
        sel = t[rng.choice(len(t), 24, replace=False)]
        queries.append(_unit(sel + 0.08 * rng.standard_normal(sel.shape)))
    return pages, queries


def _pool(args_: tuple[np.ndarray, int]) -> np.ndarray:
    return pool_tokens(*args_)


def pool_all(pages: list[np.ndarray], factor: int, workers: int) -> tuple[list[np.ndarray], float]:
    """Pool every page in ``workers`` processes; returns the pooled pages and the single-core ms/page."""
    t0 = time.perf_counter()
    for p in pages[:5]:
        pool_tokens(p, factor)
    ms_per_page = (time.perf_counter() - t0) * 1e3 / min(5, len(pages))
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            out = list(ex.map(_pool, [(p, factor) for p in pages], chunksize=16))
    else:
        out = [pool_tokens(p, factor) for p in pages]
    return out, ms_per_page


def recall(ref: list[list[str]], got: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(ref, got, strict=True)]))


def bench_recall(args: argparse.Namespace, device: torch.device, per_page_ms: float | None) -> dict:
    pages, queries = structured_corpus(args.recall_pages, args.recall_queries, args.seed + 7)
    ids = [f"r{i:06d}" for i in range(len(pages))]
    res: dict = {"recall_pages": len(pages), "recall_queries": len(queries)}

    def top_ids(index: TokenIndex) -> list[list[str]]:
        return [[r.point_id for r in row] for row in index.score(queries, k=10)]

    exact = TokenIndex(device=device, dtype="fp16")
    exact.add(ids, pages)
    ref = top_ids(exact)
    i8 = TokenIndex(device=device, dtype="int8")
    i8.add(ids, pages)
    res["recall_int8"] = recall(ref, top_ids(i8))
    del i8
    for f in (2, 3):
        pooled, ms = pool_all(pages, f, args.workers)
        idx = TokenIndex(device=device, dtype="fp16")
        idx.add(ids, pooled)
        res[f"recall_pool{f}"] = recall(ref, top_ids(idx))
        res[f"pool{f}_ms_per_page_1core"] = ms
        i8p = TokenIndex(device=device, dtype="int8")
        i8p.add(ids, pooled)
        res[f"recall_pool{f}_int8"] = recall(ref, top_ids(i8p))
        del idx, i8p
    # two-stage and Qdrant Edge MaxSim need a real Edge shard
    try:
        from indexer.store.base import page_point_id
        from indexer.store.edge import EdgeStore
        from indexer.types import PageRecord
        from retriever.search import TwoStageSearcher
    except Exception as exc:  # noqa: BLE001
        res["edge_error"] = repr(exc)
        return res
    pooled, ms = pool_all(pages, args.prefetch_pool, args.workers)
    res[f"pool{args.prefetch_pool}_ms_per_page_1core"] = ms
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(Path(tmp), "bench")
        try:
            pid_of = {}
            recs = []
            for i, (p, pp) in enumerate(zip(pages, pooled, strict=True)):
                pid = page_point_id(f"doc{i // 8}", i % 8 + 1)
                pid_of[pid] = ids[i]
                pl = {"kind": "page", "doc_id": f"doc{i // 8}", "page_number": i % 8 + 1, "source": "x"}
                recs.append(PageRecord(point_id=pid, vectors=p, payload=pl, pooled=pp))
            t0 = time.perf_counter()
            for c in range(0, len(recs), 64):
                store.upsert_pages(recs[c : c + 64])
            res["edge_upsert_pages_per_s"] = len(recs) / (time.perf_counter() - t0)
            # Qdrant Edge's own exact MaxSim on CPU over the full token multivectors
            nq = min(len(queries), 5)
            t0 = time.perf_counter()
            for q in queries[:nq]:
                store.prefetch(q, limit=10, using="tokens")
            edge_ms = (time.perf_counter() - t0) * 1e3 / nq
            res["edge_maxsim_ms_per_query"] = edge_ms
            res["edge_maxsim_ms_per_page"] = edge_ms / len(pages)
            if per_page_ms:
                res["speedup_vs_edge_per_page"] = res["edge_maxsim_ms_per_page"] / per_page_ms
            # two-stage: Edge prefetch on the pooled vectors, exact MaxSim rescore of the candidates in the store
            ts = TwoStageSearcher(store, candidates=args.candidates)
            t0 = time.perf_counter()
            got = [[pid_of[h.point_id] for h in hits] for hits in ts.search_vectors(queries, k=10)]
            res["two_stage_ms_per_query"] = (time.perf_counter() - t0) * 1e3 / len(queries)
            res["two_stage_candidates"] = args.candidates
            res["recall_two_stage"] = recall(ref, got)
        finally:
            store.close()
    return res


# ------------------------------------------------------------------------------------------------ report


def markdown(report: dict) -> str:
    lines = [
        f"device: {report['device']}; torch {report['torch']}; backend {report['backend']}",
        "",
        "| pages | tokens | index MB | build from arrays (s, pages/s) | 1 query p50 / p99 ms (kernel) "
        "| 1 query p50 / p99 ms (score()) | BW bound ms | p50 / bound | batch q/s (kernel / score()) "
        "| colpali scaled ms (subset) | x colpali |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["sizes"]:
        cp = (
            f"{r['colpali_scaled_ms']:.1f} ({r['colpali_subset_pages']} p)"
            if "colpali_scaled_ms" in r
            else r.get("colpali_error", "n/a")
        )
        lines.append(
            f"| {r['pages']} | {r['tokens']} | {r['index_bytes'] / 2**20:.0f} "
            f"| {r['build_from_arrays_s']:.2f}, {r['build_from_arrays_pages_per_s']:.0f} "
            f"| {r['single_kernel_p50_ms']:.2f} / {r['single_kernel_p99_ms']:.2f} "
            f"| {r['single_e2e_p50_ms']:.2f} / {r['single_e2e_p99_ms']:.2f} "
            f"| {r['bandwidth_bound_ms']:.3f} | {r['single_kernel_vs_bound']:.1f} "
            f"| {r['batch_kernel_qps']:.0f} / {r['batch_e2e_qps']:.0f} | {cp} "
            f"| {r.get('speedup_vs_colpali', float('nan')):.0f} |"
        )
    rc = report.get("recall", {})
    if rc:
        lines += ["", "| recall@10 vs exact fp16 | value |", "|---|---|"]
        for k, v in rc.items():
            lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, nargs="+", default=None, help="default 10000 100000 (GPU), 2000 10000 (CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    ap.add_argument("--batch", type=int, default=None, help="default 64 (GPU), 16 (CPU)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument(
        "--segment-tokens", type=int, default=None, help="index segments' rows; 0: one buffer (default: per device)"
    )
    ap.add_argument("--peak-bw", type=float, default=3.35e12, help="bytes/s; H100 SXM HBM3 = 3.35e12")
    ap.add_argument("--colpali-pages", type=int, default=None, help="default 2000 (GPU), 1000 (CPU)")
    ap.add_argument("--recall-pages", type=int, default=None, help="default 1000 (GPU), 0 = skipped (CPU)")
    cpu = ap.add_argument_group("CPU side by side (bench/search_cpu.py)")
    cpu.add_argument("--page-tokens", type=int, nargs="+", default=[1000], help="LO [HI]: tokens a page")
    cpu.add_argument("--query-tokens", type=int, default=20)
    cpu.add_argument("--edge-pages", type=int, default=2000, help="pages upserted into Qdrant Edge (0: skip it)")
    cpu.add_argument("--reps", type=int, default=5, help="interleaved timing rounds (slow methods: at most 3)")
    ap.add_argument("--recall-queries", type=int, default=50)
    ap.add_argument("--prefetch-pool", type=int, default=16, help="pool factor of the prefetch vectors")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads)"
    )
    on_cpu = device.type == "cpu"
    args.pages = args.pages or ([2_000, 10_000] if on_cpu else [10_000, 100_000])
    args.batch = args.batch or (16 if on_cpu else 64)
    args.colpali_pages = args.colpali_pages if args.colpali_pages is not None else (1000 if on_cpu else 2000)
    args.recall_pages = args.recall_pages if args.recall_pages is not None else (0 if on_cpu else 1000)
    if on_cpu:
        return main_cpu(args)
    report: dict = {"device": name, "torch": torch.__version__, "backend": args.backend, "sizes": []}
    for n in args.pages:
        r = bench_size(n, args, device)
        print(json.dumps(r), file=sys.stderr, flush=True)
        report["sizes"].append(r)
    biggest = report["sizes"][-1] if report["sizes"] else None
    per_page = biggest["single_kernel_p50_ms"] / biggest["pages"] if biggest else None
    if args.recall_pages > 0:
        report["recall"] = bench_recall(args, device, per_page)
    print(markdown(report))
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def main_cpu(args: argparse.Namespace) -> int:
    from bench.search_cpu import bench_cpu, markdown_cpu

    report = bench_cpu(args)
    report["command"] = " ".join(["python bench/search.py", *sys.argv[1:]])
    table = markdown_cpu(report)
    if args.recall_pages > 0:
        report["recall"] = bench_recall(args, torch.device("cpu"), None)
        table += "\n\n| recall@10 vs exact fp16 | value |\n|---|---|\n" + "\n".join(
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in report["recall"].items()
        )
    print(table)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
