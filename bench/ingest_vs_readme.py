"""``colsmol ingest`` against the colpali-engine README loop, side by side, same PDFs, same encoder, one run.

Both sides run as the commands a user would run, each in a fresh process, so both pay their imports and model
loading, and each repetition runs them one after the other (ABAB...), so load from other work on a shared
machine falls on both alike:

- **colsmol**: ``colsmol ingest CORPUS --json`` into a new data directory: pages rendered, preprocessed,
  embedded, stored in Qdrant Edge with a WebP page image and thumbnail each. A new data directory has no
  measured encoder runtime yet (``COLSMOL_ENCODER_RUNTIME=auto``), so this is a first ingest on a new machine,
  runtime calibration included. ``--cached-runtime`` adds a third command per repetition: the same ingest with
  the runtime choice already measured (every later ingest on that machine).
- **README loop**: pypdfium2 renders each PDF at the same dpi, ``ColIdefics3Processor.process_images`` and
  ``ColIdefics3.from_pretrained(...)(**batch)`` under ``torch.no_grad()`` per batch of ``--batch`` pages of a
  document, the embeddings kept in a list; nothing stored.

The encoder defaults to a tiny random ColIdefics3 at the real page geometry (512 px tiles, longest edge 2048,
17 tiles and ~1,150 tokens a Letter page; ``testkit.checkpoints.build_encoder_real_geometry``): its forward pass
costs little, so what is compared is the pipeline around the encoder. ``--model`` takes another checkpoint.

The corpus is ``samples/*.pdf`` and the readable PDFs of ``tests/fixtures`` (14 pages), plus ``--extra-pages``
generated Letter pages (half text, half scanned; ``testkit.pdfs``). Prints a table: seconds a page per command
(median over ``--reps``), the ratio README loop / colsmol (above 1: colsmol is faster), and colsmol's seconds per
stage from its ``--json`` report (``indexer.stages``). Example (BENCHMARKS.md)::

    python bench/ingest_vs_readme.py --reps 3 --extra-pages 10 --cached-runtime
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURES = ("fpdf2_report.pdf", "owner_password_only.pdf", "pdfium_created.pdf", "pillow_scans.pdf")


def make_corpus(root: Path, extra_pages: int) -> list[Path]:
    """Copy the sample and fixture PDFs into ``root`` and add generated pages; returns the PDFs."""
    import shutil

    from testkit.pdfs import LETTER, PageSpec, write_pdf

    root.mkdir(parents=True, exist_ok=True)
    pdfs = []
    for src in [*sorted((ROOT / "samples").glob("*.pdf")), *(ROOT / "tests" / "fixtures" / f for f in FIXTURES)]:
        pdfs.append(Path(shutil.copy(src, root / src.name)))
    if extra_pages:
        text = extra_pages - extra_pages // 2
        specs = [PageSpec(*LETTER, text=f"generated text page {i + 1}") for i in range(text)]
        pdfs.append(write_pdf(root / "generated-text.pdf", specs))
        if extra_pages // 2:
            scans = [PageSpec(*LETTER, text=f"generated scan {i + 1}", scan=True) for i in range(extra_pages // 2)]
            pdfs.append(write_pdf(root / "generated-scans.pdf", scans))
    return pdfs


def readme_loop(model: str, pdfs: list[Path], dpi: int, batch: int) -> dict[str, float]:
    """colpali-engine's README usage over ``pdfs``; returns pages and seconds (load, work)."""
    started = time.perf_counter()
    import pypdfium2 as pdfium
    import torch
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor

    model_ = ColIdefics3.from_pretrained(model, dtype=torch.float32, device_map="cpu").eval()
    processor = ColIdefics3Processor.from_pretrained(model)
    loaded = time.perf_counter()
    embeddings: list[torch.Tensor] = []
    pages = 0
    for path in pdfs:
        pdf = pdfium.PdfDocument(str(path))
        images = [pdf[i].render(scale=dpi / 72).to_pil().convert("RGB") for i in range(len(pdf))]
        for i in range(0, len(images), batch):
            inputs = processor.process_images(images[i : i + batch]).to(model_.device)
            with torch.no_grad():
                embeddings.extend(model_(**inputs).unbind(0))
        pages += len(images)
    done = time.perf_counter()
    return {"pages": pages, "load_s": loaded - started, "work_s": done - loaded}


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="encoder checkpoint (default: tiny, real page geometry)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--extra-pages", type=int, default=10, help="generated Letter pages added to the 14")
    ap.add_argument("--dpi", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8, help="pages per forward pass, both sides (COLSMOL_PAGE_BATCH_SIZE)")
    ap.add_argument("--cached-runtime", action="store_true", help="also time an ingest with the runtime choice cached")
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the measurements as JSON")
    ap.add_argument("--readme-loop", nargs="+", help=argparse.SUPPRESS)  # internal: MODEL PDF...: one README run
    args = ap.parse_args()
    if args.readme_loop:
        model, *pdfs = args.readme_loop
        print(json.dumps(readme_loop(model, [Path(p) for p in pdfs], args.dpi, args.batch)))
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="colsmol-bench-", dir=args.tmp) as tmp_s:
        tmp = Path(tmp_s)
        model = args.model
        if model is None:
            from testkit.checkpoints import build_encoder_real_geometry

            model = str(build_encoder_real_geometry(tmp / "encoder"))
        pdfs = make_corpus(tmp / "corpus", args.extra_pages)
        env.update(
            COLSMOL_ENCODER_MODEL=model,
            COLSMOL_DPI=str(args.dpi),
            COLSMOL_PAGE_BATCH_SIZE=str(args.batch),
            COLSMOL_ENCODER_RUNTIME="auto",
        )
        colsmol = [
            sys.executable,
            "-c",
            "from api.cli.app import main; main()",
            "ingest",
            str(tmp / "corpus"),
            "--json",
        ]
        readme = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--dpi",
            str(args.dpi),
            "--batch",
            str(args.batch),
            "--readme-loop",
            model,
            *map(str, pdfs),
        ]
        rows: dict[str, list[dict]] = {"colsmol": [], "colsmol-cached": [], "readme": []}
        warm = tmp / "warm-data"  # a data dir whose runtime choice is measured once, before the repetitions
        if args.cached_runtime:
            run(colsmol, {**env, "COLSMOL_DATA_DIR": str(warm), "COLSMOL_COLLECTION": "warm-up"})
        for rep in range(args.reps):
            data = tmp / f"data-{rep}"
            wall, out = run(colsmol, {**env, "COLSMOL_DATA_DIR": str(data)})
            rows["colsmol"].append({"wall_s": wall, **json.loads(out)})
            if args.cached_runtime:
                wall, out = run(colsmol, {**env, "COLSMOL_DATA_DIR": str(warm), "COLSMOL_COLLECTION": f"rep-{rep}"})
                rows["colsmol-cached"].append({"wall_s": wall, **json.loads(out)})
            wall, out = run(readme, env)
            rows["readme"].append({"wall_s": wall, **json.loads(out.strip().splitlines()[-1])})
            print(
                f"rep {rep + 1}/{args.reps}: "
                + ", ".join(f"{k} {v[-1]['wall_s']:.1f} s" for k, v in rows.items() if v),
                flush=True,
            )

    pages = rows["readme"][0]["pages"]
    for r in rows["colsmol"] + rows["colsmol-cached"]:
        if r["pages_embedded"] != pages or r["failed"]:
            raise SystemExit(f"colsmol embedded {r['pages_embedded']} of {pages} pages, {r['failed']} files failed")
    med = {k: statistics.median(r["wall_s"] for r in v) / pages for k, v in rows.items() if v}
    work = {
        "colsmol": statistics.median((r["seconds"] - r["load_seconds"]) for r in rows["colsmol"]) / pages,
        "readme": statistics.median(r["work_s"] for r in rows["readme"]) / pages,
    }
    print(
        f"\n{pages} pages, {len(pdfs)} PDFs, {args.dpi} dpi, batch {args.batch}, {args.reps} reps ABAB, "
        f"{os.cpu_count()} CPUs, {date.today().isoformat()}\n"
    )
    print("| command | s/page (whole command, median) | README loop / this |")
    print("|---|---|---|")
    names = {
        "colsmol": "colsmol ingest (first ingest: runtime calibration included)",
        "colsmol-cached": "colsmol ingest (runtime choice cached)",
        "readme": "colpali README loop",
    }
    for k, v in med.items():
        print(f"| {names[k]} | {v:.3f} | {med['readme'] / v:.2f}x |")
    print(
        f"\nwork only (model loading excluded): colsmol {work['colsmol']:.3f} s/page, README loop "
        f"{work['readme']:.3f} s/page: {work['readme'] / work['colsmol']:.2f}x"
    )
    for k in ("colsmol", "colsmol-cached"):
        if not rows[k]:
            continue
        for view in ("wall", "busy"):
            stages = sorted(
                {s for r in rows[k] for s in r["stages"][view]},
                key=lambda s: list(rows[k][0]["stages"][view]).index(s) if s in rows[k][0]["stages"][view] else 99,
            )
            split = ", ".join(
                f"{s} {statistics.median(r['stages'][view].get(s, 0.0) for r in rows[k]):.2f}" for s in stages
            )
            print(f"{names[k]}, seconds by stage ({view}, median): {split}")
    if args.out:
        args.out.write_text(json.dumps({"date": date.today().isoformat(), "pages": pages, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
