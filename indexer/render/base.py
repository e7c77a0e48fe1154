"""What every renderer shares: the ``PdfRenderer`` protocol, the pixel budget and content sniffing.

Units used throughout: PDF page sizes are in points (1/72 inch); ``dpi`` is pixels per inch;
rendered sizes and budgets are in pixels; ``max_pixels`` bounds ``width * height`` of one page.
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from indexer.errors import DocumentError
from indexer.types import RenderedPage

# colSmol's processor resizes every page to a longest edge of 2048 px before tiling, so rendering far
# beyond that only costs time and memory. 16 megapixels (4096 x 4096) leaves Letter at 300 dpi
# (2550 x 3300 = 8.4 MP) untouched and caps anything bigger at a size that is still 2x the processor's.
DEFAULT_MAX_PIXELS = 4096 * 4096

DEFAULT_DPI = 150

FileKind = Literal["pdf", "png", "jpeg", "webp", "tiff"]

# What ``walk_inputs`` picks up; ``iter_file_pages`` dispatches on content, not on these.
SUPPORTED_SUFFIXES: frozenset[str] = frozenset({".pdf", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"})

_HEAD_BYTES = 1024


@runtime_checkable
class PdfRenderer(Protocol):
    """Turns a PDF file into RGB page images, one at a time.

    Implementations raise :class:`~indexer.errors.DocumentError` (never a library exception) for a bad
    file, as early as possible: opening problems surface before the first page is yielded.
    """

    name: str

    def render(
        self,
        path: str | Path,
        dpi: int = DEFAULT_DPI,
        password: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Iterator[RenderedPage]:
        """Yield the pages of ``path`` in order, lazily; each page's ``width * height <= max_pixels``."""
        ...

    def page_count(self, path: str | Path, password: str | None = None) -> int:
        """Number of pages, without rendering any. Raises DocumentError for a bad file or zero pages."""
        ...


def render_scale(width_pt: float, height_pt: float, dpi: float, max_pixels: int) -> float:
    """Pixels per point for a page of ``width_pt x height_pt`` points at ``dpi``, capped by ``max_pixels``.

    The cap keeps ``ceil(width_pt * s) * ceil(height_pt * s) <= max_pixels``: it is computed from the
    page size before anything is rendered, so a 200 x 200 inch page never allocates a huge bitmap.

    >>> round(render_scale(612, 792, 150, 16_000_000), 4)  # Letter at 150 dpi: 150/72 px per pt
    2.0833
    >>> s = render_scale(14400, 14400, 150, 4_000_000)
    >>> math.ceil(14400 * s) ** 2 <= 4_000_000
    True
    """
    if width_pt <= 0 or height_pt <= 0:
        raise ValueError(f"page size must be positive, got {width_pt} x {height_pt} pt")
    # A hair under dpi/72 so float noise never rounds 1650.0000001 px up to 1651 (renderers take the ceiling).
    scale = dpi / 72.0 * (1 - 1e-9)
    if math.ceil(width_pt * scale) * math.ceil(height_pt * scale) <= max_pixels:
        return scale
    scale = math.sqrt(max_pixels / (width_pt * height_pt))
    # Step down until the rounded-up bitmap fits (one or two steps at most).
    while math.ceil(width_pt * scale) * math.ceil(height_pt * scale) > max_pixels and scale > 1e-6:
        scale *= 0.999
    return scale


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest ``(w, h)`` with the aspect ratio of ``width x height`` and ``w * h <= max_pixels``.

    >>> fit_size(1000, 500, 2_000_000)
    (1000, 500)
    >>> w, h = fit_size(30000, 30000, 16_777_216); (w, h, w * h <= 16_777_216)
    (4096, 4096, True)
    """
    if width * height <= max_pixels:
        return width, height
    factor = math.sqrt(max_pixels / (width * height))
    w, h = max(1, int(width * factor)), max(1, int(height * factor))
    while w * h > max_pixels:  # float rounding only; at most a step or two
        w, h = max(1, w - 1), max(1, h - 1)
    return w, h


def read_head(path: Path) -> bytes:
    """First bytes of ``path`` for sniffing; maps OS errors and empty files to DocumentError."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except FileNotFoundError:
        raise DocumentError(str(path), "not found") from None
    except IsADirectoryError:
        raise DocumentError(str(path), "unreadable: is a directory") from None
    except PermissionError:
        raise DocumentError(str(path), "unreadable: permission denied") from None
    except OSError as e:
        raise DocumentError(str(path), f"unreadable: {e.strerror or errno.errorcode.get(e.errno or 0, e)}") from None
    if not head:
        raise DocumentError(str(path), "empty file")
    return head


