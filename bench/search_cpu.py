"""CPU side by side: exact MaxSim over the same synthetic pages, every method timed in one run, interleaved.

Run through ``python bench/search.py --device cpu`` (defaults: 2,000 and 10,000 pages of 1,000 unit vectors, 20-token
queries, one query and a batch of 16). Methods, each given the layout it wants, built from the same vectors:

- ``colsmol fp16`` / ``colsmol int8``: ``TokenIndex(device="cpu").score(queries, k=10)`` end to end (the compiled
  kernel when built, else the torch path; the report says which);
- ``colsmol torch fallback``: :func:`retriever.maxsim.maxsim_torch` on the same fp16 tokens, what runs without
  the extension;
- ``maxsim-cpu``: mixedbread's PyPI package on padded fp32 pages (one query per call; a batch is a loop);
  skipped with a note when it does not import;
- ``colpali-engine``: ``score_multi_vector`` on fp32 pages held on the CPU (as byaldi keeps them), on the first
  ``--colpali-pages`` pages, scaled linearly to the corpus (stated in the table);
- ``Qdrant Edge``: its own MaxSim query over the fp16 ``tokens`` multivectors in process, on the first
  ``--edge-pages`` pages (upserting is ~30 pages/s), scaled linearly (stated); a batch is 16 sequential queries;
- ``fp32 torch``: :func:`maxsim_torch` on fp32 tokens: the reference every top-10 is compared with.

Every method's time includes its top-10. Times are medians over ``--reps`` interleaved rounds (slow methods:
fewer rounds, stated in the JSON). Memory is the bytes each method holds per page for the corpus.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retriever.maxsim import maxsim_torch, topk
from retriever.token_index import TokenIndex

DIM = 128
K = 10


def make_corpus(n_pages: int, lengths: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors ``(T, DIM)`` fp32 and offsets ``(P + 1,)``; a smaller corpus is a prefix of a larger one."""
    rng = np.random.default_rng(seed)
    lo, hi = lengths
    lens = rng.integers(lo, hi + 1, n_pages) if hi > lo else np.full(n_pages, lo)
    off = torch.zeros(n_pages + 1, dtype=torch.int64)
    off[1:] = torch.from_numpy(np.cumsum(lens))
    tokens = torch.empty(int(off[-1]), DIM)
    g = torch.Generator().manual_seed(seed)
    for c in range(0, tokens.shape[0], 1 << 20):
        block = torch.randn(min(1 << 20, tokens.shape[0] - c), DIM, generator=g)
        tokens[c : c + block.shape[0]] = torch.nn.functional.normalize(block, dim=-1)
    return tokens, off


