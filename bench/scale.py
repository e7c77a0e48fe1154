"""Search at scale on a held-out corpus: what a search mode costs and how much of exact it finds.

    python bench/scale.py --generate 20000 --corpus corpus-20k.npz          # a structured synthetic corpus
    python bench/scale.py --corpus corpus-20k.npz --mode tiered --out tiered.json
    python bench/scale.py --corpus corpus-20k.npz --mode exact --out exact.json
    python bench/scale.py --compare exact.json tiered.json                  # recall@10 and latency ratios

The corpus (``FILE.npz``) holds ``tokens (T, 128)`` float16, ``offsets (N + 1,)`` int64 and ``queries (Q, q, 128)``
float32 (``bench/scale_corpus.py``). ``--mode`` builds the production path in a scratch data dir: the store
(Qdrant Edge, ``open_store``), written page by page through the live index's write hook as ingest writes it (the
pooled prefetch vectors made by ``prefetch_vectors``, as the ingest workers make them), then the searcher the
pipeline builds for ``COLSMOL_SEARCH_MODE=<mode>`` (``rag.searchers.build_searcher``), loaded once. Then every
query is searched alone (one-query latency) and the top 10 written out. The JSON:
``{"top10": [[page index, ...] per query], "latency_ms": [per query], "resident_bytes": int, "disk_bytes": int,
"build_s": float}`` plus the settings used. ``resident_bytes`` is the anonymous memory (``RssAnon``) the search
index added, which excludes the OS page cache of memory-mapped files; ``disk_bytes`` is the data dir's size.

``--direct`` skips the store: the index of the mode (``TokenIndex`` for exact, ``TieredIndex`` for tiered) is
built from the vectors through its ``add`` (the same calls the live index makes on every ingest write). Use it
where writing the corpus into Qdrant would take too long or too much disk (a 100,000-page Edge store is another
25 GB); ``two-stage`` needs the store and has no direct form.

``--generate N`` writes a corpus of ``N`` pages of 900 to 1,100 tokens and ``--queries`` queries
(:class:`testkit.corpus.TopicMixture`: pages are mixtures of 2 to 5 of 512 topics, cut into 32-token regions of
one topic each, each token a noisy copy of one of the topic's sub-centres, a quarter of the regions furniture
shared by every page; queries are 20 noisy sub-centres of 1 or 2 topics). Thousands of pages share every topic,
so the top 10 depend on fine token detail that pooled vectors blur.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale_corpus import Corpus, open_corpus, write_corpus  # noqa: E402


def rss_anon() -> int:
    """Anonymous resident bytes of this process (not counting file-backed pages: the page cache of mmaps), after
    handing freed heap back to the OS (the build's temporaries are not the index's memory)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512  # sparse holes take no disk
            except OSError:
                pass
    return total


