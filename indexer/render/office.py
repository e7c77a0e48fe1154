"""Office documents, spreadsheets, slides, web pages, Markdown, EPUB and text files as PDFs, through LibreOffice.

``OfficeConverter.convert(path, content_hash)`` returns a PDF that the PDF renderer then reads like any other.
The PDF is an internal artefact: cached as ``<cache_dir>/<content_hash>.pdf`` so an unchanged file is never
converted twice, and removed with its document (:meth:`OfficeConverter.forget`). The document's identity (source,
name, content hash) stays the original file's.

How each family is converted:

- Word processing (``.docx .doc .odt .rtf``), slides (``.pptx .ppt .odp``) and ``.txt`` (UTF-8, UTF-16 with a BOM,
  else cp1252): straight to PDF, one slide a page.
- Spreadsheets (``.xlsx .xls .ods .csv``): first to ODS, then every sheet's page style is set to "fit the print
  range to one page wide, as many pages tall as needed" (ODF ``style:scale-to-X="1" style:scale-to-Y="0"``), then
  to PDF. Without it LibreOffice cuts a wide sheet into column strips printed on separate pages, where a row's
  cells no longer sit on the same page; one page per sheet instead would shrink long sheets to unreadable text.
- Web pages, Markdown and EPUB: rewritten into one inert HTML file first (:mod:`indexer.render.sanitize`), which
  LibreOffice then lays out. LibreOffice 7.4 has no EPUB import filter, hence the spine extraction.

Every conversion runs contained (:mod:`indexer.render.soffice`), in a private temporary folder holding only a
copy of the document, and is checked first (:mod:`indexer.render.containers`: ZIP bombs, disguised executables).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from indexer.errors import DocumentError
from indexer.render import sanitize
from indexer.render.base import read_head, sniff
from indexer.render.containers import CONVERTIBLE_SUFFIXES, check_convertible
from indexer.render.soffice import (
    INSTALL_HINT,
    ConversionTimeout,
    ConverterMissing,
    find_soffice,
    kill_all,
    run_soffice,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0

SPREADSHEET_SUFFIXES = frozenset({".xlsx", ".xls", ".ods", ".csv"})
_WEB = {".html": sanitize.html_file, ".htm": sanitize.html_file, ".md": sanitize.markdown_file,
        ".epub": sanitize.epub_file}  # fmt: skip
# Import filters where LibreOffice's guess could be wrong: text as UTF-8, CSV as comma-separated UTF-8 with quotes.
_INFILTER = {
    ".txt": "Text (encoded):UTF8,LF,,,",
    ".csv": "Text - txt - csv (StarCalc):44,34,76,1",
    ".html": "HTML (StarWriter)",
}
_PAGE_LAYOUT = re.compile(rb"<style:page-layout-properties\b([^>]*?)(/?)>")
_SCALE_ATTR = re.compile(rb'\s(?:style:scale-to(?:-X|-Y|-pages)?|style:print-page-order)="[^"]*"')


def default_workers() -> int:
    """Parallel conversions by default: half the cores, 1 to 4 (each LibreOffice uses about one core and
    150-300 MB while it converts; the encoder needs the rest)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def needs_conversion(path: Path) -> bool:
    """Whether ``path`` goes through LibreOffice: its suffix is one we convert and its content is not already a PDF
    or an image (a PDF saved as ``report.doc`` is rendered as the PDF it is). Raises DocumentError for an empty
    or unreadable file."""
    return path.suffix.lower() in CONVERTIBLE_SUFFIXES and sniff(read_head(path)) is None


def converter_status() -> str:
    """One line for ``colsmol doctor``: where LibreOffice is, or what to install."""
    binary = find_soffice()
    if binary is None:
        return f"not available (LibreOffice not found; {INSTALL_HINT})"
    from indexer.render.soffice import network_sandbox

    net = "no network (unshare)" if network_sandbox() else "host network (unshare unavailable)"
    return f"available ({binary}; {net})"