def _rss() -> int:
    """Resident bytes of this process (Linux; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def make_queries(n: int, n_tokens: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.nn.functional.normalize(torch.randn(n, n_tokens, DIM, generator=g), dim=-1)


def cpu_name() -> str:
    model = platform.processor() or "cpu"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = "+".join(f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni") if f in flags)
    return f"{model}, {torch.get_num_threads()} threads, {isa or 'unknown ISA'}"


class Method:
    """One column source: ``single()``/``batch()`` return top-10 page indices ``(Q, 10)`` over ``pages`` pages."""

    def __init__(self, name: str, pages: int, kb_per_page: float, single: Callable, batch: Callable, reps: int):
        self.name, self.pages, self.kb_per_page, self.reps = name, pages, kb_per_page, reps
        self.single, self.batch = single, batch
        self.t_single: list[float] = []
        self.t_batch: list[float] = []
        self.top: np.ndarray | None = None
        self.error: str | None = None


def _top(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    return topk(torch.as_tensor(np.asarray(scores, dtype=np.float32)).reshape(-1, np.shape(scores)[-1]), K)[1]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def edge_method(tokens: torch.Tensor, off: torch.Tensor, queries: torch.Tensor, n: int, reps: int, tmp: Path) -> Method:
    from indexer.store.base import page_point_id
    from indexer.store.edge import EdgeStore
    from indexer.types import PageRecord

    store = EdgeStore(tmp, "bench")
    row_of = {}
    t0 = time.perf_counter()
    for c in range(0, n, 64):
        recs = []
        for i in range(c, min(n, c + 64)):
            pid = page_point_id(f"doc{i // 8}", i % 8 + 1)
            row_of[pid] = i
            page = tokens[int(off[i]) : int(off[i + 1])].numpy()
            recs.append(PageRecord(point_id=pid, vectors=page, payload={"kind": "page", "doc_id": f"doc{i // 8}"}))
        store.upsert_pages(recs)
    store.flush()
    upsert_s = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in (tmp / "bench").rglob("*") if f.is_file())

    def one(q: torch.Tensor) -> list[int]:
        return [row_of[pid] for pid, _ in store.prefetch(q.numpy(), limit=K, using="tokens")]

    m = Method(
        "Qdrant Edge (own MaxSim, in process)",
        n,
        disk / n / 1024,
        lambda: np.array([one(queries[0])]),
        lambda: np.array([one(q) for q in queries]),
        reps,
    )
    m.store = store  # type: ignore[attr-defined]
    m.note = f"KB/page on disk, WAL included; upserts {n / upsert_s:.0f} pages/s"  # type: ignore[attr-defined]
    return m


def bench_cpu(args: argparse.Namespace) -> dict:
    from retriever.cpu_maxsim import kernel_available

    sizes = sorted(args.pages)
    lengths = (args.page_tokens[0], args.page_tokens[-1])
    tokens32, off_all = make_corpus(sizes[-1], lengths, args.seed)
    queries = make_queries(args.batch, args.query_tokens, args.seed)
    q1 = queries[:1]
    report: dict = {
        "mode": "cpu side by side",
        "date": datetime.date.today().isoformat(),
        "device": cpu_name(),
        "torch": torch.__version__,
        "colsmol_kernel": "compiled AVX2 kernel" if kernel_available() else "torch fallback (extension not built)",
        "page_tokens": list(lengths),
        "query_tokens": args.query_tokens,
        "batch": args.batch,
        "reps": args.reps,
        "sizes": [],
    }
    try:
        import maxsim_cpu as mxbai

        report["maxsim_cpu"] = getattr(mxbai, "__version__", "installed")
    except ImportError as exc:
        mxbai = None
        report["maxsim_cpu"] = f"not importable ({exc}); column skipped"
    slow_reps = max(1, min(args.reps, 3))
    with tempfile.TemporaryDirectory() as tmp:
        edge = None
        if args.edge_pages > 0:
            try:
                edge = edge_method(tokens32, off_all, queries, min(args.edge_pages, sizes[-1]), slow_reps, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - a missing qdrant_edge must not stop the other columns
                report["edge_error"] = repr(exc)
        for n_pages in sizes:
            report["sizes"].append(_one_size(n_pages, tokens32, off_all, queries, q1, args, mxbai, edge, slow_reps))
        if edge is not None:
            edge.store.close()  # type: ignore[attr-defined]
    return report


def _index_methods(n_pages, pages, T, q1, queries, args, slow_reps) -> tuple[list[Method], dict[str, torch.Tensor]]:
    """colsmol fp16 and int8 through ``TokenIndex.score``, the torch fallback on the same fp16 tokens, and the
    fp32-arithmetic scores of each stored form (what the kernel must reproduce exactly)."""
    methods, stored_ref = [], {}
    row = {f"p{i}": i for i in range(n_pages)}
    for dtype in ("fp16", "int8"):
        gc.collect()
        rss0 = _rss()
        index = TokenIndex(device="cpu", dtype=dtype, initial_capacity_tokens=T)
        for c in range(0, n_pages, 2048):
            index.add([f"p{i}" for i in range(c, min(n_pages, c + 2048))], [p.numpy() for p in pages[c : c + 2048]])
        gc.collect()
        rss_kb = (_rss() - rss0) / n_pages / 1024
        snap = index.snapshot()

        def run(qs, index=index):
            return np.array([[row[h.point_id] for h in hits] for hits in index.score(list(qs), k=K)])

        kb = (index.nbytes() + (n_pages + 1) * 8) / n_pages / 1024
        m = Method(f"colsmol {dtype}", n_pages, kb, partial(run, q1), partial(run, queries), args.reps)
        m.stored = dtype  # type: ignore[attr-defined]
        m.note = f"process RSS grew {rss_kb:.0f} KB/page"  # type: ignore[attr-defined]
        methods.append(m)
        stored_ref[dtype] = maxsim_torch(queries, snap.tokens, snap.offsets, scales=snap.scales)
        if dtype == "fp16":
            fb = partial(maxsim_torch, tokens=snap.tokens, offsets=snap.offsets)
            m = Method(
                "colsmol torch fallback (no extension)",
                n_pages,
                kb,
                lambda fb=fb: _top(fb(q1)),
                lambda fb=fb: _top(fb(queries)),
                slow_reps,
            )
            m.stored = dtype  # type: ignore[attr-defined]
            methods.append(m)
    return methods, stored_ref


def _one_size(n_pages, tokens32, off_all, queries, q1, args, mxbai, edge, slow_reps) -> dict:
    off = off_all[: n_pages + 1].clone()
    T = int(off[-1])
    t32 = tokens32[:T]
    pages = [t32[int(off[i]) : int(off[i + 1])] for i in range(n_pages)]
    methods, stored_ref = _index_methods(n_pages, pages, T, q1, queries, args, slow_reps)
    fp32_kb = 4 * DIM * T / n_pages / 1024
    if mxbai is not None:
        fixed = bool((off[1:] - off[:-1] == off[1] - off[0]).all())
        if fixed:  # its uniform-length API: one (P, L, dim) array, a view of the same fp32 tokens
            docs = t32.numpy().reshape(n_pages, -1, DIM)
            mx = partial(_mx_fixed, mxbai, docs)
        else:
            mx = partial(_mx_variable, mxbai, [p.numpy() for p in pages])
        methods.append(
            Method(
                "maxsim-cpu (PyPI, fp32)" + ("" if fixed else ", variable API"),
                n_pages,
                fp32_kb,
                lambda: _top(mx(queries[0])[None]),
                lambda: _top(np.stack([mx(q) for q in queries])),
                args.reps,
            )
        )
    try:
        from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor as BVRP

        ps = pages[: min(args.colpali_pages, n_pages)]
        cp = partial(BVRP.score_multi_vector, ps=ps, batch_size=128, device="cpu")
        methods.append(
            Method(
                "colpali-engine score_multi_vector (fp32, CPU)",
                len(ps),
                fp32_kb,
                lambda: _top(cp(list(q1))),
                lambda: _top(cp(list(queries))),
                slow_reps,
            )
        )
    except ImportError as exc:
        print(f"colpali-engine column skipped: {exc}")
    if edge is not None:
        edge.t_single, edge.t_batch = [], []  # measured again beside this size's other methods
        edge.stored = "fp16"  # type: ignore[attr-defined]
        methods.append(edge)
    ref = Method(
        "fp32 torch (maxsim_torch, reference)",
        n_pages,
        fp32_kb,
        lambda: _top(maxsim_torch(q1, t32, off)),
        lambda: maxsim_torch(queries, t32, off),
        slow_reps,
    )
    methods.append(ref)
    ref_scores = None
    for m in methods:  # warm-up
        try:
            m.single()
        except Exception as exc:  # noqa: BLE001
            m.error = repr(exc)
    for r in range(args.reps):
        for m in methods:
            if m.error is None and r < m.reps:
                m.t_single.append(_timed(m.single)[0])
        for m in methods:
            if m.error is None and r < m.reps:
                ms, out = _timed(m.batch)
                m.t_batch.append(ms / len(queries))
                if m is ref:
                    ref_scores, out = out, _top(out)
                m.top = out
    stored_ref["fp32"] = ref_scores
    return _summarize(n_pages, methods, stored_ref)


def _mx_fixed(mxbai, docs, q: torch.Tensor) -> np.ndarray:
    return mxbai.maxsim_scores(q.numpy(), docs)


def _mx_variable(mxbai, docs, q: torch.Tensor) -> np.ndarray:
    return mxbai.maxsim_scores_variable(q.numpy(), docs)


def _agreement(top: np.ndarray, ref_scores: torch.Tensor, pages: int) -> tuple[float, int]:
    """Mean top-10 overlap with reference scores over the same ``pages`` pages, and the number of queries whose
    ordered top-10 is identical to the reference's."""
    ref = _top(ref_scores[:, :pages])
    overlap = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(top, ref, strict=True)]))
    return overlap, int(sum(list(a) == list(b) for a, b in zip(top, ref, strict=True)))


