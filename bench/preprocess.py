"""Page preprocessing: the tensor path against the reference PIL processor, speed and fidelity side by side.

Pages are the repo's PDFs (samples/ and tests/fixtures/) rendered by pypdfium2 at 150 dpi, plus two
odd sizes rendered the same way (a 700 x 1500 receipt and a 3000 x 750 banner). For every page:

- tokens: ``input_ids``, ``attention_mask``, ``pixel_attention_mask`` and all shapes equal or not;
- pixels: max abs difference of ``pixel_values`` (normalized units and 8-bit levels), PSNR over the
  normalized range (2.0, i.e. 255 levels), and how many values differ;
- speed: both paths timed one page at a time, interleaved (reference, tensor, reference, ...) so a
  shared machine's load hits both alike; wall and CPU (process) seconds, median over ``--reps``.

``--embed-pages K`` also runs K pages through the encoder (the full-size random checkpoint from
bench/make_checkpoints.py; ~40 s a Letter page on 2 CPU cores) with each path's batch and reports
the per-token cosine of the page embeddings (min and mean).

    python bench/make_checkpoints.py /tmp/ckpt
    python bench/preprocess.py --model /tmp/ckpt/encoder --threads 1,2 --embed-pages 2 --out pre.json

``--fast`` adds transformers' torchvision image processor (BICUBIC in place of LANCZOS with
torchvision < 0.27; images only, no tokens) as a third row for context.
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
import warnings
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
PDFS = [
    *sorted((ROOT / "samples").glob("*.pdf")),
    ROOT / "tests/fixtures/fpdf2_report.pdf",
    ROOT / "tests/fixtures/pdfium_created.pdf",
    ROOT / "tests/fixtures/pillow_scans.pdf",
]
ODD_POINTS = {"receipt": (336.0, 720.0), "banner": (1440.0, 360.0)}  # 700 x 1500 and 3000 x 750 px at 150 dpi


def render_pages(dpi: int) -> list[tuple[str, object]]:
    from indexer.render import iter_file_pages
    from testkit.pdfs import PageSpec, write_pdf

    pages = [(f"{pdf.stem}#{p.page_number}", p.image) for pdf in PDFS for p in iter_file_pages(pdf, dpi=dpi)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in ODD_POINTS.items():
            pdf = write_pdf(Path(tmp) / f"{name}.pdf", [PageSpec(*size, text=f"{name} page, odd size")])
            pages += [(name, p.image) for p in iter_file_pages(pdf, dpi=dpi)]
    return pages


def fidelity(ours, ref) -> dict:
    import torch

    same = all(
        ours[k].shape == ref[k].shape and torch.equal(ours[k].cpu(), ref[k])
        for k in ("input_ids", "attention_mask", "pixel_attention_mask")
    )
    views = int(ref["pixel_attention_mask"][0].flatten(1).any(1).sum())
    return {"tokens_identical": same and ours["pixel_values"].shape == ref["pixel_values"].shape, "views": views,
            **fidelity_pixels(ours, ref)}


def fidelity_pixels(ours, ref) -> dict:
    """Max abs difference and PSNR of ``pixel_values`` (normalized to [-1, 1], so the peak-to-peak range is 2)."""
    import math

    import torch

    a, b = ours["pixel_values"].cpu(), ref["pixel_values"]
    d = (a - b).abs() if a.shape == b.shape else torch.full((1,), float("inf"))
    mse = float((d.double() ** 2).mean())
    return {
        "max_abs": float(d.max()),
        "max_abs_levels": round(float(d.max()) * 127.5, 3),
        "psnr_db": math.inf if mse == 0 else 10 * math.log10(4.0 / mse),
        "values_differing": int((d > 0).sum()),
        "values": int(d.numel()),
    }


def timed(fn, images, sync) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn(images)
    sync()
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="encoder dir (processor and, for --embed-pages, weights)")
    ap.add_argument("--device", default="cpu", help="where the tensor path runs (cpu, cuda)")
    ap.add_argument("--threads", default="1,2", help="torch intra-op thread counts to time")
    ap.add_argument("--reps", type=int, default=3, help="timed passes over the pages per thread count (0: no timing)")
    ap.add_argument("--embed-pages", type=int, default=2)
    ap.add_argument("--dpi", type=int, default=150)
    ap.add_argument("--fast", action="store_true", help="also time transformers' torchvision image processor")
    ap.add_argument("--approx", action="store_true",
                    help="also the opt-in fast path (COLSMOL_PREPROCESS=fast): one antialiased bicubic resize per view")
    ap.add_argument("--smoke", action="store_true", help="3 pages, 1 rep, no embeddings")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import numpy as np
    import PIL
    import torch
    import transformers
    from colpali_engine.models import ColIdefics3Processor

    from indexer.models.preprocess import TensorPreprocessor

    load_start = os.getloadavg()
    proc = ColIdefics3Processor.from_pretrained(args.model)
    device = torch.device(args.device)
    tensor = TensorPreprocessor(proc, device=device)
    approx = TensorPreprocessor(proc, device=device, exact=False)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pages = render_pages(args.dpi)
    if args.smoke:
        pages, args.reps, args.embed_pages = pages[:3], 1, 0
    images = [im for _, im in pages]

    # ---- fidelity, page by page
    rows = []
    for name, im in pages:
        ref = proc.process_images([im])
        rows.append({"page": name, "size": list(im.size), **fidelity(tensor([im]), ref)})
        if args.approx:
            rows[-1]["fast"] = fidelity(approx([im]), ref)
        r = rows[-1]
        print(f"{name:40s} {im.size!s:14s} views={r['views']:2d} tokens_identical={r['tokens_identical']} "
              f"max_abs={r['max_abs']:.4f} psnr={r['psnr_db']:.1f} dB", flush=True)

    # ---- speed, interleaved
    paths = {"reference (PIL)": proc.process_images, "tensor": tensor}
    if args.approx:
        paths["fast (one bicubic resize a view, opt-in)"] = approx
    if args.fast:
        from transformers.models.idefics3.image_processing_idefics3 import Idefics3ImageProcessor

        ip = proc.image_processor
        fast = Idefics3ImageProcessor(
            size=dict(ip.size), max_image_size=dict(ip.max_image_size), do_image_splitting=ip.do_image_splitting
        )
        paths["transformers torchvision (BICUBIC), images only"] = lambda ims: fast(
            images=[[i] for i in ims], return_tensors="pt"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for row, im in zip(rows, images, strict=True):
                f = fidelity_pixels(fast(images=[[im]], return_tensors="pt"), ip(images=[[im]], return_tensors="pt"))
                row["torchvision_max_abs"], row["torchvision_psnr_db"] = f["max_abs"], f["psnr_db"]
    speed = []
    default_threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torchvision processor warns on every call about LANCZOS
        for threads in [int(t) for t in args.threads.split(",")] if args.reps else []:
            torch.set_num_threads(threads)
            for fn in paths.values():
                fn(images[:1])  # warm-up: weight plans, scratch buffers, prompt ids
            wall: dict[str, list[float]] = {k: [] for k in paths}
            cpu: dict[str, list[float]] = {k: [] for k in paths}
            for _ in range(args.reps):
                for im in images:
                    for k, fn in paths.items():
                        w, c = timed(fn, [im], sync)
                        wall[k].append(w)
                        cpu[k].append(c)
            for k in paths:
                speed.append({
                    "path": k, "threads": threads,
                    "wall_s_per_page": statistics.median(wall[k]), "cpu_s_per_page": statistics.median(cpu[k]),
                    "pages_per_s": 1 / statistics.median(wall[k]),
                })
            ref_row = next(r for r in speed if r["threads"] == threads and r["path"] == "reference (PIL)")
            for r in speed:
                if r["threads"] == threads:
                    r["speedup_wall"] = ref_row["wall_s_per_page"] / r["wall_s_per_page"]
                    r["speedup_cpu"] = ref_row["cpu_s_per_page"] / r["cpu_s_per_page"]
    torch.set_num_threads(default_threads)

    # ---- embeddings
    embed = []
    if args.embed_pages:
        from indexer.models.encoder import ColSmolEncoder

        enc = ColSmolEncoder(args.model, device=args.device, preprocess="reference").load()
        # The pages whose pixels differ most: identical inputs would trivially give cosine 1.
        picks = sorted(range(len(pages)), key=lambda i: -rows[i]["values_differing"])[: args.embed_pages]
        for i in picks:
            name, im = pages[i]
            t = time.perf_counter()
            a = enc.embed_preprocessed(tensor([im]))[0]
            b = enc.embed_preprocessed(proc.process_images([im]))[0]
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            embed.append({"page": name, "tokens": int(a.shape[0]), "cos_min": float(cos.min()),
                          "cos_mean": float(cos.mean()), "seconds": time.perf_counter() - t})
            if args.approx:
                c = enc.embed_preprocessed(approx([im]))[0]
                cos = (c * b).sum(1) / (np.linalg.norm(c, axis=1) * np.linalg.norm(b, axis=1))
                embed[-1].update(fast_cos_min=float(cos.min()), fast_cos_mean=float(cos.mean()))
                print(f"embeddings {name}, fast path: cosine min {cos.min():.6f} mean {cos.mean():.6f}", flush=True)
            print(f"embeddings {name}: {a.shape[0]} tokens, cosine min {cos.min():.6f} mean {cos.mean():.6f}",
                  flush=True)

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "pillow": PIL.__version__},
        "model": args.model, "dpi": args.dpi, "tensor_dtype": str(tensor.dtype),
        "pages": rows, "speed": speed, "embeddings": embed,
        "summary": {
            "pages": len(rows),
            "tokens_identical_all": all(r["tokens_identical"] for r in rows),
            "max_abs": max(r["max_abs"] for r in rows),
            "max_abs_levels": max(r["max_abs_levels"] for r in rows),
            "psnr_db_min": min(r["psnr_db"] for r in rows),
            "psnr_db_median": statistics.median(r["psnr_db"] for r in rows),
            **({"torchvision_max_abs": max(r["torchvision_max_abs"] for r in rows),
                "torchvision_psnr_db_min": min(r["torchvision_psnr_db"] for r in rows),
                "torchvision_psnr_db_median": statistics.median(r["torchvision_psnr_db"] for r in rows)}
               if args.fast else {}),
            **({"fast_tokens_identical_all": all(r["fast"]["tokens_identical"] for r in rows),
                "fast_max_abs": max(r["fast"]["max_abs"] for r in rows),
                "fast_psnr_db_min": min(r["fast"]["psnr_db"] for r in rows),
                "fast_psnr_db_median": statistics.median(r["fast"]["psnr_db"] for r in rows)}
               if args.approx else {}),
        },
    }
    _print_tables(result)
    print(json.dumps(result, indent=2, default=str))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _print_tables(r: dict) -> None:
    s = r["summary"]
    m = r["machine"]
    print(f"\n{r['date']} | {m['cpu']}, {m['cores']} cores | load {m['loadavg_start'][0]:.1f} -> "
          f"{m['loadavg_end'][0]:.1f} | tensor path on {m['device']} in {r['tensor_dtype']}")
    print("\n| path | torch threads | wall ms/page | CPU ms/page | pages/s | speedup (wall) | speedup (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for x in r["speed"]:
        print(f"| {x['path']} | {x['threads']} | {x['wall_s_per_page'] * 1e3:.0f} | {x['cpu_s_per_page'] * 1e3:.0f} | "
              f"{x['pages_per_s']:.2f} | {x['speedup_wall']:.2f}x | {x['speedup_cpu']:.2f}x |")
    print(f"\n| fidelity over {s['pages']} pages | value |\n|---|---|")
    same = s["tokens_identical_all"]
    print(f"| tiles, tile layout, input_ids, attention_mask, pixel_attention_mask identical | {same} |")
    print(f"| pixel_values max abs difference | {s['max_abs']:.4f} ({s['max_abs_levels']:.1f} 8-bit levels) |")
    print(f"| PSNR (range 2.0), worst / median page | {s['psnr_db_min']:.1f} / {s['psnr_db_median']:.1f} dB |")
    if "torchvision_max_abs" in s:
        print(f"| for context, transformers' torchvision processor (BICUBIC): max abs / PSNR worst, median | "
              f"{s['torchvision_max_abs']:.4f} ({s['torchvision_max_abs'] * 127.5:.0f} levels) / "
              f"{s['torchvision_psnr_db_min']:.1f}, {s['torchvision_psnr_db_median']:.1f} dB |")
    if "fast_max_abs" in s:
        print(f"| fast path (opt-in): tokens identical | {s['fast_tokens_identical_all']} |")
        print(f"| fast path: max abs / PSNR worst, median | {s['fast_max_abs']:.4f} "
              f"({s['fast_max_abs'] * 127.5:.0f} levels) / {s['fast_psnr_db_min']:.1f}, "
              f"{s['fast_psnr_db_median']:.1f} dB |")
    for e in r["embeddings"]:
        print(f"| embedding token cosine, {e['page']} ({e['tokens']} tokens), min / mean | "
              f"{e['cos_min']:.6f} / {e['cos_mean']:.6f} |")
        if "fast_cos_min" in e:
            print(f"| fast path embedding token cosine, {e['page']}, min / mean | "
                  f"{e['fast_cos_min']:.6f} / {e['fast_cos_mean']:.6f} |")


if __name__ == "__main__":
    main()
