"""From paths on disk to pages: walking input folders, and dispatching one file on its content.

``iter_file_pages`` decides what a file is from its first bytes (magic numbers), not from its name:
a PNG named ``scan.pdf`` is rendered as a PNG (a debug line notes the mismatch). A file whose content
is unknown is refused; when its name says ``.pdf`` the reason is "corrupt PDF", otherwise
"unsupported file type".
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from indexer.errors import DocumentError, EncryptedDocument
from indexer.render.base import (
    DEFAULT_DPI,
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    FileKind,
    PdfRenderer,
    make_renderer,
    read_head,
    sniff,
)
from indexer.render.images import image_page_count, iter_image_pages
from indexer.types import RenderedPage

logger = logging.getLogger(__name__)
T = TypeVar("T")

_IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff"}


def _kind_of(path: Path) -> FileKind:
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
        pdf = renderer or make_renderer("pdfium")
        return _first_password_that_opens(lambda pw: pdf.render(path, dpi, pw, max_pixels), password)
    return iter_image_pages(path, kind, max_pixels)


def file_page_count(path: str | Path, renderer: PdfRenderer | None = None, password: str | None = None) -> int:
    """Number of pages of one input file, without rendering (image files: number of frames)."""
    path = Path(path)
    kind = _kind_of(path)
    if kind == "pdf":
        pdf = renderer or make_renderer("pdfium")
        return _first_password_that_opens(lambda pw: pdf.page_count(path, pw), password)
    return image_page_count(path, kind)


def _first_password_that_opens(open_with: Callable[[str | None], T], password: str | None) -> T:
    """Open without a password first, and with ``password`` only when the file asks for one.

    A PDF with only an owner password (restrictions on printing or copying) opens without one, and a
    user password given for the encrypted files of a folder must not make it fail as "wrong password":
    one ``--password`` works for a folder that mixes both kinds.
    """
    if password is None:
        return open_with(None)
    try:
        return open_with(None)
    except EncryptedDocument:
        return open_with(password)


@dataclass(frozen=True)
class WalkResult:
    """What ``walk_inputs`` found: ``files`` to ingest (sorted, unique), ``skipped`` ``(path, reason)`` pairs for
    things that are not input files (wrong suffix, special files), and ``failed`` ``(path, reason)`` pairs for
    inputs that should have been read and could not (a named path that does not exist, an unreadable folder)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def display_path(path: str | Path) -> str:
    r"""A path as text that can be shown, stored as JSON and compared: its bytes as UTF-8, with any byte that
    is not valid UTF-8 written as ``\xNN`` (a name from another locale). Valid names are unchanged.

    >>> display_path("/docs/caf\udce9.pdf"), display_path("/docs/café.pdf")
    ('/docs/caf\\xe9.pdf', '/docs/café.pdf')
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _special_kind(path: Path) -> str | None:
    """What a path that is neither a regular file nor a folder is ("FIFO", "socket", ...), or None if missing."""
    try:
        mode = path.stat().st_mode  # follows symlinks
    except OSError:
        return None
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def walk_inputs(
    paths: Iterable[str | Path], suffixes: Iterable[str] = SUPPORTED_SUFFIXES, exclude: Iterable[Path] = ()
) -> WalkResult:
    """Expand files and folders into the input files to ingest.

    Folders are walked recursively, following symlinks but never entering a directory twice (so a
    symlink loop ends). Names starting with ``.`` are skipped silently inside folders; a path given
    explicitly is always considered. Files whose suffix (case-insensitive) is not in ``suffixes`` and
    special files (FIFOs, devices, sockets, even behind a symlink) are ``skipped`` with their reason. A
    named path that does not exist (or is a broken symlink) and a folder that cannot be read are
    ``failed``. ``files`` is sorted and free of duplicates (by resolved path, first spelling kept).
    Folders in ``exclude`` (colsmol's own page images) are skipped.
    """
    wanted = {s.lower() for s in suffixes}
    files: dict[Path, Path] = {}  # resolved -> as found
    skipped: list[tuple[Path, str]] = []
    failed: list[tuple[Path, str]] = []
    seen_dirs: set[Path] = set()
    excluded = {p.resolve() for p in exclude}

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

    def consider_other(p: Path, named: bool) -> None:
        kind = _special_kind(p)
        if kind is not None:
            skipped.append((p, f"not a regular file ({kind})"))
        elif p.is_symlink():
            (failed if named else skipped).append((p, "broken symlink (its target does not exist)"))
        elif named:
            failed.append((p, "not found"))

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
        if resolved in excluded:
            skipped.append((d, "colsmol's own page images"))
            return
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            failed.append((d, f"unreadable folder: {e.strerror or e}"))
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
            else:
                consider_other(child, named=False)

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            walk_dir(p)
        elif p.is_file():
            consider_file(p)
        else:
            consider_other(p, named=True)
    return WalkResult(files=sorted(files.values()), skipped=skipped, failed=failed)
