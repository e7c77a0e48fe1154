"""Receive an upload: stream a multipart body to disk, counting bytes, and sniff each file's type.

Files land in ``uploads_dir / <job_id> / <NN><ext>``: names generated here, never taken from the client.
The client's file name is stored as the source ``upload:<name>`` (what is shown). Types are decided by
magic bytes, not by the name or the declared content type; an Office, web, Markdown, EPUB or text file keeps its
name's suffix once its content agrees (:func:`indexer.render.containers.check_convertible`: a ZIP container that
is really that format and no ZIP bomb, an OLE2 file, RTF, or text; never an executable). A body that ends before
its closing boundary (a cut-off upload) is refused whole.

Form fields besides the files: ``metadata``, a flat JSON object stored with every page (see
:func:`parse_metadata`), and ``password``, for the upload's encrypted PDFs (kept in memory for the job only:
never stored, logged or reported).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from indexer.errors import DocumentError, EncryptedDocument
from indexer.render.base import sniff as sniff_kind
from indexer.render.containers import CONVERTIBLE_SUFFIXES, check_convertible

SNIFF_BYTES = 1024  # the renderer looks for a PDF header anywhere in the first 1 KB
MAX_FIELD_BYTES = 64 * 1024
MAX_NAME_CHARS = 255
MAX_METADATA_KEY_CHARS = 128
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FIELDS = ("files", "metadata", "password")
METADATA_HELP = (
    'metadata must be a flat JSON object of keys to strings, integers (64-bit), finite numbers or booleans, e.g. '
    '{"lang": "en", "year": 2024}'
)


class UploadError(Exception):
    """A rejected upload: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_SUFFIX = {"pdf": ".pdf", "png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tiff"}


def sniff(head: bytes) -> str | None:
    """The file extension for the magic bytes ``head`` (the renderer's own sniffing, so the API accepts
    exactly what ingest can read), or None when colsmol cannot read the file.

    >>> sniff(b"%PDF-1.7\\n"), sniff(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff(b"hello")
    ('.pdf', '.png', None)
    """
    kind = sniff_kind(head)
    return None if kind is None else _SUFFIX[kind]


def convertible_suffix(path: Path, original_name: str) -> str:
    """The suffix of an upload that LibreOffice converts (its name's, once its content agrees), or UploadError:
    415 for a file that is not what its name says (an executable named ``.docx``), 413 for a ZIP bomb."""
    suffix = Path(original_name).suffix.lower()
    if suffix not in CONVERTIBLE_SUFFIXES:
        raise UploadError(
            415,
            f"{original_name!r} is not a PDF, PNG, JPEG, WebP or TIFF file (checked by its content), nor a document "
            f"named {' '.join(sorted(CONVERTIBLE_SUFFIXES))}",
        )
    try:
        check_convertible(path, suffix)
    except EncryptedDocument:
        pass  # a well-formed file: the ingest job reports it in one line, as for an encrypted PDF
    except DocumentError as exc:
        status = 413 if exc.reason.startswith("refused") else 415
        raise UploadError(status, f"{original_name!r}: {exc.reason}") from None
    return suffix


def display_name(name: str) -> str:
    """The client's file name reduced to something safe to show: last path segment, no control chars."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:MAX_NAME_CHARS] or "upload"


@dataclass
class SavedFile:
    path: Path
    original_name: str
    size: int


@dataclass
class Upload:
    files: list[SavedFile] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    password: str | None = field(default=None, repr=False)


async def receive(
    content_type: str,
    body: AsyncIterator[bytes],
    target: Path,
    max_file_bytes: int,
    max_files: int,
    claim: Callable[[Path], None] | None = None,
) -> Upload:
    """Parse the multipart ``body`` into ``target`` (created here, then passed to ``claim``; removed again on any
    error)."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError(
            415, "send the files as multipart/form-data (field 'files'; optional fields 'metadata', 'password')"
        )
    target.mkdir(parents=True, exist_ok=False)
    try:
        if claim is not None:
            claim(target)
        return await _receive(params[b"boundary"], body, target, max_file_bytes, max_files)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


