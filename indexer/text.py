"""Page text at ingest: the PDF's own text layer with word boxes, or Tesseract OCR where a page has none.

One page's text is a :class:`PageText`: ``words`` in reading order, joined by single spaces into ``text``
(so ``text.split()`` gives the words back), and ``boxes``, one page-relative box per word, ``x0, y0, x1, y1``
in thousandths of the page (x to the right, y down, the same orientation as cited regions). Both are bounded:
words beyond ``max_chars`` characters of text are dropped, so a payload never grows with a page's length.

Sources, in order:

- the **text layer** (pypdfium2: ``FPDFText_GetUnicode`` and ``PdfTextPage.get_charbox`` per character, no
  rendering), for PDFs;
- **OCR** (the ``tesseract`` command line, its TSV output for word boxes) for pages without a text layer and
  image files, when ``ocr`` is ``"on"`` (Tesseract must be installed) or ``"auto"`` (and Tesseract is found).

The converted PDF of another format (Office, HTML) goes through :func:`iter_page_texts` like any PDF.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from indexer.errors import ConfigError, DocumentError

logger = logging.getLogger(__name__)

OcrMode = Literal["auto", "off", "on"]
Source = Literal["pdf", "ocr", "none"]
#: Box coordinates are stored as integers in ``[0, SCALE]`` (page-relative thousandths).
SCALE = 1000
DEFAULT_MAX_CHARS = 20_000
#: Tesseract's language packs for the page languages colsmol knows (``metadata.language``); English otherwise.
TESSERACT_LANGS = {"english": "eng", "german": "deu", "french": "fra", "spanish": "spa", "italian": "ita",
                   "dutch": "nld", "portuguese": "por"}  # fmt: skip
OCR_DPI = 200

_PDFIUM_LOCK_FALLBACK = threading.RLock()


class OcrUnavailable(ConfigError):
    """COLSMOL_OCR=on but the ``tesseract`` command is not installed."""


@dataclass(frozen=True)
class PageText:
    """The text of one page: ``text`` is ``words`` joined by single spaces; ``boxes`` one per word,
    ``(x0, y0, x1, y1)`` integers in thousandths of the page; ``source`` where it came from."""

    page_number: int
    words: tuple[str, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    source: Source

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def payload(self) -> dict[str, Any]:
        """The page payload fields: ``text`` and ``word_boxes`` (a flat list, four integers per word)."""
        flat = [c for box in self.boxes for c in box]
        return {"text": self.text, "word_boxes": flat, "text_source": self.source}


def bounded(
    page_number: int, words: Sequence[str], boxes: Sequence[tuple[int, int, int, int]], source: Source, max_chars: int
) -> PageText:
    """Keep the first words whose text (with single spaces) fits in ``max_chars`` characters.

    >>> bounded(1, ["ab", "cd", "ef"], [(0, 0, 1, 1)] * 3, "pdf", 5).text
    'ab cd'
    """
    n, used = 0, -1
    for word in words:
        if used + 1 + len(word) > max_chars:
            break
        used += 1 + len(word)
        n += 1
    return PageText(page_number, tuple(words[:n]), tuple(boxes[:n]), source if n else "none")


def _box(
    left: float, top: float, right: float, bottom: float, width: float, height: float
) -> tuple[int, int, int, int]:
    """A box in thousandths of a ``width x height`` page, clamped to the page."""

    def q(v: float, size: float) -> int:
        return max(0, min(SCALE, round(v / size * SCALE)))

    return (q(left, width), q(top, height), q(right, width), q(bottom, height))


# --------------------------------------------------------------------------------------------- text layer
def _pdf_lock() -> Any:
    try:
        from indexer.render.pdfium import _PDFIUM_LOCK
    except ImportError:  # pragma: no cover - the renderer module ships with the package
        return _PDFIUM_LOCK_FALLBACK
    return _PDFIUM_LOCK


def _layer_words(textpage: Any, width: float, height: float) -> tuple[list[str], list[tuple[int, int, int, int]]]:
    """Words and their boxes from one page's text layer (PDF points, y up, turned into y down)."""
    import pypdfium2.raw as pdfium_c

    words: list[str] = []
    boxes: list[tuple[int, int, int, int]] = []
    chars: list[str] = []
    x0 = y0 = float("inf")
    x1 = y1 = float("-inf")

    def flush() -> None:
        nonlocal x0, y0, x1, y1
        if chars:
            words.append("".join(chars))
            # PDF space has y up: the page's top is at ``height``.
            boxes.append(_box(x0, height - y1, x1, height - y0, width, height))
            chars.clear()
        x0 = y0 = float("inf")
        x1 = y1 = float("-inf")

    for i in range(textpage.count_chars()):
        code = pdfium_c.FPDFText_GetUnicode(textpage.raw, i)
        ch = chr(code) if 0 < code < 0x110000 else " "
        if ch.isspace() or code in (0xFFFE, 0xFFFF) or not ch.isprintable():
            flush()
            continue
        left, bottom, right, top = textpage.get_charbox(i)
        chars.append(ch)
        x0, y0, x1, y1 = min(x0, left), min(y0, bottom), max(x1, right), max(y1, top)
    flush()
    return words, boxes


