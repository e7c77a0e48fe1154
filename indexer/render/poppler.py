"""The alternative PDF renderer: poppler's ``pdftoppm`` through pdf2image.

It needs the ``poppler-utils`` system package (``pdfinfo`` and ``pdftoppm`` on ``PATH``). It is about
2 to 3x slower than PDFium (one process per chunk of pages) and is kept for PDFs that PDFium draws
badly. Page sizes come from one ``pdfinfo`` call, so the pixel budget is applied before rendering.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import ConfigError, DocumentError, EncryptedDocument
from indexer.render.base import (
    DEFAULT_DPI,
    DEFAULT_MAX_PIXELS,
    broken_pdf_reason,
    encrypted_reason,
    fit_size,
    read_head,
    render_scale,
    sniff,
)
from indexer.types import RenderedPage

logger = logging.getLogger(__name__)

_PAGES_RE = re.compile(r"^Pages:\s+(\d+)\s*$", re.MULTILINE)
_SIZE_RE = re.compile(r"^Page\s+(\d+)\s+size:\s+([\d.]+)\s+x\s+([\d.]+)\s+pts", re.MULTILINE)


class PopplerRenderer:
    """Render PDF pages to RGB ``PIL.Image`` with pdf2image (poppler).

    ``chunk_pages`` pages are rendered per ``pdftoppm`` process, so at most that many page images are
    in memory at once (8 Letter pages at 150 dpi: about 50 MB).
    """

    name = "poppler"

    def __init__(self, chunk_pages: int = 8, timeout_s: float = 600.0) -> None:
        if chunk_pages < 1:
            raise ConfigError(f"chunk_pages must be >= 1, got {chunk_pages}")
        self.chunk_pages = chunk_pages
        self.timeout_s = timeout_s

    def page_count(self, path: str | Path, password: str | None = None) -> int:
        """Number of pages from ``pdfinfo`` (renders nothing)."""
        path = Path(path)
        out = self._pdfinfo(path, password)
        return self._checked_count(out, path)

    def render(
        self,
        path: str | Path,
        dpi: int = DEFAULT_DPI,
        password: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Iterator[RenderedPage]:
        """Check ``path`` now (raising DocumentError at once for a bad file) and return a lazy page iterator."""
        path = Path(path)
        out = self._pdfinfo(path, password, all_pages=True)
        n = self._checked_count(out, path)
        sizes = {int(m[1]): (float(m[2]), float(m[3])) for m in _SIZE_RE.finditer(out)}
        if len(sizes) != n:
            raise DocumentError(str(path), "corrupt PDF (pdfinfo cannot read every page size)")
        return self._pages(path, n, sizes, dpi, password, max_pixels)

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _tool(name: str) -> str:
        exe = shutil.which(name)
        if exe is None:
            raise ConfigError(
                f"the poppler renderer needs '{name}' on PATH: install poppler-utils, or use the pdfium renderer"
            )
        return exe

    def _pdfinfo(self, path: Path, password: str | None, all_pages: bool = False) -> str:
        head = read_head(path)
        if sniff(head) != "pdf":
            raise DocumentError(str(path), "corrupt PDF (no %PDF- header)")
        cmd = [self._tool("pdfinfo")]
        if all_pages:
            cmd += ["-f", "1", "-l", str(2**31 - 1)]  # pdfinfo clamps to the real page count
        if password is not None:
            cmd += ["-upw", password]
        cmd += ["--", str(path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise DocumentError(str(path), f"pdfinfo timed out after {self.timeout_s:.0f} s") from None
        out = proc.stdout.decode("utf-8", "replace")
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            logger.debug("pdfinfo failed on %s (rc %d): %s", path, proc.returncode, err.strip())
            if "invalid page count 0" in err.lower():
                raise DocumentError(str(path), "no pages")
            if "password" in err.lower():
                raise EncryptedDocument(str(path), encrypted_reason(password))
            if "permission denied" in err.lower():
                raise DocumentError(str(path), "unreadable: permission denied")
            raise DocumentError(str(path), broken_pdf_reason(path))
        return out

    @staticmethod
    def _checked_count(out: str, path: Path) -> int:
        m = _PAGES_RE.search(out)
        if m is None:
            raise DocumentError(str(path), broken_pdf_reason(path))
        n = int(m[1])
        if n <= 0:
            raise DocumentError(str(path), "no pages")
        return n

    def _pages(
        self,
        path: Path,
        n: int,
        sizes: dict[int, tuple[float, float]],
        dpi: int,
        password: str | None,
        max_pixels: int,
    ) -> Iterator[RenderedPage]:
        # Runs of consecutive pages that share one effective dpi, at most chunk_pages long.
        runs: list[tuple[int, int, float]] = []
        for number in range(1, n + 1):
            width_pt, height_pt = sizes[number]
            if not (width_pt > 0 and height_pt > 0):
                raise DocumentError(str(path), f"corrupt PDF (page {number} has size {width_pt} x {height_pt})")
            page_dpi = render_scale(width_pt, height_pt, dpi, max_pixels) * 72.0
            last = runs[-1] if runs else None
            if last and last[2] == page_dpi and last[1] == number - 1 and number - last[0] < self.chunk_pages:
                runs[-1] = (last[0], number, page_dpi)
            else:
                runs.append((number, number, page_dpi))
        for first, last_page, page_dpi in runs:
            for offset, image in enumerate(self._convert(path, first, last_page, page_dpi, password)):
                if image.width * image.height > max_pixels:  # pdftoppm rounds sizes up
                    image = image.resize(fit_size(image.width, image.height, max_pixels))
                yield RenderedPage(
                    image=image, page_number=first + offset, page_count=n, width=image.width, height=image.height
                )

    def _convert(self, path: Path, first: int, last: int, dpi: float, password: str | None) -> list:
        from pdf2image import convert_from_path
        from pdf2image.exceptions import PDFPageCountError, PDFPopplerTimeoutError, PDFSyntaxError

        try:
            images = convert_from_path(
                str(path),
                dpi=dpi,  # type: ignore[arg-type]  # pdf2image hands it to `pdftoppm -r`, which takes a float
                first_page=first,
                last_page=last,
                userpw=password,  # type: ignore[arg-type]  # None (its default) means no password
                fmt="ppm",
                thread_count=1,
                timeout=math.ceil(self.timeout_s),
            )
        except PDFPopplerTimeoutError:
            raise DocumentError(str(path), f"pdftoppm timed out after {self.timeout_s:.0f} s") from None
        except (PDFPageCountError, PDFSyntaxError) as e:
            logger.debug("pdf2image failed on %s pages %d-%d: %s", path, first, last, e)
            raise DocumentError(str(path), broken_pdf_reason(path)) from None
        if len(images) != last - first + 1:
            raise DocumentError(str(path), f"corrupt PDF (pages {first}-{last} cannot be rendered)")
        return [im if im.mode == "RGB" else im.convert("RGB") for im in images]
