"""LibreOffice conversion: seconds a page for each family, parallel against serial, and its share next to the encoder.

The corpus is generated here with the tools users' files come from: python-docx (Word, ``--pages`` pages with a page
break each), python-pptx (``--pages`` slides), openpyxl (3 sheets of 150 rows x 12 columns), Markdown and HTML
(``--pages`` sections of 40 lines), plain text and an EPUB (exported by LibreOffice from a Word file, one chapter a
page). Measured, in this order:

0. warm-up: one text file converted and thrown away (the first LibreOffice start reads its libraries and fonts
   from disk; that cost belongs to no family);
1. serial: one ``OfficeConverter(workers=1)`` converts every file, one after another, from an empty cache; seconds
   a page = conversion wall seconds / pages of the PDF, per family (LibreOffice's start, about a second, is in it);
2. parallel: a fresh ``OfficeConverter(workers=--workers)`` converts the same files, all submitted at once, then
   serial once more (so that a load change during the run shows); the ratio is the mean serial wall / parallel
   wall;
3. with ``--model``: the encoder on ``--encode-pages`` pages of the converted PDFs (rendered at 150 dpi by pdfium,
   ``--runtime``, ``--longest-edge``, ``--batch``), after one warm-up batch; the conversion's share of a page's ingest
   time = conversion s/page / (conversion s/page + encoder s/page), per family.

    python bench/convert.py --pages 6 --workers 2
    python bench/make_checkpoints.py /tmp/ckpt
    python bench/convert.py --pages 6 --workers 2 --model /tmp/ckpt/encoder --runtime int8 --longest-edge 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.hashing import sha256_file  # noqa: E402
from indexer.render.office import OfficeConverter  # noqa: E402
from indexer.render.soffice import run_soffice  # noqa: E402

LOREM = (
    "Quarterly revenue grew in every region while operating costs stayed flat; the board approved the plan "
    "to expand the northern warehouse and to hire two more analysts for the forecasting team."
)


def make_corpus(root: Path, pages: int) -> dict[str, Path]:
    import docx
    import openpyxl
    import pptx
    from docx.enum.text import WD_BREAK

    files: dict[str, Path] = {}

    def word(path: Path, headings: bool) -> Path:
        d = docx.Document()
        for p in range(pages):
            if headings:
                d.add_heading(f"Chapter {p + 1}", level=1)
            for i in range(6):
                d.add_paragraph(f"{p + 1}.{i + 1} {LOREM}")
            if p < pages - 1:
                d.add_paragraph().add_run().add_break(WD_BREAK.PAGE)
        d.save(str(path))
        return path

    files["docx"] = word(root / "report.docx", False)
    deck = pptx.Presentation()
    for p in range(pages):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = f"Slide {p + 1}: results"
        slide.placeholders[1].text = LOREM
    deck.save(str(root / "deck.pptx"))
    files["pptx"] = root / "deck.pptx"
    wb = openpyxl.Workbook()
    for s in range(3):
        ws = wb.active if s == 0 else wb.create_sheet()
        ws.title = f"Sheet{s + 1}"
        for r in range(150):
            ws.append([f"item {r}", r, r * 1.5, "north" if r % 2 else "south"] + [f"note {r}-{c}" for c in range(8)])
    wb.save(str(root / "book.xlsx"))
    files["xlsx"] = root / "book.xlsx"
    sections = [f"## Section {p + 1}\n\n" + "\n\n".join(f"{i}. {LOREM}" for i in range(8)) for p in range(pages)]
    (root / "notes.md").write_text("# Notes\n\n" + "\n\n".join(sections))
    files["md"] = root / "notes.md"
    body = "".join(f"<h2>Section {p + 1}</h2>" + f"<p>{LOREM}</p>" * 8 for p in range(pages))
    (root / "page.html").write_text(f"<html><body><h1>Page</h1>{body}</body></html>")
    files["html"] = root / "page.html"
    (root / "plain.txt").write_text("\n".join(f"{i} {LOREM}" for i in range(pages * 12)))
    files["txt"] = root / "plain.txt"
    made = root / "made"
    made.mkdir()
    book = word(made / "story.docx", True)
    run_soffice(["--convert-to", "epub", "--outdir", str(root), str(book)], made / "profile", 300, made)
    files["epub"] = root / "story.epub"
    return files


def page_count(pdf: Path) -> int:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(pdf))
    try:
        return len(doc)
    finally:
        doc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=6, help="pages (slides, chapters, sections) a document")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="encoder checkpoint, for the share next to it")
    parser.add_argument("--encode-pages", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runtime", default="int8")
    parser.add_argument("--longest-edge", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="colsmol-bench-convert-"))
    files = make_corpus(root, args.pages)
    hashes = {k: sha256_file(p) for k, p in files.items()}

    warm = root / "warm.txt"
    warm.write_text(LOREM)
    OfficeConverter(root / "warm", workers=1).convert(warm, sha256_file(warm))

    serial = OfficeConverter(root / "serial", workers=1)
    per_family: dict[str, dict[str, float]] = {}
    t_all = time.perf_counter()
    pdfs = {}
    for family, path in files.items():
        t = time.perf_counter()
        pdfs[family] = serial.convert(path, hashes[family])
        seconds = time.perf_counter() - t
        n = page_count(pdfs[family])
        per_family[family] = {"pages": n, "seconds": round(seconds, 2), "s_per_page": round(seconds / n, 3)}
        print(f"{family:5s} {n:3d} pages {seconds:6.2f} s  {seconds / n:.3f} s/page", flush=True)
    serial_s = time.perf_counter() - t_all

    parallel = OfficeConverter(root / "parallel", workers=args.workers)
    t = time.perf_counter()
    futures = [parallel.submit(path, hashes[f]) for f, path in files.items()]
    for fut in futures:
        fut.result()
    parallel_s = time.perf_counter() - t
    parallel.close()
    again = OfficeConverter(root / "serial-again", workers=1)
    t = time.perf_counter()
    for family, path in files.items():
        again.convert(path, hashes[family])
    serial_again_s = time.perf_counter() - t
    mean_serial = (serial_s + serial_again_s) / 2
    total_pages = sum(int(v["pages"]) for v in per_family.values())
    print(
        f"all {len(files)} files, {total_pages} pages: serial {serial_s:.1f} s, {args.workers} workers "
        f"{parallel_s:.1f} s, serial again {serial_again_s:.1f} s: {mean_serial / parallel_s:.2f}x",
        flush=True,
    )
    result: dict[str, object] = {
        "pages_a_document": args.pages,
        "families": per_family,
        "serial_s": round(serial_s, 2),
        "parallel_s": round(parallel_s, 2),
        "serial_again_s": round(serial_again_s, 2),
        "workers": args.workers,
        "parallel_speedup": round(mean_serial / parallel_s, 2),
    }

    if args.model is not None:
        from indexer.models.encoder import ColSmolEncoder
        from indexer.render import iter_file_pages

        enc = ColSmolEncoder(
            args.model,
            device="cpu",
            batch_size=args.batch,
            longest_edge=args.longest_edge,
            runtime=args.runtime,
            runtime_cache=root / "runtimes",
        ).load()
        images = [p.image for p in iter_file_pages(pdfs["docx"], dpi=150)][: args.encode_pages + args.batch]
        enc.embed_pages(images[: args.batch])  # warm-up
        t = time.perf_counter()
        enc.embed_pages(images[args.batch : args.batch + args.encode_pages])
        encode_spp = (time.perf_counter() - t) / len(images[args.batch : args.batch + args.encode_pages])
        print(f"encoder {encode_spp:.2f} s/page ({args.runtime}, {args.longest_edge} px, batch {args.batch})")
        for family, v in per_family.items():
            share = v["s_per_page"] / (v["s_per_page"] + encode_spp)
            v["share_of_ingest"] = round(share, 3)
            print(f"{family:5s} conversion share of a page's ingest time: {100 * share:.1f}%")
        result["encoder_s_per_page"] = round(encode_spp, 3)
        result["encoder"] = {"runtime": args.runtime, "longest_edge": args.longest_edge, "batch": args.batch}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