def pdf_page_texts(path: str | Path, password: str | None = None, max_chars: int = DEFAULT_MAX_CHARS) -> list[PageText]:
    """The text layer of every page of a PDF (a page without one gets an empty :class:`PageText`).

    Raises :class:`DocumentError` when the file cannot be opened as a PDF (the renderer reports why in detail).
    """
    import pypdfium2 as pdfium

    lock = _pdf_lock()
    out: list[PageText] = []
    with lock:
        try:
            pdf = pdfium.PdfDocument(str(path), password=password)
        except pdfium.PdfiumError as exc:
            raise DocumentError(str(path), f"cannot read its text ({exc})") from None
        try:
            for index in range(len(pdf)):
                page = pdf[index]
                try:
                    width, height = page.get_size()
                    textpage = page.get_textpage()
                    try:
                        words, boxes = _layer_words(textpage, width or 1.0, height or 1.0)
                    finally:
                        textpage.close()
                finally:
                    page.close()
                out.append(bounded(index + 1, words, boxes, "pdf", max_chars))
        finally:
            pdf.close()
    return out


# --------------------------------------------------------------------------------------------- OCR
def tesseract_path() -> str | None:
    """The ``tesseract`` executable, or None when it is not installed."""
    return shutil.which("tesseract")


def check_ocr(mode: OcrMode) -> bool:
    """Whether OCR will run: ``off`` never; ``auto`` when Tesseract is installed; ``on`` always, and
    :class:`OcrUnavailable` when it is not installed."""
    if mode == "off":
        return False
    found = tesseract_path() is not None
    if mode == "on" and not found:
        raise OcrUnavailable(
            "COLSMOL_OCR=on but the tesseract command is not installed: install it (Debian/Ubuntu: apt-get install "
            "tesseract-ocr) or set COLSMOL_OCR=auto to skip OCR where it is missing"
        )
    return found


def ocr_image(image: Any, page_number: int, language: str = "eng", max_chars: int = DEFAULT_MAX_CHARS) -> PageText:
    """Words and boxes of a PIL image by Tesseract (``tesseract IMAGE - -l LANG tsv``)."""
    exe = tesseract_path()
    if exe is None:
        raise OcrUnavailable("the tesseract command is not installed (Debian/Ubuntu: apt-get install tesseract-ocr)")
    width, height = image.size
    with tempfile.TemporaryDirectory(prefix="colsmol-ocr-") as tmp:
        src = Path(tmp) / "page.png"
        image.convert("RGB").save(src)
        try:
            done = subprocess.run(
                [exe, str(src), "-", "-l", language, "tsv"],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
                # One thread: Tesseract's OpenMP threads slow it down on a busy or small machine (its docs say so).
                env={**os.environ, "OMP_THREAD_LIMIT": "1"},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("OCR of page %d failed: %s", page_number, exc)
            return PageText(page_number, (), (), "none")
    if done.returncode != 0:
        logger.warning("OCR of page %d failed: %s", page_number, done.stderr.strip().splitlines()[-1:] or "")
        return PageText(page_number, (), (), "none")
    words: list[str] = []
    boxes: list[tuple[int, int, int, int]] = []
    for row in csv.DictReader(io.StringIO(done.stdout), delimiter="\t", quoting=csv.QUOTE_NONE):
        text = (row.get("text") or "").strip()
        if row.get("level") != "5" or not text:
            continue
        try:
            left, top, w, h = (float(row[k]) for k in ("left", "top", "width", "height"))
        except (KeyError, TypeError, ValueError):
            continue
        for part in text.split():
            words.append(part)
            boxes.append(_box(left, top, left + w, top + h, width, height))
    return bounded(page_number, words, boxes, "ocr", max_chars)


def ocr_language(language: str | None) -> str:
    """Tesseract's language code for a page language (``metadata.language``), English when unknown."""
    return TESSERACT_LANGS.get((language or "").lower(), "eng")


# --------------------------------------------------------------------------------------------- any file
def iter_page_texts(
    path: str | Path,
    page_count: int,
    *,
    password: str | None = None,
    ocr: OcrMode = "auto",
    language: str | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    skip: set[int] | frozenset[int] = frozenset(),
) -> Iterator[PageText]:
    """The text of each page of an input file (PDF or image), page by page, except pages in ``skip``.

    PDF pages come from the text layer; pages without one, and image files, are OCR'd when ``ocr`` allows
    (see :func:`check_ocr`). A page with no text anywhere yields an empty :class:`PageText` (``source="none"``).
    """
    from indexer.render.base import read_head, sniff

    path = Path(path)
    use_ocr = check_ocr(ocr)
    is_pdf = sniff(read_head(path)) == "pdf"
    layer: list[PageText] = []
    if is_pdf:
        layer = pdf_page_texts(path, _password_that_opens(path, password), max_chars)
    images: Iterator[Any] | None = None  # rendered lazily, once, only when a page needs OCR
    for n in range(1, page_count + 1):
        if n in skip:
            continue
        page = layer[n - 1] if n - 1 < len(layer) else PageText(n, (), (), "none")
        if not page.words and use_ocr:
            if images is None:
                images = _page_images(path, is_pdf, password)
            image = next((im for num, im in images if num == n), None) if images is not None else None
            if image is not None:
                page = ocr_image(image, n, ocr_language(language), max_chars)
        yield page


def _password_that_opens(path: Path, password: str | None) -> str | None:
    """None when the PDF opens without a password (owner-password-only files), else ``password``."""
    import pypdfium2 as pdfium

    if password is None:
        return None
    with _pdf_lock():
        try:
            pdfium.PdfDocument(str(path)).close()
            return None
        except pdfium.PdfiumError:
            return password


def _page_images(path: Path, is_pdf: bool, password: str | None) -> Iterator[tuple[int, Any]]:
    """``(page_number, PIL image)`` for OCR, in page order (PDFs rendered at ``OCR_DPI``)."""
    from indexer.render import iter_file_pages

    try:
        for page in iter_file_pages(path, None, OCR_DPI if is_pdf else 150, password):
            yield page.page_number, page.image
    except DocumentError as exc:
        logger.warning("%s: no page images to OCR (%s)", path, exc.reason)