def sniff(head: bytes) -> FileKind | None:
    """The file kind from its first bytes (magic numbers), or None when unknown.

    >>> sniff(b"%PDF-1.7\\n"), sniff(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff(b"RIFF\\x00\\x00\\x00\\x00WEBPVP8 ")
    ('pdf', 'png', 'webp')
    >>> sniff(b"\\xff\\xd8\\xff\\xe0"), sniff(b"II*\\x00"), sniff(b"MM\\x00*"), sniff(b"hello")
    ('jpeg', 'tiff', 'tiff', None)
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    # The PDF spec lets the header come after leading junk; readers look in the first 1 KB.
    if b"%PDF-" in head[:_HEAD_BYTES]:
        return "pdf"
    return None


def looks_truncated(path: Path) -> bool:
    """True when a PDF file lacks the ``%%EOF`` marker in its last 2 KB (how a cut-off download looks)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            f.seek(max(0, size - 2048))
            return b"%%EOF" not in f.read()
    except OSError:
        return False


_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_COUNT_ZERO = re.compile(rb"/Count\s+0(?![0-9])")


def looks_pageless(path: Path, limit: int = 4 << 20) -> bool:
    """True when a PDF's (first 4 MB of) bytes hold an empty page tree and no page object.

    PDFium refuses such files without a specific error code, so this tells "no pages" from "corrupt".
    """
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        return False
    return _COUNT_ZERO.search(data) is not None and _PAGE_OBJECT.search(data) is None


def broken_pdf_reason(path: Path) -> str:
    """One-line reason for a PDF no reader can open: no pages, truncated (``%%EOF`` missing), or corrupt."""
    if looks_pageless(path):
        return "no pages"
    if looks_truncated(path):
        return "truncated PDF (no %%EOF trailer; incomplete download or copy?)"
    return "corrupt PDF (cannot parse the file structure)"


def encrypted_reason(password: str | None) -> str:
    """The reason for an encrypted PDF that we cannot open with ``password``: neutral text, with the way to
    give a password phrased per interface (:class:`indexer.errors.HintedText`).

    >>> from indexer.errors import for_interface
    >>> for_interface(encrypted_reason(None), "cli")
    'encrypted: needs a password; pass --password'
    """
    from indexer.errors import HintedText

    if password is None:
        return HintedText(
            "encrypted: needs a password",
            {"cli": "pass --password", "http": "send it in the upload's 'password' form field"},
        )
    return HintedText(
        "encrypted: wrong password",
        {"cli": "check --password", "http": "check the upload's 'password' form field"},
    )


def make_renderer(name: Literal["pdfium", "poppler"] = "pdfium") -> PdfRenderer:
    """The renderer called ``name``: ``"pdfium"`` (pypdfium2, default) or ``"poppler"`` (pdf2image).

    >>> make_renderer("pdfium").name
    'pdfium'
    """
    if name == "pdfium":
        from indexer.render.pdfium import PdfiumRenderer

        return PdfiumRenderer()
    if name == "poppler":
        from indexer.render.poppler import PopplerRenderer

        return PopplerRenderer()
    from indexer.errors import ConfigError

    raise ConfigError(f"unknown renderer {name!r}: use 'pdfium' or 'poppler'")