def _summarize(n_pages: int, methods: list[Method], stored_ref: dict[str, torch.Tensor]) -> dict:
    rows = []
    for m in methods:
        if m.error is not None or not m.t_single:
            rows.append({"method": m.name, "error": m.error})
            continue
        scale = n_pages / m.pages
        overlap, same = _agreement(m.top, stored_ref["fp32"], m.pages)
        stored = getattr(m, "stored", "fp32")
        _, same_stored = _agreement(m.top, stored_ref[stored], m.pages) if stored in stored_ref else (0.0, -1)
        rows.append(
            {
                "method": m.name,
                "pages_measured": m.pages,
                "scaled": scale != 1,
                "single_ms": float(np.median(m.t_single)) * scale,
                "single_ms_min": float(np.min(m.t_single)) * scale,
                "batch_ms_per_query": float(np.median(m.t_batch)) * scale,
                "batch_ms_per_query_min": float(np.min(m.t_batch)) * scale,
                "rounds": len(m.t_single),
                "kb_per_page": m.kb_per_page,
                "top10_overlap": overlap,
                "top10_identical_queries": same,
                "stored_as": stored,
                "top10_identical_to_fp32_math_on_stored_values": same_stored,
                "queries": len(m.top),
                "note": getattr(m, "note", ""),
            }
        )
    base = next((r for r in rows if r["method"].startswith("maxsim-cpu") and "single_ms" in r), None)
    for r in rows:
        if base is not None and "single_ms" in r:
            r["speedup_vs_maxsim_cpu_single"] = base["single_ms"] / r["single_ms"]
            r["speedup_vs_maxsim_cpu_batch"] = base["batch_ms_per_query"] / r["batch_ms_per_query"]
    return {"pages": n_pages, "methods": rows}


