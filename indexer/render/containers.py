"""What an Office, web or text file really is, checked from its bytes before LibreOffice sees it.

``check_convertible(path, suffix)`` returns the suffix the file is converted as, or raises
:class:`~indexer.errors.DocumentError` with a one-line reason:

- ZIP containers (``.docx .xlsx .pptx .odt .ods .odp .epub``) must be ZIP files whose parts say they are that
  format, and must not be ZIP bombs: at most :data:`MAX_ENTRIES` entries, :data:`MAX_UNCOMPRESSED` bytes
  uncompressed in all, and a compression ratio of at most :data:`MAX_RATIO` (checked from the central directory,
  nothing is decompressed). A password-protected OOXML file is an OLE2 container holding ``EncryptionInfo``; an
  encrypted ODF file says so in its manifest: both are "encrypted: ...".
- OLE2 files (``.doc .xls .ppt``) must start with the OLE2 signature (a ``.doc`` that is RTF is read as RTF); RTF
  with ``{\\rtf``. Web pages or XML saved under a legacy name are refused: they would bypass the sanitiser.
- Text formats (``.txt .csv .md .html .htm``) must be text: no NUL bytes in the first 64 KB (UTF-16 with a BOM
  is allowed). An executable (ELF, PE, Mach-O, a script's ``#!``) is refused whatever its name.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from indexer.errors import DocumentError, EncryptedDocument
from indexer.render.base import read_head

MAX_ENTRIES = 10_000
MAX_UNCOMPRESSED = 1 << 30  # 1 GiB
MAX_RATIO = 200

ZIP_SUFFIXES = frozenset({".docx", ".xlsx", ".pptx", ".odt", ".ods", ".odp", ".epub"})
OLE_SUFFIXES = frozenset({".doc", ".xls", ".ppt"})
TEXT_SUFFIXES = frozenset({".txt", ".csv", ".md", ".html", ".htm"})
CONVERTIBLE_SUFFIXES = ZIP_SUFFIXES | OLE_SUFFIXES | TEXT_SUFFIXES | {".rtf"}

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = b"PK\x03\x04"
_EXECUTABLE = (b"\x7fELF", b"MZ", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")
# The part each OOXML kind must have, and the mimetype each ODF/EPUB kind declares.
_OOXML_PART = {".docx": "word/", ".xlsx": "xl/", ".pptx": "ppt/"}
_MIMETYPE = {
    ".odt": "application/vnd.oasis.opendocument.text",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".epub": "application/epub+zip",
}
_NAMES = {".docx": "Word", ".xlsx": "Excel", ".pptx": "PowerPoint", ".odt": "ODF text", ".ods": "ODF spreadsheet"}


def _label(suffix: str) -> str:
    return _NAMES.get(suffix, suffix.lstrip(".").upper())


def looks_executable(head: bytes) -> bool:
    """True for the first bytes of a program (ELF, PE, Mach-O) or a script.

    >>> looks_executable(b"\\x7fELF\\x02"), looks_executable(b"MZ\\x90\\x00"), looks_executable(b"PK\\x03\\x04")
    (True, True, False)
    """
    return head.startswith(_EXECUTABLE) or head.startswith(b"#!")


def check_convertible(path: Path, suffix: str | None = None) -> str:
    """Check ``path`` (taken as ``suffix``, default its own) before conversion; returns the suffix to convert it as,
    lower-case (its own, or ``.rtf`` for an RTF file named ``.doc``)."""
    suffix = (suffix or path.suffix).lower()
    if suffix not in CONVERTIBLE_SUFFIXES:
        raise DocumentError(str(path), f"unsupported file type (suffix {suffix or 'none'!r})")
    head = read_head(path)
    if looks_executable(head):
        raise DocumentError(str(path), f"not a {_label(suffix)} file (content is an executable program)")
    if suffix in ZIP_SUFFIXES:
        if head.startswith(_OLE_MAGIC) and suffix in _OOXML_PART:
            if _ole_has_stream(path, "EncryptionInfo"):
                raise EncryptedDocument(str(path), ENCRYPTED_OFFICE)
            raise DocumentError(str(path), f"corrupt {_label(suffix)} file (an OLE2 file, not a ZIP container)")
        if not head.startswith(_ZIP_MAGIC):
            raise DocumentError(str(path), f"corrupt {_label(suffix)} file (not a ZIP container)")
        check_zip(path, suffix)
    elif suffix in OLE_SUFFIXES:
        if suffix == ".doc" and head.lstrip().startswith(b"{\\rtf"):
            return ".rtf"  # Word's "save as RTF" under a .doc name: common, and read as the RTF it is
        if not head.startswith(_OLE_MAGIC):
            raise DocumentError(str(path), f"corrupt {_label(suffix)} file (no OLE2 signature)")
    elif suffix == ".rtf":
        if not head.lstrip().startswith(b"{\\rtf"):
            raise DocumentError(str(path), "corrupt RTF file (no {\\rtf header)")
    else:
        _check_text(path, suffix)
    return suffix


ENCRYPTED_OFFICE = (
    "encrypted: password-protected Office files cannot be converted (LibreOffice's command line takes no "
    "password); save an unprotected copy"
)


def check_zip(path: Path, suffix: str) -> None:
    """Refuse a ZIP bomb, a broken ZIP, and a ZIP that is not the format ``suffix`` says (central directory only)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise DocumentError(
                    str(path), f"refused: ZIP container with {len(infos)} entries (limit {MAX_ENTRIES})"
                )
            total = sum(i.file_size for i in infos)
            packed = sum(i.compress_size for i in infos)
            if total > MAX_UNCOMPRESSED:
                raise DocumentError(
                    str(path),
                    f"refused: ZIP container expands to {total} bytes (limit {MAX_UNCOMPRESSED}; a ZIP bomb?)",
                )
            if total > (1 << 20) and total > MAX_RATIO * max(packed, 1):
                raise DocumentError(
                    str(path),
                    f"refused: ZIP container compressed {total // max(packed, 1)}:1 (limit {MAX_RATIO}:1; a ZIP bomb?)",
                )
            names = {i.filename for i in infos}
            if suffix in _OOXML_PART:
                if "[Content_Types].xml" not in names or not any(n.startswith(_OOXML_PART[suffix]) for n in names):
                    raise DocumentError(str(path), f"corrupt {_label(suffix)} file (the ZIP holds no {suffix} parts)")
            else:
                mimetype = zf.read("mimetype")[:100].decode("ascii", "replace").strip() if "mimetype" in names else ""
                if mimetype != _MIMETYPE[suffix]:
                    raise DocumentError(
                        str(path), f"corrupt {_label(suffix)} file (its ZIP declares {mimetype or 'no'!r} mimetype)"
                    )
                if suffix != ".epub" and "META-INF/manifest.xml" in names:
                    manifest = zf.read("META-INF/manifest.xml")
                    if b"encryption-data" in manifest:
                        raise EncryptedDocument(str(path), ENCRYPTED_OFFICE)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError, ValueError, NotImplementedError) as e:
        raise DocumentError(str(path), f"corrupt {_label(suffix)} file (broken ZIP container: {e})") from None
    except OSError as e:
        raise DocumentError(str(path), f"unreadable: {e.strerror or e}") from None


def _ole_has_stream(path: Path, name: str) -> bool:
    """Whether an OLE2 file's directory names ``name`` (UTF-16LE in 128-byte entries; a byte search is enough)."""
    try:
        with open(path, "rb") as f:
            data = f.read(4 << 20)
    except OSError:
        return False
    return name.encode("utf-16-le") in data


def _check_text(path: Path, suffix: str) -> None:
    try:
        with open(path, "rb") as f:
            sample = f.read(64 * 1024)
    except OSError as e:
        raise DocumentError(str(path), f"unreadable: {e.strerror or e}") from None
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return  # UTF-16 with a byte order mark
    if b"\x00" in sample:
        raise DocumentError(str(path), f"not a {suffix.lstrip('.').upper()} text file (binary content)")