def generate(args: argparse.Namespace) -> None:
    from testkit.corpus import TopicMixture

    gen = TopicMixture(seed=args.seed)
    t0 = time.perf_counter()

    def progress(done: int) -> None:
        if done % 10_000 == 0:
            rate = done / (time.perf_counter() - t0)
            print(f"  {done}/{args.generate} pages written ({rate:.0f} pages/s)", file=sys.stderr, flush=True)

    write_corpus(args.corpus, args.generate, gen.page, gen.queries(args.queries), progress)
    print(f"wrote {args.corpus}: {args.generate} pages in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def point_id(i: int) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"scale-bench/{i}"))


def payload(i: int) -> dict[str, Any]:
    return {
        "kind": "page",
        "doc_id": f"doc-{i // 10}",
        "source": f"/corpus/doc-{i // 10}.pdf",
        "file_name": f"doc-{i // 10}.pdf",
        "page_number": i % 10 + 1,
        "page_count": 10,
        "width": 1275,
        "height": 1650,
        "content_hash": f"h{i // 10}",
        "ingested_at": "2026-12-05T00:00:00Z",
        "metadata": {},
    }


def chunks(corpus: Corpus, size: int, limit: int | None = None) -> Any:
    n = len(corpus) if limit is None else min(limit, len(corpus))
    for s in range(0, n, size):
        yield s, [np.asarray(corpus.page(i), dtype=np.float32) for i in range(s, min(n, s + size))]


def build_store(corpus: Corpus, args: argparse.Namespace, data: Path) -> tuple[Any, Any, float]:
    """The production path: Edge store + the pipeline's searcher, every page written through the live index."""
    from indexer.settings import Settings
    from indexer.store import open_store
    from indexer.types import PageRecord
    from rag.searchers import build_searcher
    from retriever.pooling import prefetch_vectors

    settings = Settings(
        data_dir=data,
        search_mode=args.mode,
        index_dtype=args.dtype,
        prefetch_candidates=args.candidates,
        index_memory_gb=args.memory_gb,
        device="cpu",
    )
    t0 = time.perf_counter()
    store = open_store(settings)
    built = build_searcher(settings, store, None, None)
    hooks = built.live
    n = len(corpus) if args.limit is None else min(args.limit, len(corpus))
    stored = store.count_pages()
    if stored == n:  # --data reused: the pages are in the store, only the searcher is built
        print(f"  the store in {data} holds the {n} pages already", file=sys.stderr)
        if built.live is not None:
            built.live.load()
        return store, built, time.perf_counter() - t0
    if stored:
        raise SystemExit(f"the store in {data} holds {stored} pages, not {n}: give an empty or matching --data")
    for s, pages in chunks(corpus, args.chunk, args.limit):
        records = [PageRecord(point_id(s + j), v, payload(s + j), prefetch_vectors(v)) for j, v in enumerate(pages)]
        if hooks is not None:
            hooks.apply(lambda records=records: store.upsert_pages(records), upserted=records)
        else:
            store.upsert_pages(records)
        if (s // args.chunk) % 20 == 0:
            print(f"  stored {s + len(pages)} pages ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    if built.live is not None:
        built.live.load()
    return store, built, time.perf_counter() - t0


def build_direct(corpus: Corpus, args: argparse.Namespace, data: Path) -> tuple[Any, float]:
    from retriever.pooling import prefetch_vectors
    from retriever.tiered_index import TieredIndex
    from retriever.token_index import TokenIndex

    t0 = time.perf_counter()
    index: TokenIndex
    if args.mode == "tiered":
        index = TieredIndex(data / "fine", device="cpu", candidates=args.candidates)
    else:
        index = TokenIndex(device="cpu", dtype=args.dtype)
    for s, pages in chunks(corpus, args.chunk, args.limit):
        ids = [point_id(s + j) for j in range(len(pages))]
        pooled = [prefetch_vectors(v) for v in pages] if args.mode == "tiered" else None
        index.add(ids, pages, [payload(s + j) for j in range(len(pages))], pooled=pooled)
        if (s // args.chunk) % 50 == 0:
            rate = (s + len(pages)) / (time.perf_counter() - t0)
            print(f"  indexed {s + len(pages)} pages ({rate:.0f} pages/s)", file=sys.stderr, flush=True)
    return index, time.perf_counter() - t0


def run(args: argparse.Namespace) -> None:
    import torch

    from retriever.live_index import LiveIndex
    from retriever.search import ExactSearcher

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    corpus = open_corpus(args.corpus)
    scratch = args.data or Path(tempfile.mkdtemp(prefix="colsmol-scale-", dir=args.tmp))
    index_of = {point_id(i): i for i in range(len(corpus) if args.limit is None else min(args.limit, len(corpus)))}
    before = rss_anon()
    store = None
    try:
        if args.direct:
            if args.mode not in ("exact", "tiered"):
                raise SystemExit(f"--direct builds exact or tiered, not {args.mode!r}")
            index, build_s = build_direct(corpus, args, scratch)
            searcher: Any = ExactSearcher(LiveIndex(_NoStore(), device="cpu", index=index))
            mode = args.mode
        else:
            store, built, build_s = build_store(corpus, args, scratch)
            searcher, mode = built.searcher, built.mode
        import gc

        gc.collect()
        resident = rss_anon() - before
        queries = corpus.queries[: args.n_queries] if args.n_queries else corpus.queries
        baseline = build_baseline(args, store, corpus) if args.baseline and store is not None else None
        searcher.search_vectors([queries[0]], k=10)  # warm: first touches of the maps, kernel threads
        top10, lat = [], []
        base_top10, base_lat = [], []
        for qi, q in enumerate(queries):
            t = time.perf_counter()
            hits = searcher.search_vectors([q], k=10)[0]
            lat.append((time.perf_counter() - t) * 1000)
            top10.append([index_of[h.point_id] for h in hits])
            if baseline is not None and qi < (args.baseline_queries or len(queries)):
                # interleaved with the mode's own query: both see the same load on a shared machine
                t = time.perf_counter()
                hits = baseline.searcher.search_vectors([q], k=10)[0]
                base_lat.append((time.perf_counter() - t) * 1000)
                base_top10.append([index_of[h.point_id] for h in hits])
        sweep = {}
        for c in args.sweep or []:
            target = searcher.live.get() if isinstance(searcher, ExactSearcher) else None
            if target is None or not hasattr(target, "candidates"):
                break
            keep, target.candidates = target.candidates, c
            s_top, s_lat = [], []
            for q in queries:
                t = time.perf_counter()
                hits = searcher.search_vectors([q], k=10)[0]
                s_lat.append((time.perf_counter() - t) * 1000)
                s_top.append([index_of[h.point_id] for h in hits])
            target.candidates = keep
            sweep[str(c)] = {"top10": s_top, "latency_ms": s_lat, "p50_ms": float(np.median(s_lat))}
            print(f"  candidates {c}: p50 {np.median(s_lat):.1f} ms", file=sys.stderr)
        sketch_sweep = {}
        for f in args.sweep_sketch or []:
            target = searcher.live.get() if isinstance(searcher, ExactSearcher) else None
            if target is None or not hasattr(target, "sketch_factor"):
                break
            keep, target.sketch_factor = target.sketch_factor, f
            s_top, s_lat = [], []
            for q in queries:
                t = time.perf_counter()
                hits = searcher.search_vectors([q], k=10)[0]
                s_lat.append((time.perf_counter() - t) * 1000)
                s_top.append([index_of[h.point_id] for h in hits])
            target.sketch_factor = keep
            sketch_sweep[str(f)] = {"top10": s_top, "latency_ms": s_lat, "p50_ms": float(np.median(s_lat))}
            print(f"  sketch factor {f}: p50 {np.median(s_lat):.1f} ms", file=sys.stderr)
        if baseline is not None:
            baseline_block = {
                "baseline_mode": baseline.mode,
                "baseline_top10": base_top10,
                "baseline_latency_ms": base_lat,
                "baseline_p50_ms": float(np.median(base_lat)),
            }
            print(f"  baseline {baseline.mode}: p50 {np.median(base_lat):.1f} ms", file=sys.stderr)
        else:
            baseline_block = {}
        exact_block: dict[str, Any] = {}
        if args.direct and args.exact_baseline and mode == "tiered":
            exact_block = exact_baseline(index, queries, args.exact_baseline, index_of)
        out = {
            **exact_block,
            **baseline_block,
            "sweep": sweep,
            "sketch_sweep": sketch_sweep,
            "mode": mode,
            "requested_mode": args.mode,
            "direct": bool(args.direct),
            "pages": len(index_of),
            "candidates": args.candidates,
            "dtype": args.dtype,
            "top10": top10,
            "latency_ms": lat,
            "p50_ms": float(np.median(lat)),
            "resident_bytes": int(resident),
            "disk_bytes": du(scratch),
            "index_disk_bytes": du(scratch / "index-cache"),
            "build_s": build_s,
        }
    finally:
        if store is not None:
            store.close()
        if not args.keep and args.data is None:
            shutil.rmtree(scratch, ignore_errors=True)
    args.out.write_text(json.dumps(out))
    print(
        f"{mode}: {out['pages']} pages, p50 {out['p50_ms']:.1f} ms, resident {resident / 2**20:.0f} MiB "
        f"({resident / max(1, out['pages']):.0f} B/page), disk {out['disk_bytes'] / 2**30:.2f} GiB, "
        f"build {build_s:.0f} s",
        file=sys.stderr,
    )


def build_baseline(args: argparse.Namespace, store: Any, corpus: Corpus) -> Any:
    """The ``--baseline`` mode's searcher over the same store, its index built from the store with no cache
    (the mode's own cache folder is the run's)."""
    from indexer.settings import Settings
    from rag.searchers import build_searcher

    settings = Settings(
        data_dir=args.data or Path(tempfile.gettempdir()),
        search_mode=args.baseline,
        index_dtype=args.dtype,
        prefetch_candidates=args.baseline_candidates,
        device="cpu",
    )
    built = build_searcher(settings, store, None, None)
    if built.live is not None:
        built.live.cache = None
        t = time.perf_counter()
        built.live.load()
        print(f"  baseline {built.mode} index built from the store in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return built


def exact_baseline(index: Any, queries: np.ndarray, n_timed: int, index_of: dict[str, int]) -> dict[str, Any]:
    """Exact int8 MaxSim over the same token file, in the same run: every query's top 10 (one batched pass
    over the file, streamed) and the one-query latency of the first ``n_timed`` queries (each a full pass)."""
    t = time.perf_counter()
    ranked = index.score_exact(list(queries), k=10)
    batch_s = time.perf_counter() - t
    lat = []
    for q in queries[:n_timed]:
        t = time.perf_counter()
        index.score_exact([q], k=10)
        lat.append((time.perf_counter() - t) * 1000)
    print(f"  exact (int8, token file): p50 {np.median(lat):.0f} ms over {len(lat)} queries", file=sys.stderr)
    return {
        "exact_top10": [[index_of[p.point_id] for p in row] for row in ranked],
        "exact_latency_ms": lat,
        "exact_p50_ms": float(np.median(lat)),
        "exact_batch_s": batch_s,
    }


class _NoStore:
    """``--direct`` has no store: the live index never looks for foreign writes (sync interval: forever)."""

    def version(self) -> str | None:
        return None


def recall(got: list[list[int]], want: list[list[int]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(got, want, strict=False)]))


def _sweeps(run: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """A run's extra settings, each over every query: candidate counts, then tier-0 factors."""
    rows = [("candidates", c, sw) for c, sw in (run.get("sweep") or {}).items()]
    return rows + [("sketch factor", f, sw) for f, sw in (run.get("sketch_sweep") or {}).items()]


def compare(paths: list[Path]) -> None:
    runs = [json.loads(p.read_text()) for p in paths]
    ref = runs[0]
    for r in runs:
        if "baseline_top10" in r:
            n = len(r["baseline_top10"])
            print(
                f"{r['mode']} {r['pages']} pages, {n} queries: recall@10 vs {r['baseline_mode']} (same run) "
                f"{recall(r['top10'][:n], r['baseline_top10']):.3f}; p50 {np.median(r['latency_ms'][:n]):.1f} ms vs "
                f"{r['baseline_p50_ms']:.1f} ms ({r['baseline_p50_ms'] / np.median(r['latency_ms'][:n]):.1f}x)"
            )
            for what, c, sw in _sweeps(r):
                print(
                    f"  {what} {c}: recall@10 {recall(sw['top10'][:n], r['baseline_top10']):.3f}, "
                    f"p50 {sw['p50_ms']:.1f} ms"
                )
        if "exact_top10" in r:  # a tiered run that carries its own exact baseline
            print(
                f"{r['mode']} {r['pages']} pages: recall@10 vs exact (same run) "
                f"{recall(r['top10'], r['exact_top10']):.3f}; p50 {r['p50_ms']:.1f} ms vs exact "
                f"{r['exact_p50_ms']:.0f} ms ({r['exact_p50_ms'] / r['p50_ms']:.1f}x)"
            )
            for what, c, sw in _sweeps(r):
                print(
                    f"  {what} {c}: recall@10 {recall(sw['top10'], r['exact_top10']):.3f}, "
                    f"p50 {sw['p50_ms']:.1f} ms"
                )
    print(f"| mode | pages | recall@10 vs {ref['mode']} | p50 ms | p50 ratio | resident B/page | disk GiB | build s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['mode']}{' (direct)' if r.get('direct') else ''} | {r['pages']} | "
            f"{recall(r['top10'], ref['top10']):.3f} | "
            f"{r['p50_ms']:.1f} | {ref['p50_ms'] / r['p50_ms']:.1f}x | {r['resident_bytes'] / r['pages']:.0f} | "
            f"{r['disk_bytes'] / 2**30:.2f} | {r['build_s']:.0f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="the corpus .npz (read, or written by --generate)")
    ap.add_argument("--generate", type=int, default=0, metavar="N", help="write a synthetic corpus of N pages")
    ap.add_argument("--queries", type=int, default=100, help="queries in a generated corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["exact", "two-stage", "tiered", "auto"], default="tiered")
    ap.add_argument("--out", type=Path, default=Path("results.json"))
    ap.add_argument("--dtype", choices=["fp16", "int8"], default="int8", help="exact index precision")
    ap.add_argument("--candidates", type=int, default=512, help="candidates per query (tiered, two-stage)")
    ap.add_argument("--memory-gb", type=float, default=8.0, help="index memory budget (auto)")
    ap.add_argument("--direct", action="store_true", help="build the index from the vectors, no store")
    ap.add_argument(
        "--exact-baseline",
        type=int,
        default=0,
        metavar="N",
        help="with --direct --mode tiered: also rank every query exactly over the same token file (recall reference) "
        "and time N one-query exact searches",
    )
    ap.add_argument(
        "--baseline",
        choices=["exact", "two-stage"],
        default=None,
        help="also search every query with this mode over the same store, interleaved query by query",
    )
    ap.add_argument("--baseline-candidates", type=int, default=200, help="candidates of a two-stage baseline")
    ap.add_argument("--baseline-queries", type=int, default=0, help="search only the first N queries with it")
    ap.add_argument(
        "--sweep-sketch",
        type=int,
        nargs="*",
        default=None,
        help="tiered: also run every query with tier 0 handing tier 1 these multiples of --candidates (0: no tier 0)",
    )
    ap.add_argument(
        "--sweep", type=int, nargs="*", default=None, help="tiered: also run every query at these candidate counts"
    )
    ap.add_argument("--limit", type=int, default=None, help="index only the first N pages")
    ap.add_argument("--n-queries", type=int, default=0, help="search only the first N queries")
    ap.add_argument("--chunk", type=int, default=64, help="pages per write")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tmp", type=Path, default=None, help="where the scratch data dir goes")
    ap.add_argument("--keep", action="store_true", help="keep the scratch data dir")
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the data dir to build in and keep; when its store holds the corpus already, only the searcher of "
        "--mode is built (one ingest, then every mode on the same store; a mode switch rebuilds the index)",
    )
    ap.add_argument(
        "--compare", type=Path, nargs="+", help="print recall and ratios of result files (first = reference)"
    )
    args = ap.parse_args()
    if args.compare:
        compare(args.compare)
    elif args.generate:
        if args.corpus is None:
            raise SystemExit("--generate needs --corpus FILE.npz to write")
        generate(args)
    else:
        if args.corpus is None:
            raise SystemExit("give --corpus FILE.npz (or --generate N --corpus FILE.npz to make one)")
        run(args)


if __name__ == "__main__":
    main()
