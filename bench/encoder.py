"""Encoder throughput: pages/s of the ColSmolVLM forward at several batch sizes, Letter and A4 pages.

Pages are real PDFs rendered by pypdfium2 at 150 dpi; preprocessing (Idefics3 tiling, PIL) is done
once up front and timed separately, so the table shows the encoder's own compute. Run it on the GPU
machine with the full-size random checkpoint (bench/make_checkpoints.py):

    python bench/make_checkpoints.py /tmp/ckpt
    python bench/encoder.py --model /tmp/ckpt/encoder --batches 1,8,16,32 --out encoder.json

``--smoke`` runs a few pages on CPU with whatever model is given, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def render_pages(kind: str, n: int, dpi: int = 150) -> list:
    import tempfile

    from indexer.render import iter_file_pages
    from testkit.pdfs import A4, LETTER, PageSpec, write_pdf

    size = LETTER if kind == "letter" else A4
    with tempfile.TemporaryDirectory() as tmp:
        path = write_pdf(Path(tmp) / f"{kind}.pdf", [PageSpec(*size, text=f"{kind} page {i}") for i in range(n)])
        return [p.image for p in iter_file_pages(path, dpi=dpi)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,8,16,32")
    ap.add_argument("--pages", type=int, default=64, help="pages per (size, batch) measurement")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from indexer.models.encoder import ColSmolEncoder

    if args.smoke:
        args.pages, args.batches = 4, "1,2"
    batches = [int(b) for b in args.batches.split(",")]
    enc = ColSmolEncoder(args.model, device=args.device).load()
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)
    device_name = torch.cuda.get_device_name() if enc.device.type == "cuda" else platform.processor() or "cpu"
    rows = []
    for kind in ("letter", "a4"):
        pages = render_pages(kind, args.pages)
        t = time.perf_counter()
        pre_one = enc.preprocess_pages(pages[:1])
        pre_s = time.perf_counter() - t
        tokens = int(pre_one["attention_mask"].sum())
        tiles = enc.tile_count(pages[0])
        for b in batches:
            pre = [enc.preprocess_pages(pages[i : i + b]) for i in range(0, len(pages), b)]
            enc.embed_preprocessed(pre[0])  # warm-up (cuDNN/SDPA kernel choice, allocator)
            sync()
            t = time.perf_counter()
            n = 0
            for batch in pre:
                n += len(enc.embed_preprocessed(batch))
            sync()
            dt = time.perf_counter() - t
            rows.append({"page": kind, "tiles": tiles, "tokens": tokens, "batch": b, "pages_per_s": n / dt,
                         "preprocess_s_per_page_pil": pre_s})
            print(f"{kind:6s} tiles={tiles:2d} tokens={tokens:5d} batch={b:3d}: {n / dt:7.1f} pages/s", flush=True)
    result = {"device": device_name, "date": date.today().isoformat(), "model": args.model,
              "dtype": str(enc.model.dtype), "rows": rows}
    print("\n| page | tiles | tokens | batch | pages/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['page']} | {r['tiles']} | {r['tokens']} | {r['batch']} | {r['pages_per_s']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