class OfficeConverter:
    """Converts non-PDF documents to PDF with LibreOffice, at most ``workers`` at a time, each within ``timeout_s``.

    ``cache_dir`` holds the converted PDFs (``<content_hash>.pdf``). ``sandbox`` runs LibreOffice in an empty
    network namespace where the platform allows it.
    """

    def __init__(
        self, cache_dir: Path, timeout_s: float = DEFAULT_TIMEOUT_S, workers: int | None = None, sandbox: bool = True
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.timeout_s = timeout_s
        self.workers = workers or default_workers()
        self.sandbox = sandbox
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future[Path]] = {}
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._running = 0

    @staticmethod
    def default_cache_dir(images_root: Path) -> Path:
        """Where converted PDFs live for the page image store at ``images_root``: inside it, so a folder walk that
        skips colsmol's own files skips them too."""
        return Path(images_root) / ".converted"

    @property
    def available(self) -> bool:
        return find_soffice() is not None

    def cached(self, content_hash: str) -> Path:
        return self.cache_dir / f"{content_hash}.pdf"

    # -- parallel conversions ------------------------------------------------------------------
    def submit(self, path: Path, content_hash: str) -> Future[Path]:
        """Start converting ``path`` in the background (at most ``workers`` at once); the same content is
        converted once however often it is asked for."""
        with self._lock:
            fut = self._futures.get(content_hash)
            if fut is None:
                if self._pool is None:
                    remove_stale_work()
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="colsmol-convert")
                fut = self._pool.submit(self.convert, path, content_hash)
                self._futures[content_hash] = fut
            return fut

    def result(self, path: Path, content_hash: str) -> Path:
        """The converted PDF of ``path``: waits for a background conversion, or converts now."""
        if self._cancelled.is_set():
            raise DocumentError(str(path), "conversion cancelled")
        return self.submit(path, content_hash).result()

    def close(self, cancel: bool = False) -> None:
        """Stop the worker threads; with ``cancel``, drop queued conversions and kill the running ones."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._futures.clear()
        if cancel:
            self._cancelled.set()
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            # A conversion that was starting as we cancelled may register its process group a moment later.
            deadline = time.monotonic() + 30
            while True:
                kill_all()
                with self._lock:
                    running = self._running
                if not running or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        if pool is not None:
            pool.shutdown(wait=True)
        self._cancelled.clear()

    def forget(self, doc_id: str) -> None:
        """Remove the converted PDFs of the document ``doc_id`` (the first 24 hex digits of the content hash)."""
        if not doc_id or not self.cache_dir.is_dir():
            return
        for pdf in self.cache_dir.glob(f"{doc_id}*.pdf"):
            pdf.unlink(missing_ok=True)

    # -- one conversion ------------------------------------------------------------------------
    def convert(self, path: Path, content_hash: str) -> Path:
        """``path`` as a PDF in the cache (converted now unless it is there). Raises DocumentError."""
        target = self.cached(content_hash)
        if target.is_file():
            return target
        with self._lock:
            self._running += 1
        try:
            return self._convert(path, content_hash, target)
        finally:
            with self._lock:
                self._running -= 1

    def _convert(self, path: Path, content_hash: str, target: Path) -> Path:
        if self._cancelled.is_set():
            raise DocumentError(str(path), "conversion cancelled")
        suffix = check_convertible(path)
        if find_soffice() is None:
            raise DocumentError(
                str(path), f"cannot convert {suffix} files: LibreOffice is not installed; {INSTALL_HINT}"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=_WORK_PREFIX) as tmp:
            work = Path(tmp)
            started = time.perf_counter()
            pdf = self._convert_in(path, suffix, work)
            _check_pages(path, pdf)
            log.info("converted %s to PDF in %.1f s", path, time.perf_counter() - started)
            staged = self.cache_dir / f".{content_hash}.{os.getpid()}.{threading.get_ident()}.tmp"
            shutil.copyfile(pdf, staged)
            os.replace(staged, target)
        return target

    def _convert_in(self, path: Path, suffix: str, work: Path) -> Path:
        source = work / "in"
        source.mkdir()
        # The copy keeps the original's name (made safe), which LibreOffice shows: a CSV's sheet, a page header.
        stem = re.sub(r"[^\w.-]+", "_", path.stem)[:80].strip("._") or "document"
        if suffix in _WEB:
            document = source / f"{stem}.html"
            document.write_text(_WEB[suffix](path), encoding="utf-8")
            infilter: str | None = _INFILTER[".html"]
        elif suffix in (".txt", ".csv"):
            # Re-encoded as UTF-8 (the import filter's charset): UTF-16 with a BOM and cp1252 files read right too.
            document = source / f"{stem}{suffix}"
            document.write_text(sanitize.decode_text(path.read_bytes()), encoding="utf-8")
            infilter = _INFILTER[suffix]
        else:
            document = source / f"{stem}{suffix}"
            shutil.copyfile(path, document)
            infilter = _INFILTER.get(suffix)
        if suffix in SPREADSHEET_SUFFIXES:
            if suffix != ".ods":
                document = self._soffice(path, document, "ods", work, infilter)
                infilter = None
            document = _fit_to_width(path, document, work / "fit.ods")
        return self._soffice(path, document, "pdf", work, infilter)

    def _soffice(self, original: Path, document: Path, to: str, work: Path, infilter: str | None) -> Path:
        """Run one ``--convert-to`` of ``document`` into ``work/out-<to>``, with the profile ``work/profile``."""
        outdir = work / f"out-{to}"
        if self._cancelled.is_set():
            raise DocumentError(str(original), "conversion cancelled")
        args = [*([f"--infilter={infilter}"] if infilter else []), "--convert-to", to, "--outdir", str(outdir)]
        try:
            result = run_soffice([*args, str(document)], work / "profile", self.timeout_s, work, self.sandbox)
        except ConversionTimeout as e:
            raise DocumentError(
                str(original), f"conversion {e}; raise COLSMOL_CONVERT_TIMEOUT_S if it is big"
            ) from None
        except ConverterMissing as e:
            raise DocumentError(str(original), str(e)) from None
        produced = outdir / f"{document.stem}.{to}"
        if not produced.is_file() or produced.stat().st_size == 0:
            log.debug("LibreOffice on %s: exit %s, %s", original, result.returncode, result.stderr.strip())
            raise DocumentError(str(original), _failure_reason(original, result.stderr))
        return produced


_WORK_PREFIX = "colsmol-convert-"
#: Longer than any conversion can run (two passes of the largest COLSMOL_CONVERT_TIMEOUT_S, 3600 s).
STALE_WORK_S = 3 * 3600.0


def remove_stale_work(older_than_s: float = STALE_WORK_S) -> int:
    """Remove the temporary folders (a document's copy, a profile) that a killed conversion left behind."""
    removed = 0
    cutoff = time.time() - older_than_s
    for folder in Path(tempfile.gettempdir()).glob(f"{_WORK_PREFIX}*"):
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


def _failure_reason(path: Path, stderr: str) -> str:
    if "could not be loaded" in stderr or "source file" in stderr.lower():
        return f"corrupt {path.suffix.lower() or 'document'} file (LibreOffice cannot load it; truncated or damaged?)"
    last = stderr.strip().splitlines()[-1][:200] if stderr.strip() else "no output"
    return f"conversion failed (LibreOffice: {last})"


def _fit_to_width(original: Path, ods: Path, out: Path) -> Path:
    """A copy of ``ods`` whose page styles print every sheet one page wide (and as many pages tall as needed)."""

    def patch(match: re.Match[bytes]) -> bytes:
        attrs = _SCALE_ATTR.sub(b"", match.group(1))
        return (
            b"<style:page-layout-properties"
            + attrs
            + b' style:scale-to-X="1" style:scale-to-Y="0"'
            + match.group(2)
            + b">"
        )

    try:
        with zipfile.ZipFile(ods) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "styles.xml":
                    data = _PAGE_LAYOUT.sub(patch, data)
                compress = zipfile.ZIP_STORED if info.filename == "mimetype" else zipfile.ZIP_DEFLATED
                dst.writestr(info.filename, data, compress_type=compress)
    except (zipfile.BadZipFile, OSError, KeyError) as e:
        raise DocumentError(str(original), f"conversion failed (intermediate spreadsheet unreadable: {e})") from None
    return out


def _check_pages(original: Path, pdf: Path) -> None:
    from indexer.render.pdfium import PdfiumRenderer

    try:
        PdfiumRenderer().page_count(pdf)
    except DocumentError as e:
        if e.reason == "no pages":
            raise DocumentError(str(original), "no pages after conversion (the document is empty)") from None
        raise DocumentError(str(original), f"conversion failed (LibreOffice wrote a bad PDF: {e.reason})") from None
