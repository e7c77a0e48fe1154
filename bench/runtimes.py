"""CPU encoder runtimes side by side: pages/s of the whole encoder and fidelity of the page embeddings to fp32.

For each runtime of ``indexer.models.vision_runtimes`` (``--runtimes``), the full-size random checkpoint
(bench/make_checkpoints.py) embeds the same Letter pages (pypdfium2, 150 dpi), preprocessed once up front at
each ``--longest-edge``. Timed: the whole forward (vision tower, connector, text model, projection) and the
padding removal, one page a batch, after a one-tile warm-up. Fidelity: per-token cosine of each page's
embeddings against fp32 (min and mean over all tokens of all pages). Then ``auto`` is run once from an empty
cache: which runtime the probe picks on this machine and what the probe cost.

    python bench/make_checkpoints.py /tmp/ckpt
    python bench/runtimes.py --model /tmp/ckpt/encoder --longest-edge 1024,2048 --out rt.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def letter_pages(n: int, dpi: int = 150) -> list:
    from indexer.render import iter_file_pages

    root = Path(__file__).resolve().parents[1]
    pages = [p.image for p in iter_file_pages(root / "tests/fixtures/fpdf2_report.pdf", dpi=dpi)]
    pages += [p.image for p in iter_file_pages(root / "tests/fixtures/pdfium_created.pdf", dpi=dpi)]
    letter = [im for im in pages if im.size == (1275, 1650)]
    return (letter * n)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--runtimes", default="fp32,int8,bf16,openvino,openvino-bf16")
    ap.add_argument("--longest-edge", default="1024,2048")
    ap.add_argument("--pages", type=int, default=2)
    ap.add_argument("--no-auto", action="store_true", help="skip the auto selection run")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import numpy as np
    import torch

    from indexer.models.encoder import ColSmolEncoder

    runtimes = args.runtimes.split(",")
    edges = [int(e) for e in args.longest_edge.split(",")]
    pages = letter_pages(args.pages)
    cache = Path(tempfile.mkdtemp(prefix="colsmol-rt-"))
    rows = []
    for edge in edges:
        ref: list[np.ndarray] | None = None
        for name in runtimes:
            t = time.perf_counter()
            enc = ColSmolEncoder(args.model, device="cpu", batch_size=1, longest_edge=edge, runtime=name,
                                 runtime_cache=cache).load()
            load_s = time.perf_counter() - t
            got = enc.runtime_choice.name if enc.runtime_choice else "?"
            batches = [enc.preprocess_pages([p]) for p in pages]
            tiles = enc.tile_count(pages[0])
            from indexer.models.preprocess import probe_page_inputs

            with torch.inference_mode():
                enc.model(**probe_page_inputs(enc.processor))  # warm-up on one tile
            t = time.perf_counter()
            vecs = [v for b in batches for v in enc.embed_preprocessed(b)]
            dt = time.perf_counter() - t
            if name == "fp32":
                ref = vecs
            cos = None
            if ref is not None:
                cs = np.concatenate([(a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
                                     for a, b in zip(ref, vecs, strict=True)])
                cos = (float(cs.min()), float(cs.mean()))
            row = {"runtime": name, "ran": got, "longest_edge": edge, "tiles": tiles,
                   "tokens": int(vecs[0].shape[0]), "pages": len(pages), "seconds_per_page": dt / len(pages),
                   "pages_per_s": len(pages) / dt, "cos_min": cos and cos[0], "cos_mean": cos and cos[1],
                   "load_s": load_s}
            rows.append(row)
            print(json.dumps(row), flush=True)
            enc.close()
            del enc
    fp32 = {r["longest_edge"]: r["pages_per_s"] for r in rows if r["runtime"] == "fp32"}
    auto = None
    if not args.no_auto:
        auto_cache = Path(tempfile.mkdtemp(prefix="colsmol-rt-auto-"))
        t = time.perf_counter()
        enc = ColSmolEncoder(args.model, device="cpu", runtime="auto", runtime_cache=auto_cache).load()
        first = time.perf_counter() - t
        t = time.perf_counter()
        again = ColSmolEncoder(args.model, device="cpu", runtime="auto", runtime_cache=auto_cache).load()
        cached = time.perf_counter() - t
        auto = {"chosen": enc.runtime_choice.name, "reason": enc.runtime_choice.reason,
                "first_load_s": first, "cached_load_s": cached, "cached_choice": again.runtime_choice.name}
        print(json.dumps(auto), flush=True)
    result = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads",
        "load_avg": os.getloadavg(),
        "rows": rows,
        "auto": auto,
    }
    print("\n| runtime | px | tiles | tokens | s/page | pages/s | vs fp32 | token cosine min / mean |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cos = "-" if r["cos_min"] is None else f"{r['cos_min']:.5f} / {r['cos_mean']:.6f}"
        print(f"| {r['runtime']}{'' if r['ran'] == r['runtime'] else ' (ran ' + r['ran'] + ')'} | "
              f"{r['longest_edge']} | {r['tiles']} | {r['tokens']} | {r['seconds_per_page']:.2f} | "
              f"{r['pages_per_s']:.3f} | {r['pages_per_s'] / fp32[r['longest_edge']]:.2f}x | {cos} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
