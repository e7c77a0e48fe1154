"""What cited regions (retriever.regions) add to a search's latency, on the machine it runs on.

Two measurements, each timed in the same run with and without regions:

- **Synthetic, full-size token counts.** A resident fp16 ``TokenIndex`` of ``--pages`` random pages whose token
  counts are real ColSmolVLM pages' (the full processor's layout of a Letter and an A4 page at 150 dpi: 4 x 4 and
  3 x 4 tiles, 64 tokens per view; from the processor's configuration and tokenizer, no model weights), queries of
  20 to 30 tokens. Per query: ``TokenIndex.score`` top-``--k`` (what a search does after encoding the query) and
  ``RegionFinder.find`` for those hits over the index's own vectors (page sizes cached, as after a page's first
  hit). Query encoding is left out, so the ratio is an upper bound of the end-to-end share.
- **With the query's encoding** (``--encoder``, a full-size checkpoint from ``bench/make_checkpoints.py``): a
  search request is the query's encoding plus the scoring, so the share regions add to it is
  ``regions / (encode + score)``, the encoding's p50 measured in the same run.
- **Tiny end to end.** ``RAGPipeline.search`` over the tiny test checkpoints (Qdrant Edge on disk, ``--tiny-pages``
  pages), against the same pipeline with its searcher's region finder removed. The tiny encoder is far cheaper
  than the real one, so this is the least favourable ratio.

    python bench/regions.py --pages 1000 5000 --k 10 --iters 30 --encoder /tmp/ckpt/encoder
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from indexer.models.preprocess import prompt_ids, tile_layout  # noqa: E402
from retriever.regions import RegionFinder  # noqa: E402
from retriever.token_index import TokenIndex  # noqa: E402

PAGES = {"letter": (1275, 1650), "a4": (1240, 1754)}  # 150 dpi


def p50_ms(fn: Callable[[], Any], iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def paired_p50_ms(a: Callable[[], Any], b: Callable[[], Any], iters: int, warmup: int = 3) -> tuple[float, float]:
    """p50 of ``a`` and of ``b``, timed in alternation, so that load drift on a shared machine hits both alike."""
    for _ in range(warmup):
        a(), b()
    sa, sb = [], []
    for _ in range(iters):
        t = time.perf_counter()
        a()
        sa.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        b()
        sb.append((time.perf_counter() - t) * 1e3)
    return statistics.median(sa), statistics.median(sb)


class SizeStore:
    """The one store read a RegionFinder makes over a resident index: page sizes."""

    def __init__(self, sizes: dict[str, tuple[int, int]]) -> None:
        self.sizes = sizes

    def get_payloads(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        return {i: {"width": self.sizes[i][0], "height": self.sizes[i][1]} for i in ids if i in self.sizes}

    def get_vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        return {}


def synthetic(n_pages: int, k: int, iters: int, seed: int = 0) -> dict[str, Any]:
    from colpali_engine.models import ColIdefics3Processor

    from testkit.checkpoints import FULL_LONGEST, FULL_TILE, build_tokenizer, full_processor

    processor = full_processor(build_tokenizer(), ColIdefics3Processor)
    lengths = {
        name: len(prompt_ids(processor, tile_layout(h, w, FULL_LONGEST, FULL_TILE)))
        for name, (w, h) in PAGES.items()
    }
    rng = np.random.default_rng(seed)
    index = TokenIndex(device="cpu")
    sizes: dict[str, tuple[int, int]] = {}
    names = list(PAGES)
    for start in range(0, n_pages, 256):
        ids, vecs = [], []
        for i in range(start, min(n_pages, start + 256)):
            name = names[i % len(names)]
            v = rng.standard_normal((lengths[name], 128), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            ids.append(f"p{i}")
            vecs.append(v)
            sizes[f"p{i}"] = PAGES[name]
        index.add(ids, vecs, [{"doc_id": "d", "page_number": 1}] * len(ids))
    finder = RegionFinder(SizeStore(sizes), lambda: processor)  # type: ignore[arg-type]
    queries = []
    for _ in range(8):
        q = rng.standard_normal((int(rng.integers(20, 31)), 128), dtype=np.float32)
        queries.append(q / np.linalg.norm(q, axis=1, keepdims=True))
    hits = [[s.point_id for s in index.score([q], k=k)[0]] for q in queries]
    finder.find(queries, hits, index.get_vectors)  # page sizes read once, as after each page's first hit
    turn = iter(range(1 << 30))

    def search() -> None:
        i = next(turn) % len(queries)
        index.score([queries[i]], k=k)

    def regions() -> None:
        i = next(turn) % len(queries)
        finder.find([queries[i]], [hits[i]], index.get_vectors)

    score_ms, regions_ms = paired_p50_ms(search, regions, iters)
    with_regions = sum(len(r) for row in finder.find(queries, hits, index.get_vectors) for r in row)
    return {
        "what": "synthetic",
        "pages": n_pages,
        "tokens_per_page": lengths,
        "k": k,
        "score_p50_ms": round(score_ms, 3),
        "regions_p50_ms": round(regions_ms, 3),
        "added": round(regions_ms / score_ms, 4),
        "regions_found": with_regions,
    }


def encode_ms(model: Path, iters: int) -> float:
    """p50 of encoding one query with the full-size encoder (what a search does before scoring)."""
    from indexer.models.encoder import ColSmolEncoder

    encoder = ColSmolEncoder(model, device="cpu").load()
    texts = ["What was the revenue in 2023?", "quarterly report for the board", "table of figures", "memo"]
    turn = iter(range(1 << 30))
    return p50_ms(lambda: encoder.embed_queries([texts[next(turn) % len(texts)]]), iters)


def tiny_end_to_end(n_pages: int, k: int, iters: int) -> dict[str, Any]:
    from rag.pipeline import RAGPipeline
    from testkit.checkpoints import build_all
    from testkit.pdfs import LETTER, PageSpec, write_pdf
    from tests.conftest import tiny_settings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = build_all(root / "models")
        settings = tiny_settings(models, root / "data", dpi=50)
        with RAGPipeline.from_settings(settings) as rag:
            pages = [PageSpec(*LETTER, text=f"page {i} revenue table {i * 7}") for i in range(n_pages)]
            rag.ingest([write_pdf(root / "corpus.pdf", pages)])
            rag.warm_up()
            queries = ["What was the revenue in 2023?", "quarterly report", "table of figures", "memo"]
            turn = iter(range(1 << 30))

            def search() -> None:
                rag.search(queries[next(turn) % len(queries)], k=k)

            with_ms = p50_ms(search, iters)
            finder, rag.searcher.regions = rag.searcher.regions, None
            without_ms = p50_ms(search, iters)
            rag.searcher.regions = finder
            again_ms = p50_ms(search, iters)  # with regions again: load drift between the two halves shows here
    with_ms = min(with_ms, again_ms)
    return {
        "what": "tiny-end-to-end",
        "pages": n_pages,
        "k": k,
        "search_p50_ms": round(without_ms, 3),
        "with_regions_p50_ms": round(with_ms, 3),
        "added": round(with_ms / without_ms - 1, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--tiny-pages", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--encoder", type=Path, help="a full-size encoder checkpoint: add the query's encoding")
    args = parser.parse_args()
    rows = [synthetic(n, args.k, args.iters) for n in args.pages]
    if args.encoder:
        enc_ms = encode_ms(args.encoder, args.iters)
        for r in [r for r in rows if r["what"] == "synthetic"]:
            search_ms = enc_ms + r["score_p50_ms"]
            rows.append({"what": "with-encoding", "pages": r["pages"], "k": r["k"], "encode_p50_ms": round(enc_ms, 3),
                         "search_p50_ms": round(search_ms, 3), "regions_p50_ms": r["regions_p50_ms"],
                         "added": round(r["regions_p50_ms"] / search_ms, 4)})  # fmt: skip
    rows.append(tiny_end_to_end(args.tiny_pages, args.k, args.iters))
    env = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    print("| measurement | pages | k | search p50 (ms) | regions add (ms) | added |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["what"] == "synthetic":
            base, extra = r["score_p50_ms"], r["regions_p50_ms"]
            label = "synthetic full-size tokens: TokenIndex.score vs RegionFinder.find"
        elif r["what"] == "with-encoding":
            base, extra = r["search_p50_ms"], r["regions_p50_ms"]
            label = f"full-size query encoding ({r['encode_p50_ms']:.1f} ms) + TokenIndex.score vs RegionFinder.find"
        else:
            base, extra = r["search_p50_ms"], r["with_regions_p50_ms"] - r["search_p50_ms"]
            label = "tiny checkpoints: RAGPipeline.search without vs with regions"
        print(f"| {label} | {r['pages']} | {r['k']} | {base:.2f} | {extra:.2f} | {100 * r['added']:.1f}% |")
    print(json.dumps({"env": env, "rows": rows}))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