async def _receive(boundary: bytes, body: AsyncIterator[bytes], target: Path, max_bytes: int, max_files: int) -> Upload:
    upload = Upload()
    fields: dict[str, bytes] = {}
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "name": None, "fh": None, "size": 0}

    def on_part_begin() -> None:
        state.update(headers={}, name=None, filename=None, fh=None, size=0, buf=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = opts.get(b"name", b"").decode("utf-8", "replace")
        filename = opts.get(b"filename")
        if filename is None:
            return
        if len(upload.files) >= max_files:
            raise UploadError(400, f"too many files in one upload; the limit is {max_files}")
        path = target / f"{len(upload.files):03d}.part"
        state["fh"] = path.open("wb")
        upload.files.append(SavedFile(path, display_name(filename.decode("utf-8", "replace")), 0))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        fh = state["fh"]
        if fh is None:
            if len(state["buf"]) + len(chunk) > MAX_FIELD_BYTES:
                raise UploadError(413, f"form field {state['name']!r} is over {MAX_FIELD_BYTES} bytes")
            state["buf"] += chunk
            return
        saved = upload.files[-1]
        saved.size += len(chunk)
        if saved.size > max_bytes:
            raise UploadError(413, f"{saved.original_name!r} is over the upload limit of {max_bytes} bytes")
        fh.write(chunk)

    def on_part_end() -> None:
        fh = state["fh"]
        if fh is None:
            fields[state["name"]] = state["buf"]
            return
        fh.close()
        state["fh"] = None
        saved = upload.files[-1]
        with saved.path.open("rb") as f:
            ext = sniff(f.read(SNIFF_BYTES)) or convertible_suffix(saved.path, saved.original_name)
        final = saved.path.with_suffix(ext)
        saved.path.rename(final)
        saved.path = final

    callbacks: Any = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise UploadError(400, f"malformed multipart body: {exc}") from exc
    finally:
        if state.get("fh") is not None:
            state["fh"].close()
    # python-multipart's finalize() does not check that the body ended: a cut-off upload must not be indexed.
    if parser.state != MultipartState.END:
        raise UploadError(400, "malformed multipart body: it ends before its closing boundary (a cut-off upload?)")
    if not upload.files:
        raise UploadError(400, "no files in the upload; send them in the multipart field 'files'")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise UploadError(422, f"unknown form field {unknown[0][:100]!r}; the fields are {', '.join(FIELDS)}")
    if b"" != fields.get("metadata", b""):
        upload.metadata = parse_metadata(fields["metadata"])
    if fields.get("password"):
        try:
            upload.password = fields["password"].decode("utf-8")
        except UnicodeDecodeError:
            raise UploadError(422, "the password field is not UTF-8 text") from None
    return upload


def parse_metadata(raw: bytes) -> dict[str, Any]:
    """The upload's ``metadata`` field: a flat JSON object of strings, int64 integers, finite numbers, booleans.

    Anything else is an :class:`UploadError` (422) naming the key, here, before a job exists: NaN, 1e400 or an
    integer past 64 bits cannot be stored, and a nested value cannot be filtered on.

    >>> parse_metadata(b'{"lang": "en", "year": 2024, "score": 0.5, "draft": false}')
    {'lang': 'en', 'year': 2024, 'score': 0.5, 'draft': False}
    >>> parse_metadata(b'{"size": 1e400}')
    Traceback (most recent call last):
    ...
    api.http.uploads.UploadError: metadata 'size': inf is not a finite number; metadata must be ...
    """
    try:
        value = json.loads(raw)  # NaN and Infinity parse as floats, refused below by key
    except RecursionError:
        raise UploadError(422, f"the metadata field is nested too deeply; {METADATA_HELP}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UploadError(422, f"the metadata field is not valid JSON: {str(exc)[:200]}; {METADATA_HELP}") from None
    if not isinstance(value, dict):
        raise UploadError(422, f"the metadata field is a JSON {type(value).__name__}; {METADATA_HELP}")
    for key, item in value.items():
        problem = _key_problem(key) or _value_problem(item)
        if problem is not None:
            raise UploadError(422, f"metadata {key[:MAX_METADATA_KEY_CHARS]!r}: {problem}; {METADATA_HELP}")
    return value


def _key_problem(key: str) -> str | None:
    if not key.strip():
        return "a key must not be empty"
    if len(key) > MAX_METADATA_KEY_CHARS:
        return f"a key may have at most {MAX_METADATA_KEY_CHARS} characters"
    if "." in key:
        return "a key must not contain '.' (filters name keys as metadata.<key>)"
    if not _encodable(key):
        return "the key is not valid Unicode (a lone surrogate)"
    return None


def _value_problem(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return f"the integer {str(value)[:30]}... does not fit in 64 bits (store it as a string)"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, str):
        return None if _encodable(value) else "the value is not valid Unicode (a lone surrogate)"
    kind = {type(None): "null", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
    return f"the value is {kind}"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