def markdown_cpu(report: dict) -> str:
    lines = [
        f"date {report['date']}; {report['device']}; torch {report['torch']}; colsmol CPU path: "
        f"{report['colsmol_kernel']}; maxsim-cpu {report['maxsim_cpu']}",
        f"pages of {'-'.join(map(str, sorted(set(report['page_tokens']))))} tokens x {DIM} d, unit vectors; "
        f"{report['query_tokens']}-token queries; batch of {report['batch']}; median of interleaved rounds; "
        "each time includes the top-10; 'x maxsim-cpu' = maxsim-cpu's time / this time",
        "",
        f"| pages | method | 1 query ms | x maxsim-cpu | batch of {report['batch']}, ms/query | x maxsim-cpu | KB/page "
        "| top-10 overlap with fp32 | identical ordered top-10: vs fp32 / vs fp32 math on the stored values |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for size in report["sizes"]:
        for r in size["methods"]:
            if "single_ms" not in r:
                lines.append(f"| {size['pages']} | {r['method']} | error: {r.get('error')} | | | | | | |")
                continue
            name = r["method"] + (f" (measured on {r['pages_measured']} pages, scaled)" if r["scaled"] else "")
            if r.get("note"):
                name += f" [{r['note']}]"
            n = r["queries"]
            lines.append(
                f"| {size['pages']} | {name} | {r['single_ms']:.0f} | {r.get('speedup_vs_maxsim_cpu_single', nan):.2f} "
                f"| {r['batch_ms_per_query']:.0f} | {r.get('speedup_vs_maxsim_cpu_batch', nan):.2f} "
                f"| {r['kb_per_page']:.0f} | {r['top10_overlap']:.3f} | {r['top10_identical_queries']}/{n} / "
                f"{r['top10_identical_to_fp32_math_on_stored_values']}/{n} ({r['stored_as']}) |"
            )
    return "\n".join(lines)
