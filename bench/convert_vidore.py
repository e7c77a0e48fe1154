"""Convert a downloaded ViDoRe v1 dataset (Hugging Face parquet) into colsmol's BEIR-style folder layout.

    python bench/convert_vidore.py ~/vidore/docvqa_test_subsampled ./eval/docvqa

SRC is a local copy of a ViDoRe v1 dataset repository, e.g. made with
``huggingface-cli download vidore/docvqa_test_subsampled --repo-type dataset --local-dir SRC``: parquet files
(usually ``data/test-*.parquet``) with columns ``query``, ``image``, ``image_filename``, one row per query/page pair.
DST receives:

- ``corpus/<n>.<ext>``: every distinct page image, bytes copied unchanged (no re-encoding);
- ``corpus.jsonl``: ``{"_id": image_filename, "image": "corpus/<n>.<ext>"}``;
- ``queries.jsonl``: ``{"_id": "q<n>", "text": query}``, deduplicated by text;
- ``qrels.jsonl``: ``{"query-id": "q<n>", "corpus-id": image_filename, "score": 1}``.

The mapping is the one ``colsmol eval`` applies when it reads SRC directly (and the one the ViDoRe evaluator
uses), so both give the same numbers; the folder is easier to inspect, trim or extend.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _suffix(page) -> str:  # noqa: ANN001 - a CorpusPage
    from PIL import Image

    if page.path is not None:
        return page.path.suffix.lower() or ".png"
    fmt = (Image.open(io.BytesIO(page.data)).format or "PNG").lower()
    return {"jpeg": ".jpg"}.get(fmt, f".{fmt}")


def convert(src: Path, dst: Path, split: str = "test", overwrite: bool = False) -> dict[str, int]:
    from retriever.evaluation.datasets import DatasetError, is_vidore_parquet, load_dataset

    if not is_vidore_parquet(src, split):
        raise DatasetError(f"{src}: no parquet files with columns query, image, image_filename (ViDoRe v1 layout)")
    ds = load_dataset(src, split=split)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise SystemExit(f"{dst} exists and is not empty; pass --overwrite")
    (dst / "corpus").mkdir(parents=True, exist_ok=True)
    with (dst / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for n, page in enumerate(ds.corpus):
            rel = f"corpus/{n:06d}{_suffix(page)}"
            data = page.data if page.data is not None else page.path.read_bytes()
            (dst / rel).write_bytes(data)
            fh.write(json.dumps({"_id": page.id, "image": rel}, ensure_ascii=False) + "\n")
    with (dst / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid, text in ds.queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    with (dst / "qrels.jsonl").open("w", encoding="utf-8") as fh:
        for qid, judged in ds.qrels.items():
            for cid, score in judged.items():
                fh.write(json.dumps({"query-id": qid, "corpus-id": cid, "score": score}, ensure_ascii=False) + "\n")
    return {"pages": len(ds.corpus), "queries": len(ds.queries)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="local copy of a ViDoRe v1 dataset (parquet)")
    ap.add_argument("dst", type=Path, help="output folder (corpus/, corpus.jsonl, queries.jsonl, qrels.jsonl)")
    ap.add_argument("--split", default="test", help="parquet files whose name starts with this (default: test)")
    ap.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")
    args = ap.parse_args(argv)
    from indexer.errors import ColsmolError

    try:
        counts = convert(args.src, args.dst, args.split, args.overwrite)
    except ColsmolError as exc:
        print(f"convert_vidore: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {counts['pages']} pages and {counts['queries']} queries to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
