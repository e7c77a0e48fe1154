"""Tiers 0 and 1 of a tiered index at a million pages: what a query costs before the exact rerank, and RAM a page.

    python bench/tier1_scale.py --pages 1000000 --data /scratch/t1 --out tier1-1m.json

A tiered index keeps each page's ~64 pooled vectors resident (tier 1, int8) and their sign bits (tier 0); the full
tokens are on disk for the rerank (tier 2, measured at 100k by ``bench/scale.py``). At 1M pages of ~1,000 tokens
the token file alone is ~130 GB, so this bench builds the real :class:`~retriever.tiered_index.TieredIndex` from
pages that *are* their pooled vectors: ``--tokens`` tokens a page (default 256, of
:class:`testkit.corpus.TopicMixture`), pooled by ``--pool`` (default 4) into the same ~64 vectors a page that
ColSmol's ~1,000 tokens pooled by 16 give, and given to ``add`` as both the page and its pooled vectors. Tiers 0
and 1 therefore have the production shapes (64 int8 vectors and 64 x 16 bytes of sign bits a page); the token
file holds 64 tokens a page instead of 1,000, so tier 2 is not measured here.

For every query it times, one query at a time and interleaved:

- ``tier1_all``: tier 1 over every page (what a tiered search does without tier 0);
- ``tier01``: tier 0 over every page, then tier 1 over its ``--sketch-factor x --candidates`` best;

and reports how many of ``tier1_all``'s ``--candidates`` best pages ``tier01`` keeps (its recall of tier 1's
candidates; tier 2 then reranks either set exactly). ``resident_bytes`` is the anonymous memory the index added.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import payload, point_id, rss_anon  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=1_000_000)
    ap.add_argument("--tokens", type=int, default=256, help="tokens a generated page (before pooling)")
    ap.add_argument("--pool", type=int, default=4, help="pool factor: --tokens / --pool vectors a page are resident")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=512)
    ap.add_argument("--sketch-factor", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data", type=Path, default=None, help="folder for the (small) token file; a temp dir if unset")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from retriever.maxsim import pad_queries
    from retriever.pooling import prefetch_vectors
    from retriever.tiered_index import TieredIndex
    from retriever.token_index import TokenIndex
    from testkit.corpus import TopicMixture

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    data = args.data or Path(tempfile.mkdtemp(prefix="colsmol-tier1-"))
    half = max(1, args.tokens // 16)
    gen = TopicMixture(seed=args.seed, tokens=(args.tokens - half, args.tokens + half))
    before = rss_anon()
    index = TieredIndex(data / "fine", device="cpu", candidates=args.candidates, sketch_factor=args.sketch_factor)
    t0 = time.perf_counter()
    for s in range(0, args.pages, args.chunk):
        n = min(args.chunk, args.pages - s)
        pooled = [prefetch_vectors(gen.page(i), args.pool) for i in range(s, s + n)]
        index.add([point_id(i) for i in range(s, s + n)], pooled, [payload(i) for i in range(s, s + n)], pooled=pooled)
        if (s // args.chunk) % 25 == 0:
            rate = (s + n) / (time.perf_counter() - t0)
            print(f"  {s + n} pages ({rate:.0f} pages/s)", file=sys.stderr, flush=True)
    build_s = time.perf_counter() - t0
    resident = rss_anon() - before
    vectors_per_page = index.n_tokens / max(1, len(index))

    queries = gen.queries(args.queries)
    q, qm = pad_queries(list(queries))
    index.score(queries[:1], k=10)  # warm: kernel threads, first touches
    lat_all, lat_01, kept = [], [], []
    for i in range(len(queries)):
        qi, mi = q[i : i + 1], qm[i : i + 1]
        t = time.perf_counter()
        full = TokenIndex.score(index, qi, k=args.candidates, query_mask=mi)[0]
        lat_all.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        fast = index._sketched(qi, mi, args.candidates, None, None, None)[0]
        lat_01.append((time.perf_counter() - t) * 1000)
        kept.append(len({p.point_id for p in full} & {p.point_id for p in fast}) / max(1, len(full)))
    out = {
        "pages": len(index),
        "tokens_per_page": args.tokens,
        "pool": args.pool,
        "resident_vectors_per_page": vectors_per_page,
        "candidates": args.candidates,
        "sketch_factor": args.sketch_factor,
        "build_s": build_s,
        "resident_bytes": resident,
        "index_nbytes": index.nbytes(),
        "tier1_all_latency_ms": lat_all,
        "tier01_latency_ms": lat_01,
        "tier1_all_p50_ms": float(np.median(lat_all)),
        "tier01_p50_ms": float(np.median(lat_01)),
        "tier01_keeps_tier1_candidates": float(np.mean(kept)),
        "threads": torch.get_num_threads(),
    }
    index.close()
    print(
        f"{out['pages']} pages ({vectors_per_page:.1f} resident vectors a page): tier 1 over all p50 "
        f"{out['tier1_all_p50_ms']:.0f} ms; tier 0 + tier 1 p50 {out['tier01_p50_ms']:.0f} ms "
        f"({out['tier1_all_p50_ms'] / out['tier01_p50_ms']:.1f}x), keeps {out['tier01_keeps_tier1_candidates']:.3f} of "
        f"tier 1's {args.candidates} candidates; resident {resident / len(index):.0f} B a page; build {build_s:.0f} s",
        file=sys.stderr,
    )
    if args.out:
        args.out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
