"""The default PDF renderer: pypdfium2 (PDFium in process, no system package needed).

PDFium is not thread-safe, so every call into it holds one module-wide lock; the lock is released
while a page is handed to the caller, so several documents can be rendered in turn from different
threads without crashing the interpreter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indexer.errors import DocumentError, EncryptedDocument
from indexer.render.base import (
    DEFAULT_DPI,
    DEFAULT_MAX_PIXELS,
    broken_pdf_reason,
    encrypted_reason,
    fit_size,
    looks_pageless,
    read_head,
    render_scale,
    sniff,
)
from indexer.types import RenderedPage

logger = logging.getLogger(__name__)

_PDFIUM_LOCK = threading.RLock()

# PDFium's document-load error codes (FPDF_ERR_*), stable across releases. PDFium refuses to load a
# document whose page tree is empty without setting an error, so the code it reports is stale (0 in a
# fresh thread, else the previous failure's): broken_pdf_reason() tells "no pages" from the bytes.
_ERR_NO_PAGES, _ERR_FILE, _ERR_PASSWORD, _ERR_SECURITY = 0, 2, 4, 5


class PdfiumRenderer:
    """Render PDF pages to RGB ``PIL.Image`` with pypdfium2.

    A page of ``w x h`` points at ``dpi`` becomes about ``w * dpi / 72 x h * dpi / 72`` pixels
    (Letter at 150 dpi: 1275 x 1650), scaled down before rendering when that exceeds ``max_pixels``.
    """

    name = "pdfium"

    def page_count(self, path: str | Path, password: str | None = None) -> int:
        """Number of pages of the PDF at ``path`` (parses the page tree, renders nothing)."""
        pdf = self._open(Path(path), password)
        try:
            return self._checked_len(pdf, Path(path))
        finally:
            with _PDFIUM_LOCK:
                pdf.close()

    def render(
        self,
        path: str | Path,
        dpi: int = DEFAULT_DPI,
        password: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Iterator[RenderedPage]:
        """Open ``path`` now (raising DocumentError at once for a bad file) and return a lazy page iterator.

        Only the current page's bitmap is alive at any time; the document is closed when the iterator
        is exhausted, closed, or garbage-collected.
        """
        path = Path(path)
        pdf = self._open(path, password)
        try:
            n = self._checked_len(pdf, path)
        except BaseException:
            with _PDFIUM_LOCK:
                pdf.close()
            raise
        return self._pages(pdf, path, n, dpi, max_pixels)

    # -- internals ---------------------------------------------------------------------------

    def _open(self, path: Path, password: str | None) -> Any:
        import pypdfium2 as pdfium

        head = read_head(path)  # empty file, permission denied, directory...
        if sniff(head) != "pdf":
            raise DocumentError(str(path), "corrupt PDF (no %PDF- header)")
        with _PDFIUM_LOCK:
            try:
                pdf = pdfium.PdfDocument(str(path), password=password)
            except pdfium.PdfiumError as e:
                code = getattr(e, "err_code", None)
                logger.debug("pdfium failed to open %s: %s", path, e)
                if code == _ERR_NO_PAGES or looks_pageless(path):
                    raise DocumentError(str(path), "no pages") from None
                if code == _ERR_PASSWORD:
                    raise EncryptedDocument(str(path), encrypted_reason(password)) from None
                if code == _ERR_SECURITY:
                    raise DocumentError(str(path), "encrypted with an unsupported security handler") from None
                if code == _ERR_FILE:
                    raise DocumentError(str(path), "unreadable: cannot open the file") from None
                raise DocumentError(str(path), broken_pdf_reason(path)) from None
            try:
                pdf.init_forms()  # so filled-in form fields are drawn
            except Exception as e:  # noqa: BLE001 - forms are a nicety; a page without them still renders
                logger.debug("pdfium init_forms failed for %s: %s", path, e)
        return pdf

    @staticmethod
    def _checked_len(pdf: Any, path: Path) -> int:
        with _PDFIUM_LOCK:
            n = len(pdf)
        if n <= 0:
            raise DocumentError(str(path), "no pages")
        return n

    def _pages(self, pdf: Any, path: Path, n: int, dpi: int, max_pixels: int) -> Iterator[RenderedPage]:
        try:
            for index in range(n):
                image = self._render_page(pdf, path, index, dpi, max_pixels)
                yield RenderedPage(
                    image=image, page_number=index + 1, page_count=n, width=image.width, height=image.height
                )
        finally:
            with _PDFIUM_LOCK:
                pdf.close()

    @staticmethod
    def _render_page(pdf: Any, path: Path, index: int, dpi: int, max_pixels: int) -> Any:
        import pypdfium2 as pdfium

        with _PDFIUM_LOCK:
            try:
                page = pdf[index]
            except (pdfium.PdfiumError, IndexError):
                raise DocumentError(str(path), f"corrupt PDF (page {index + 1} cannot be loaded)") from None
            try:
                width_pt, height_pt = page.get_size()
                if not (width_pt > 0 and height_pt > 0):
                    raise DocumentError(str(path), f"corrupt PDF (page {index + 1} has size {width_pt} x {height_pt})")
                scale = render_scale(width_pt, height_pt, dpi, max_pixels)
                try:
                    bitmap = page.render(scale=scale, rev_byteorder=True)
                except pdfium.PdfiumError:
                    raise DocumentError(str(path), f"corrupt PDF (page {index + 1} cannot be rendered)") from None
                try:
                    image = bitmap.to_pil()
                    # RGB is copied by PIL; any other mode would share the bitmap buffer, so convert (copies).
                    image = image if image.mode == "RGB" else image.convert("RGB")
                finally:
                    bitmap.close()
            finally:
                page.close()
        if image.width * image.height > max_pixels:  # PDFium rounding; never more than a pixel row off
            image = image.resize(fit_size(image.width, image.height, max_pixels))
        return image
