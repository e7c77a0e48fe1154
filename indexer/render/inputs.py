"""From paths on disk to pages: walking input folders, and dispatching one file on its content.

``iter_file_pages`` decides what a file is from its first bytes (magic numbers), not from its name:
a PNG named ``scan.pdf`` is rendered as a PNG (a debug line notes the mismatch). A file whose content
is unknown is refused; when its name says ``.pdf`` the reason is "corrupt PDF", otherwise
"unsupported file type".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import DocumentError
from indexer.render.base import (
    DEFAULT_DPI,
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    PdfRenderer,
    make_renderer,
    read_head,
    sniff,
)
from indexer.render.images import image_page_count, iter_image_pages
from indexer.types import RenderedPage

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff"}


def _kind_of(path: Path) -> str:
    """Sniff ``path``'s content; raise DocumentError for empty/unreadable/unknown files."""
    kind = sniff(read_head(path))
    suffix = path.suffix.lower()
    if kind is None:
        if suffix == ".pdf":
            raise DocumentError(str(path), "corrupt PDF (no %PDF- header)")
        if suffix in _IMAGE_SUFFIXES:
            raise DocumentError(str(path), f"corrupt image (content is not {_IMAGE_SUFFIXES[suffix].upper()})")
        raise DocumentError(
            str(path),
            f"unsupported file type (content is not PDF, PNG, JPEG, WebP or TIFF; suffix {suffix or 'none'!r})",
        )
    expected = "pdf" if suffix == ".pdf" else _IMAGE_SUFFIXES.get(suffix)
    if expected is not None and expected != kind:
        logger.debug("%s: name says %s but content is %s; using the content", path, expected, kind)
    return kind


def iter_file_pages(
    path: str | Path,
    renderer: PdfRenderer | None = None,
    dpi: int = DEFAULT_DPI,
    password: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[RenderedPage]:
    """The pages of one input file as RGB images, lazily, one at a time.

    PDFs are rendered by ``renderer`` (default: a new ``PdfiumRenderer``) at ``dpi``; images keep their
    pixel size. Every page satisfies ``width * height <= max_pixels``. The file is opened and checked
    when this is called, so a bad file raises :class:`DocumentError` here, before any page is made.
    """
    path = Path(path)
    kind = _kind_of(path)
    if kind == "pdf":
        return (renderer or make_renderer("pdfium")).render(path, dpi, password, max_pixels)
    return iter_image_pages(path, kind, max_pixels)  # type: ignore[arg-type]


def file_page_count(path: str | Path, renderer: PdfRenderer | None = None, password: str | None = None) -> int:
    """Number of pages of one input file, without rendering (image files: number of frames)."""
    path = Path(path)
    kind = _kind_of(path)
    if kind == "pdf":
        return (renderer or make_renderer("pdfium")).page_count(path, password)
    return image_page_count(path, kind)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WalkResult:
    """What ``walk_inputs`` found: ``files`` to ingest (sorted, unique) and ``skipped`` ``(path, reason)`` pairs."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def walk_inputs(paths: Iterable[str | Path], suffixes: Iterable[str] = SUPPORTED_SUFFIXES) -> WalkResult:
    """Expand files and folders into the input files to ingest.

    Folders are walked recursively, following symlinks but never entering a directory twice (so a
    symlink loop ends). Names starting with ``.`` are skipped silently inside folders; a path given
    explicitly is always considered. Files whose suffix (case-insensitive) is not in ``suffixes`` are
    reported in ``skipped``, as are missing paths. ``files`` is sorted and free of duplicates (by
    resolved path, first spelling kept).
    """
    wanted = {s.lower() for s in suffixes}
    files: dict[Path, Path] = {}  # resolved -> as found
    skipped: list[tuple[Path, str]] = []
    seen_dirs: set[Path] = set()

    def consider_file(p: Path) -> None:
        if p.suffix.lower() not in wanted:
            skipped.append((p, f"unsupported suffix {p.suffix.lower() or '(none)'!r}"))
            return
        try:
            resolved = p.resolve()
        except (OSError, RuntimeError):
            skipped.append((p, "unresolvable path (symlink loop?)"))
            return
        files.setdefault(resolved, p)

    def walk_dir(d: Path) -> None:
        try:
            resolved = d.resolve()
        except (OSError, RuntimeError):
            skipped.append((d, "unresolvable path (symlink loop?)"))
            return
        if resolved in seen_dirs:
            logger.debug("skipping %s: directory already visited (%s)", d, resolved)
            return
        seen_dirs.add(resolved)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            skipped.append((d, f"unreadable directory: {e.strerror or e}"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = not is_dir and entry.is_file()
            except OSError:
                is_dir = is_file = False
            if is_dir:
                walk_dir(child)
            elif is_file:
                consider_file(child)
            elif entry.is_symlink():
                skipped.append((child, "broken symlink"))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            walk_dir(p)
        elif p.is_file():
            consider_file(p)
        elif p.is_symlink():
            skipped.append((p, "broken symlink"))
        else:
            skipped.append((p, "not found"))
    return WalkResult(files=sorted(files.values()), skipped=skipped)
