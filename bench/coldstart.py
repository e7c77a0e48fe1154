"""Search-index start-up: from the store (no cache), from the cache (snapshot + journal), and the store's raw read.

Builds an embedded Qdrant Edge collection of ``--pages`` synthetic pages (unit vectors, ``--tokens`` a page, real
payloads), then measures, each in a fresh subprocess (so peak memory is its own):

- **raw read**: Edge's scroll with vectors, producing the binding's Python lists and nothing else: the ceiling any
  build from the store has (``--raw-pages`` of them, scaled);
- **build from the store**: ``LiveIndex.load()`` with no cache: pages/s and the peak memory it adds, against the
  index's own size;
- **snapshot write**: ``LiveIndex.save()`` after that build;
- **load from the cache**: ``LiveIndex.load()`` on the snapshot (memory-mapped): pages/s, peak extra memory, and the
  first search after it (which touches the mapped pages);
- **snapshot + journal**: the same with the last ``--journal-pages`` pages written through ``LiveIndex.apply`` (the
  ingest path) after the snapshot: the replay cost.

CPU, this machine: ``python bench/coldstart.py --pages 10000``. Prints a markdown table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM = 128


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_store(root: Path, pages: int, tokens: int, journal_from: int | None) -> None:
    """``pages`` pages in an Edge store under ``root``; with ``journal_from``, pages from there on go through a
    LiveIndex with a cache (so they land in the cache's journal, after a snapshot of the rest)."""
    import numpy as np

    from indexer.store.base import page_point_id
    from indexer.store.edge import EdgeStore
    from indexer.types import PageRecord
    from retriever.live_index import LiveIndex

    rng = np.random.default_rng(0)

    def records(lo: int, hi: int) -> list[PageRecord]:
        out = []
        for i in range(lo, hi):
            v = rng.standard_normal((tokens, DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            doc = f"doc{i // 10:06d}"
            payload = {
                "doc_id": doc,
                "source": f"/corpus/{doc}.pdf",
                "file_name": f"{doc}.pdf",
                "page_number": i % 10 + 1,
                "page_count": 10,
                "content_hash": doc,
                "ingested_at": "2026-11-23T00:00:00+00:00",
                "metadata": {"lang": "en"},
            }
            out.append(PageRecord(page_point_id(doc, i % 10 + 1), v, payload))
        return out

    store = EdgeStore(root / "qdrant", "bench")
    try:
        head = pages if journal_from is None else journal_from
        for lo in range(0, head, 8):
            store.upsert_pages(records(lo, min(head, lo + 8)))
        if journal_from is not None:
            live = LiveIndex(store, device="cpu", cache_dir=root / "cache")
            live.load()
            live.save()
            for lo in range(journal_from, pages, 8):
                recs = records(lo, min(pages, lo + 8))
                live.apply(lambda r=recs: store.upsert_pages(r), upserted=recs)
            live._index = None  # leave the journal as a killed or short-lived process would: not compacted
    finally:
        store.close()


def child(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line."""
    import numpy as np

    from indexer.store.edge import EdgeStore
    from retriever.live_index import LiveIndex

    root = Path(args.root)
    store = EdgeStore(root / "qdrant", "bench")
    base = rss_bytes()
    out: dict[str, object] = {"mode": args.child}
    t = time.perf_counter()
    if args.child == "raw":
        import qdrant_edge as qe

        shard, flt, n, offset = store._shard, store._filter(), 0, None
        while n < args.raw_pages:
            recs, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=32, filter=flt, with_payload=True, with_vector=["tokens"])
            )
            for r in recs:
                _ = r.vector
                n += 1
            if offset is None or not recs:
                break
        out["pages"] = n
    else:
        cache = root / "cache" if args.child in ("cache", "journal") else None
        live = LiveIndex(store, device="cpu", cache_dir=cache)
        index = live.load()
        out["pages"] = len(index)
        out["index_bytes"] = index.nbytes()
        out["syncs"] = live.syncs
        out["seconds"] = time.perf_counter() - t
        out["peak_extra_bytes"] = peak_bytes() - base
        q = np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32)
        t_search = time.perf_counter()
        index.score([q], k=10)
        out["first_search_ms"] = 1e3 * (time.perf_counter() - t_search)
        if args.child == "build" and args.save:
            t_save = time.perf_counter()
            live.cache = None  # keep the measured build's index, saved to the cache folder below
            from retriever.index_cache import IndexCache

            IndexCache(root / "cache").save(index)
            out["save_seconds"] = time.perf_counter() - t_save
        live._index = None
    out.setdefault("seconds", time.perf_counter() - t)
    out.setdefault("peak_extra_bytes", peak_bytes() - base)
    store.close()
    print(json.dumps(out))


def run_child(root: Path, mode: str, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--raw-pages", type=int, default=2000)
    ap.add_argument("--journal-pages", type=int, default=1000)
    ap.add_argument("--tmp", type=Path, default=None, help="where the store and caches go (several GB)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--save", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="colsmol-coldstart-", dir=args.tmp))
    try:
        t = time.perf_counter()
        make_store(tmp / "a", args.pages, args.tokens, None)
        write_s = time.perf_counter() - t
        raw = run_child(tmp / "a", "raw", ["--raw-pages", str(args.raw_pages)])
        build = run_child(tmp / "a", "build", ["--save"])
        cache = run_child(tmp / "a", "cache", [])
        make_store(tmp / "b", args.pages, args.tokens, args.pages - args.journal_pages)
        journal = run_child(tmp / "b", "journal", [])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        ("raw read (Edge scroll, Python lists only)", raw, None),
        ("build from the store (no cache)", build, build.get("index_bytes")),
        ("load from the cache (snapshot)", cache, cache.get("index_bytes")),
        (f"snapshot + journal of {args.journal_pages} pages", journal, journal.get("index_bytes")),
    ]
    report = {
        "pages": args.pages,
        "tokens_per_page": args.tokens,
        "store_write_pages_per_s": args.pages / write_s,
        "snapshot_write_seconds": build.get("save_seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": {name: r for name, r, _ in rows},
    }
    print(f"# Index start-up, {args.pages} pages x {args.tokens} tokens ({report['machine']}, {report['date']})\n")
    print("| path | pages/s | seconds | peak extra memory | x index size | first search ms | store scans |")
    print("|---|---|---|---|---|---|---|")
    for name, r, index_bytes in rows:
        secs = float(r["seconds"])
        rate = r["pages"] / secs if secs else float("inf")
        extra = int(r["peak_extra_bytes"])
        ratio = f"{extra / index_bytes:.2f}" if index_bytes else "-"
        first = f"{r['first_search_ms']:.0f}" if "first_search_ms" in r else "-"
        print(
            f"| {name} | {rate:,.0f} | {secs:.2f} | {extra / 2**20:,.0f} MiB | {ratio} | {first} | "
            f"{r.get('syncs', '-')} |"
        )
    print(f"\nstore writes: {report['store_write_pages_per_s']:.0f} pages/s; snapshot write after the build: "
          f"{report['snapshot_write_seconds']:.1f} s")
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
