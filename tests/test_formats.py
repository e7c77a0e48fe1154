"""Office, web, Markdown, EPUB and text files through LibreOffice: real files made by python-docx, python-pptx,
openpyxl and LibreOffice itself, converted by the real LibreOffice, ingested by the real pipeline (tiny models).

Conversions take seconds each, so one module-scoped ingest of a mixed folder feeds most checks.
"""

from __future__ import annotations

import http.server
import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexer.errors import DocumentError
from indexer.hashing import sha256_file
from indexer.render.office import OfficeConverter
from indexer.render.soffice import find_soffice, network_sandbox, run_soffice
from testkit.pdfs import LETTER, PageSpec, write_pdf
from tests.conftest import tiny_settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_soffice() is None, reason="LibreOffice is not installed (apt-get install libreoffice-*)"),
]

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers
def soffice_pids(marker: Path) -> list[int]:
    """Live LibreOffice processes whose command line names ``marker`` (their profile lies under it)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"soffice" in cmd and str(marker).encode() in cmd and state != "Z":
            pids.append(int(d.name))
    return pids


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def pdf_pages_text(pdf: Path) -> list[str]:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(pdf))
    try:
        return [doc[i].get_textpage().get_text_range() for i in range(len(doc))]
    finally:
        doc.close()


def libreoffice_convert(src: Path, to: str, out_dir: Path) -> Path:
    """Make a test file with LibreOffice itself (``.odt``, ``.xls``, ``.epub`` from python-docx/openpyxl files)."""
    work = src.parent / f"lo-{src.stem}-{to}"
    work.mkdir()
    run_soffice(["--convert-to", to, "--outdir", str(out_dir), str(src)], work / "profile", 120, work)
    produced = out_dir / f"{src.stem}.{to.split(':')[0]}"
    assert produced.is_file(), f"LibreOffice could not make {produced.name}"
    return produced


def make_docx(path: Path, pages: list[list[str]], headings: bool = False) -> Path:
    import docx
    from docx.enum.text import WD_BREAK

    d = docx.Document()
    for i, paragraphs in enumerate(pages):
        for j, text in enumerate(paragraphs):
            if headings and j == 0:
                d.add_heading(text, level=1)
            else:
                d.add_paragraph(text)
        if i < len(pages) - 1:
            d.add_paragraph().add_run().add_break(WD_BREAK.PAGE)
    d.save(str(path))
    return path


def make_xlsx(path: Path) -> Path:
    import openpyxl

    wb = openpyxl.Workbook()
    wide = wb.active
    wide.title = "Wide"
    for r in range(6):
        for c in range(30):
            wide.cell(row=r + 1, column=c + 1, value=f"r{r}c{c}")
    wide.cell(row=1, column=30, value="widecolumnend")
    second = wb.create_sheet("Second")
    second["A1"] = "second sheet marker"
    wb.save(str(path))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder mixing a PDF with every family LibreOffice converts, each with known text on known pages."""
    import pptx

    root = tmp_path_factory.mktemp("mixed")
    make_docx(root / "report.docx", [["alpha docx page one"], ["bravo docx page two"]])
    deck = pptx.Presentation()
    for n in (1, 2, 3):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = f"slide {n} marker"
    deck.save(str(root / "deck.pptx"))
    make_xlsx(root / "book.xlsx")
    (root / "page.html").write_text("<html><body><h1>web page marker</h1><p>hello</p></body></html>")
    (root / "notes.md").write_text("# markdown marker\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (root / "plain.txt").write_text("plain text marker\nsecond line\n")
    write_pdf(root / "paper.pdf", [PageSpec(*LETTER, text="pdf marker")])
    # Made by LibreOffice from python-docx / openpyxl files, outside the folder.
    made = tmp_path_factory.mktemp("made")
    libreoffice_convert(make_docx(made / "minutes.docx", [["odt minutes marker"]]), "odt", root)
    libreoffice_convert(make_xlsx(made / "legacy.xlsx"), "xls", root)
    book = make_docx(
        made / "story.docx", [["Chapter One", "epub first chapter"], ["Chapter Two", "epub second chapter"]], True
    )
    libreoffice_convert(book, "epub", root)
    return root


EXPECTED_PAGES = {
    "report.docx": 2,
    "deck.pptx": 3,
    "book.xlsx": 2,  # two sheets, the 30-column one fitted to one page wide
    "page.html": 1,
    "notes.md": 1,
    "plain.txt": 1,
    "paper.pdf": 1,
    "minutes.odt": 1,
    "legacy.xls": 2,
    "story.epub": 2,
}
# (file, page number, text that must be on that page of the converted PDF)
EXPECTED_TEXT = [
    ("report.docx", 1, "alpha docx page one"),
    ("report.docx", 2, "bravo docx page two"),
    ("deck.pptx", 1, "slide 1 marker"),
    ("deck.pptx", 3, "slide 3 marker"),
    ("book.xlsx", 1, "widecolumnend"),
    ("book.xlsx", 1, "r0c0"),
    ("book.xlsx", 2, "second sheet marker"),
    ("page.html", 1, "web page marker"),
    ("notes.md", 1, "markdown marker"),
    ("plain.txt", 1, "plain text marker"),
    ("minutes.odt", 1, "odt minutes marker"),
    ("legacy.xls", 1, "widecolumnend"),
    ("story.epub", 1, "epub first chapter"),
    ("story.epub", 2, "epub second chapter"),
]


@pytest.fixture(scope="module")
def rag(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from rag.pipeline import RAGPipeline

    settings = tiny_settings(tiny_models, tmp_path_factory.mktemp("formats-data"), dpi=40, convert_workers=2)
    pipeline = RAGPipeline.from_settings(settings)
    yield pipeline
    pipeline.close()


@pytest.fixture(scope="module")
def ingested(rag: Any, corpus: Path) -> Any:
    return rag.ingest([corpus])


# ---------------------------------------------------------------------------------------------- the mixed folder
def test_mixed_folder_ingests_every_family_with_its_pages_and_name(ingested: Any, rag: Any, corpus: Path) -> None:
    by_name = {Path(f.path).name: f for f in ingested.files}
    assert {n: (f.status, f.error) for n, f in by_name.items() if f.status != "indexed"} == {}
    assert {n: by_name[n].pages for n in EXPECTED_PAGES} == EXPECTED_PAGES
    docs = {d.file_name: d for d in rag.documents()}
    assert set(docs) == set(EXPECTED_PAGES)
    report = docs["report.docx"]
    assert report.source == str((corpus / "report.docx").resolve())
    assert report.content_hash == sha256_file(corpus / "report.docx")  # the original's identity, not the PDF's
    hits = rag.search("docx page two", k=50, filter={"doc_id": report.doc_id})
    assert {h.file_name for h in hits} == {"report.docx"} and {h.page_number for h in hits} == {1, 2}


def test_known_text_is_on_its_page_of_the_converted_pdf(ingested: Any, rag: Any, corpus: Path) -> None:
    for name, page, text in EXPECTED_TEXT:
        pdf = rag.converter.cached(sha256_file(corpus / name))
        pages = pdf_pages_text(pdf)
        assert len(pages) == EXPECTED_PAGES[name], name
        assert text in pages[page - 1], f"{text!r} not on page {page} of {name}: {pages[page - 1][:200]!r}"
        others = [i + 1 for i, t in enumerate(pages) if text in t and i + 1 != page]
        assert not others or name.endswith((".xlsx", ".xls")), f"{text!r} also on pages {others} of {name}"


def test_unchanged_files_are_not_converted_again_and_delete_removes_the_pdf(
    ingested: Any, rag: Any, corpus: Path
) -> None:
    pdfs = {p.name: p.stat().st_mtime_ns for p in rag.converter.cache_dir.glob("*.pdf")}
    assert len(pdfs) == len(EXPECTED_PAGES) - 1  # every file but the PDF
    again = rag.ingest([corpus])
    assert {f.status for f in again.files} == {"unchanged"}
    assert {p.name: p.stat().st_mtime_ns for p in rag.converter.cache_dir.glob("*.pdf")} == pdfs
    # A cached conversion is used as is, never redone (its bytes are not even read).
    docx_hash = sha256_file(corpus / "report.docx")
    assert rag.converter.convert(corpus / "report.docx", docx_hash).stat().st_mtime_ns == pdfs[f"{docx_hash}.pdf"]
    doc_id = next(d.doc_id for d in rag.documents() if d.file_name == "plain.txt")
    rag.delete(doc_id)
    assert not list(rag.converter.cache_dir.glob(f"{doc_id}*.pdf"))
    assert len(list(rag.converter.cache_dir.glob("*.pdf"))) == len(pdfs) - 1


# ---------------------------------------------------------------------------------------------- bad files
def test_bad_office_files_fail_in_one_line_and_the_batch_goes_on(rag: Any, corpus: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.docx").write_bytes(b"")
    good = (corpus / "report.docx").read_bytes()
    (bad / "truncated.docx").write_bytes(good[: len(good) // 2])
    (bad / "program.docx").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 200)
    (bad / "bomb.docx").write_bytes(zip_bomb())
    (bad / "binary.md").write_bytes(b"\0\1\2\3" * 100)
    (bad / "ok.txt").write_text("still indexed\n")
    report = rag.ingest([bad])
    errors = {Path(f.path).name: f.error for f in report.files if f.status == "failed"}
    assert errors == {
        "empty.docx": "empty file",
        "truncated.docx": errors["truncated.docx"],
        "program.docx": "not a Word file (content is an executable program)",
        "bomb.docx": errors["bomb.docx"],
        "binary.md": "not a MD text file (binary content)",
    }
    assert errors["truncated.docx"].startswith("corrupt Word file (broken ZIP container")
    assert errors["bomb.docx"].startswith("refused: ZIP container") and "ZIP bomb" in errors["bomb.docx"]
    assert all("\n" not in e for e in errors.values())
    assert [Path(f.path).name for f in report.files if f.status == "indexed"] == ["ok.txt"]
    assert report.exit_code == 1


def test_without_libreoffice_pdfs_work_and_each_office_file_names_the_package(
    rag: Any, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LibreOffice cannot be uninstalled here: make the converter not find it.
    import indexer.render.office as office

    monkeypatch.setattr(office, "find_soffice", lambda: None)
    folder = tmp_path / "docs"
    folder.mkdir()
    write_pdf(folder / "fresh.pdf", [PageSpec(*LETTER, text="another pdf")])
    (folder / "fresh.md").write_text("# not converted\n")
    report = rag.ingest([folder])
    status = {Path(f.path).name: (f.status, f.error) for f in report.files}
    assert status["fresh.pdf"] == ("indexed", None)
    assert status["fresh.md"][0] == "failed"
    assert "LibreOffice is not installed" in status["fresh.md"][1]
    assert "apt-get install libreoffice-core-nogui libreoffice-writer-nogui" in status["fresh.md"][1]
    assert report.exit_code == 1


def zip_bomb() -> bytes:
    """A .docx-shaped ZIP whose one part inflates 1000:1 (64 MB of zeros in about 64 KB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open("word/document.xml", "w") as part:
            chunk = b"\0" * (1 << 20)
            for _ in range(64):
                part.write(chunk)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- hostile files
@pytest.fixture
def canary_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server (127.0.0.1, ephemeral port) that records every request it gets."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"CANARYHTTP")

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def hostile_files(folder: Path, url: str, canary: Path) -> list[Path]:
    import docx
    import openpyxl
    from docx.opc.constants import RELATIONSHIP_TYPE as RT
    from docx.oxml import parse_xml

    # A spreadsheet calling web services (remote, and a local file through file://).
    wb = openpyxl.Workbook()
    ws = wb.active
    ws["A1"] = "visible sheet text"
    ws["A2"] = f'=_xlfn.WEBSERVICE("{url}/webservice")'
    ws["A3"] = f'=_xlfn.WEBSERVICE("{canary.as_uri()}")'
    ws["A4"] = f'=_xlfn.FILTERXML(_xlfn.WEBSERVICE("{url}/filterxml"),"//a")'
    wb.save(str(folder / "hostile.xlsx"))
    # A Word file with linked (not embedded) images and fields that pull in a local file and a remote picture.
    d = docx.Document()
    d.add_paragraph("visible docx text")
    ns = (
        'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
        'xmlns:wp="http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing" '
        'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" '
        'xmlns:pic="http://schemas.openxmlformats.org/drawingml/2006/picture" '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
    )
    for target in (f"{url}/linked.png", canary.as_uri()):
        rid = d.part.relate_to(target, RT.IMAGE, is_external=True)
        d.element.body.append(
            parse_xml(
                f'<w:p {ns}><w:r><w:drawing><wp:inline><wp:extent cx="914400" cy="914400"/><wp:docPr id="1" name="p"/>'
                '<a:graphic><a:graphicData uri="http://schemas.openxmlformats.org/drawingml/2006/picture"><pic:pic>'
                '<pic:nvPicPr><pic:cNvPr id="1" name="p"/><pic:cNvPicPr/></pic:nvPicPr>'
                f'<pic:blipFill><a:blip r:link="{rid}"/></pic:blipFill><pic:spPr><a:xfrm><a:off x="0" y="0"/>'
                '<a:ext cx="914400" cy="914400"/></a:xfrm><a:prstGeom prst="rect"/></pic:spPr></pic:pic>'
                "</a:graphicData></a:graphic></wp:inline></w:drawing></w:r></w:p>"
            )
        )
    for instruction in (f'INCLUDETEXT "{canary}"', f'INCLUDEPICTURE "{url}/include.png" \\d'):
        d.element.body.append(
            parse_xml(
                f'<w:p {ns}><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText xml:space="preserve"> '
                f'{instruction} </w:instrText></w:r><w:r><w:fldChar w:fldCharType="separate"/></w:r>'
                '<w:r><w:t>field result</w:t></w:r><w:r><w:fldChar w:fldCharType="end"/></w:r></w:p>'
            )
        )
    d.save(str(folder / "hostile.docx"))
    # A web page and a Markdown note pointing at everything a browser would load.
    (folder / "hostile.html").write_text(
        f'<html><head><link rel="stylesheet" href="{url}/style.css"><style>@import url({url}/import.css);'
        f"body {{background: url({url}/bg.png)}}</style><script>fetch('{url}/script')</script></head><body>"
        f'<p>visible html text</p><img src="{url}/img.png"><img src="{canary.as_uri()}" alt="local">'
        f'<iframe src="{canary.as_uri()}"></iframe><iframe src="../{canary.name}"></iframe>'
        f'<object data="{canary.as_uri()}"></object><embed src="{url}/embed">'
        f'<p style="background-image: url({url}/inline.png)">styled</p><video poster="{url}/poster.png"></video>'
        "</body></html>"
    )
    (folder / "hostile.md").write_text(
        f"# visible md text\n\n![remote]({url}/md.png)\n\n![local]({canary.as_uri()})\n\n"
        f'<iframe src="{canary.as_uri()}"></iframe>\n'
    )
    # RTF fields, written by the test (the same field syntax Word writes).
    canary_rtf = str(canary).replace("\\", "\\\\")
    (folder / "hostile.rtf").write_text(
        "{\\rtf1\\ansi{\\fonttbl{\\f0 Helvetica;}}\\f0 visible rtf text\\par "
        f'{{\\field{{\\*\\fldinst INCLUDETEXT "{canary_rtf}"}}{{\\fldrslt field result}}}}\\par '
        f'{{\\field{{\\*\\fldinst INCLUDEPICTURE "{url}/rtf.png" \\\\d}}{{\\fldrslt picture}}}}\\par }}'
    )
    names = ("hostile.xlsx", "hostile.docx", "hostile.html", "hostile.md", "hostile.rtf")
    return [folder / n for n in names]


def test_hostile_files_leak_no_local_file_and_fetch_nothing(
    tmp_path: Path, canary_server: tuple[str, list[str]]
) -> None:
    url, requests = canary_server
    canary = tmp_path / "canary.txt"
    canary.write_text("CANARYSECRET4242 local file content\n")
    folder = tmp_path / "hostile"
    folder.mkdir()
    files = hostile_files(folder, url, canary)
    # The Word file saved as ODF by LibreOffice keeps its linked images (draw:image xlink:href to the server/file).
    odf = tmp_path / "odf"
    odf.mkdir()
    files.append(libreoffice_convert(folder / "hostile.docx", "odt", odf))
    # Without the network namespace: the sanitiser and LibreOffice's settings alone must hold.
    converter = OfficeConverter(tmp_path / "cache", sandbox=False, workers=2)
    texts = {}
    for f, fut in [(f, converter.submit(f, sha256_file(f))) for f in files]:
        texts[f.name] = "\n".join(pdf_pages_text(fut.result()))
    converter.close()
    for name, text in texts.items():
        kind = {"xlsx": "sheet", "odt": "docx"}.get(name.split(".")[1], name.split(".")[1])
        assert f"visible {kind} text" in text, (name, text[:300])
        assert "CANARYSECRET" not in text, f"{name} pulled the local canary file into its pages"
        assert "CANARYHTTP" not in text, f"{name} pulled the canary server's answer into its pages"
    time.sleep(0.5)  # a fetch still in flight would have arrived by now
    assert requests == [], f"LibreOffice fetched {requests}"


def test_network_namespace_reaches_nothing(canary_server: tuple[str, list[str]]) -> None:
    prefix = network_sandbox()
    if not prefix:
        pytest.skip("this platform allows no network namespace (unshare -n and -rn fail)")
    url, requests = canary_server
    probe = f"import urllib.request; urllib.request.urlopen({url + '/probe'!r}, timeout=3)"
    r = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and ("Errno" in r.stderr or "URLError" in r.stderr)
    assert requests == []


# ---------------------------------------------------------------------------------------------- containment
def test_timeout_kills_the_whole_process_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    big = tmp_path / "big.txt"
    big.write_text("a line of text to lay out, again and again\n" * 200_000)
    converter = OfficeConverter(tmp_path / "cache", timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(DocumentError, match=r"conversion timed out after 1.5 s \(LibreOffice was killed\)"):
        converter.convert(big, "bighash")
    assert time.monotonic() - started < 30
    assert soffice_pids(tmp_path) == []
    assert not list((tmp_path / "cache").glob("*.pdf"))


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_killing_colsmol_during_a_conversion_leaves_no_soffice(
    how: signal.Signals, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "big.txt").write_text("a line of text to lay out, again and again\n" * 200_000)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "COLSMOL_ENCODER_MODEL": str(tiny_models["encoder"]),
        "COLSMOL_DEVICE": "cpu",
        "COLSMOL_CONVERT_TIMEOUT_S": "300",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "ingest", str(folder), "--data-dir", str(tmp_path / "data"), "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # The same LibreOffice process alive for a second: into the conversion proper (past the profile's first
        # start, which exits and is started again).
        seen: dict[int, float] = {}

        def converting() -> bool:
            assert proc.poll() is None, proc.communicate()
            now = time.monotonic()
            for pid in soffice_pids(scratch):
                seen.setdefault(pid, now)
            return any(now - t > 1.0 and pid in soffice_pids(scratch) for pid, t in seen.items())

        wait_for(converting, 120, "LibreOffice to convert")
        proc.send_signal(how)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: not soffice_pids(scratch), 15, "LibreOffice to die with colsmol")
    left = list(scratch.glob("colsmol-convert-*"))
    if how == signal.SIGINT:
        assert proc.returncode != 0
        assert left == []  # Ctrl-C cleans up
    else:
        import tempfile

        from indexer.render.office import remove_stale_work

        assert left  # SIGKILL cannot: the next conversion's start removes what is old enough
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        assert remove_stale_work(older_than_s=3600) == 0
        assert remove_stale_work(older_than_s=0) == len(left) and not list(scratch.glob("colsmol-convert-*"))


# ---------------------------------------------------------------------------------------------- HTTP upload
def test_upload_converts_office_files_and_refuses_disguised_ones(rag: Any, tiny_models: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from api.http.app import create_app
    from tests.test_api import upload, wait_job

    with TestClient(create_app(tiny_settings(tiny_models, rag.images.root.parents[1], dpi=40), rag)) as client:
        r = upload(client, [("program.docx", b"MZ\x90\x00" + b"\0" * 500)])
        assert r.status_code == 415 and "executable" in r.json()["detail"]
        r = upload(client, [("bomb.docx", zip_bomb())])
        assert r.status_code == 413 and "ZIP bomb" in r.json()["detail"]
        r = upload(client, [("script.exe", b"just bytes")])
        assert r.status_code == 415
        r = upload(client, [("upload note.md", b"# uploaded markdown marker\n\nbody\n"), ("two.txt", b"a\fb\n")])
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["job_id"], timeout=120)
        assert job["state"] == "done" and job["errors"] == [], job
        assert job["pages_done"] == job["pages_total"] == 3  # a form feed is a page break in a text file
        docs = client.get("/v1/documents", params={"limit": 500}).json()["items"]
        mine = [d for d in docs if d["file_name"] == "upload note.md"]
        assert len(mine) == 1 and mine[0]["source"] == "upload:upload note.md" and mine[0]["page_count"] == 1


def test_doctor_says_whether_conversion_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import indexer.render.soffice as soffice
    from api.cli.app import app

    r = CliRunner().invoke(app, ["doctor"])
    assert r.exit_code == 0 and "Office conversion: available: LibreOffice" in r.output, r.output
    monkeypatch.setattr(soffice, "find_soffice", lambda: None)  # LibreOffice cannot be uninstalled here
    r = CliRunner().invoke(app, ["doctor"])
    assert "Office conversion: NOT available" in r.output and "apt-get install libreoffice-core-nogui" in r.output
