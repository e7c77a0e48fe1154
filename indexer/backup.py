"""Export a collection to a folder and import it back, into either backend.

``colsmol export PATH`` / ``colsmol import PATH`` call :func:`export_collection` and
:func:`import_collection`. An export holds everything needed to rebuild the store without the
models or the original files:

```
PATH/manifest.json              format, version, collection, schema, counts, files with sha256
PATH/points/points-00000.jsonl  one page per line: id, payload, tokens (fp16), pooled (fp32)
PATH/documents.jsonl            one completion marker per line (complete documents only)
PATH/images/ab/<id>.webp        the page images, byte for byte (and <id>.thumb.webp)
```

A page line is ``{"id", "payload", "tokens": {"n", "dtype": "<f2", "b64"}, "pooled": {...} or
null, "images": {"full": sha256 or null, "thumb": sha256 or null}}``. Token vectors are stored as
little-endian float16, which is what the collection keeps (see indexer/store/base.py), so an export of
an Edge store is lossless; pooled vectors are stored as float32, as the collection keeps them.

``manifest.json`` is written last: a folder without one is an interrupted export and import
refuses it. Import checks the manifest and every file's sha256 *before* writing anything, refuses
a store that already holds points (unless ``allow_merge=True``), writes the pages and their
images, then the document markers, so an interrupted import leaves documents incomplete, never
complete with pages missing. Import is idempotent: point ids are kept, so running it again
overwrites the same points. The collection's metadata records which export is being imported (the
sha256 of its manifest), so running the same import again after an interruption resumes it without
``--merge``.

The export is not a snapshot: run it while nothing ingests. Markers are listed before pages are
read, so a document ingested during the export is at worst exported as incomplete.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer.disk import replacing
from indexer.errors import ColsmolError
from indexer.hashing import sha256_file as _sha256
from indexer.images import SIZES, PageImageStore, Size
from indexer.store.base import DIM, POOLED_VECTOR, STAGE_TEXT, TOKENS_VECTOR, VectorStore, document_record
from indexer.types import DocumentInfo, PageRecord

logger = logging.getLogger(__name__)

FORMAT = "colsmol-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DOCUMENTS_FILE = "documents.jsonl"
POINTS_DIR = "points"
IMAGES_DIR = "images"
TOKENS_DTYPE = "<f2"
POOLED_DTYPE = "<f4"
PAGES_PER_SHARD = 500  # ~190 MB of JSONL at 1,100 tokens a page
IMPORT_BATCH = 32  # pages per upsert_pages call

#: ``progress(stage, done, total)``; stage is "pages" or "documents"; total may be None.
Progress = Callable[[str, int, int | None], None]


class BackupError(ColsmolError):
    """An export folder that cannot be written or read back, or a store that cannot take an import."""


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    collection: str
    pages: int
    documents: int
    images: int
    pooled_pages: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class ImportSummary:
    path: Path
    collection: str
    pages: int
    documents: int
    images: int
    pooled_pages: int
    seconds: float


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _colsmol_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("colsmol")
    except PackageNotFoundError:
        return "unknown"


def _encode(array: np.ndarray, dtype: str) -> dict[str, Any]:
    data = np.ascontiguousarray(array, dtype=dtype)
    return {"n": int(data.shape[0]), "dtype": dtype, "b64": base64.b64encode(data.tobytes()).decode("ascii")}


def _decode(blob: Any, dtype: str, where: str) -> np.ndarray:
    if not isinstance(blob, dict) or blob.get("dtype") != dtype or not isinstance(blob.get("n"), int):
        raise BackupError(f"{where}: malformed vector record (want dtype {dtype!r} and n)")
    try:
        raw = base64.b64decode(blob["b64"], validate=True)
    except (KeyError, ValueError, TypeError) as exc:
        raise BackupError(f"{where}: bad base64 vector data: {exc}") from exc
    n = blob["n"]
    if len(raw) != n * DIM * np.dtype(dtype).itemsize:
        raise BackupError(f"{where}: vector data has {len(raw)} bytes, expected {n} x {DIM} {dtype}")
    return np.frombuffer(raw, dtype=dtype).reshape(n, DIM).astype(np.float32)


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dst) as tmp, open(tmp, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


def _image_rel(point_id: str, size: Size) -> str:
    """Where a page image lies in an export: the image store's own layout under ``images/``."""
    return f"{IMAGES_DIR}/{PageImageStore.relative_path(point_id, size)}"


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


def export_collection(
    store: VectorStore,
    images: PageImageStore,
    out_dir: Path,
    progress: Progress | None = None,
    *,
    pages_per_shard: int = PAGES_PER_SHARD,
) -> ExportSummary:
    """Write every page (payload, token and pooled vectors, images) and document marker to ``out_dir``.

    ``out_dir`` must not exist or be empty. Raises :class:`BackupError` otherwise.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"export folder {out} is not empty: choose a new folder or empty it")
    out.mkdir(parents=True, exist_ok=True)
    (out / POINTS_DIR).mkdir()

    # Markers first: a marker is written only after all its pages, so every page of a listed
    # document is already there when the pages are read below.
    docs = store.list_documents(include_incomplete=False)
    total = store.count_pages()
    files: list[dict[str, Any]] = []

    with open(out / DOCUMENTS_FILE, "w", encoding="utf-8") as fh:
        for info in docs:
            fh.write(json.dumps(document_record(info), ensure_ascii=False, sort_keys=True) + "\n")
    files.append(
        {"path": DOCUMENTS_FILE, "sha256": _sha256(out / DOCUMENTS_FILE), "records": len(docs), "kind": "documents"}
    )

    pages = n_images = pooled_pages = skipped_text_only = 0
    shard_fh = None
    shard_rel = ""
    shard_records = 0

    def close_shard() -> None:
        nonlocal shard_fh
        if shard_fh is not None:
            shard_fh.close()
            shard_fh = None
            files.append(
                {"path": shard_rel, "sha256": _sha256(out / shard_rel), "records": shard_records, "kind": "points"}
            )

    try:
        # With their text: an import derives the BM25 vectors from it again.
        for stored in store.iter_pages(batch_size=64, vectors=("tokens", "pooled"), with_text=True):
            pid, tokens, pooled, payload = stored.point_id, stored.tokens, stored.pooled, stored.payload
            if tokens is None and payload.get("stage") == STAGE_TEXT:
                skipped_text_only += 1  # not embedded yet: the next ingest of its file finishes it
                continue
            if tokens is None:
                raise BackupError(f"page {pid} has no token vectors in collection {store.collection!r}")
            if shard_fh is None or shard_records >= pages_per_shard:
                close_shard()
                shard_rel = f"{POINTS_DIR}/points-{len(files) - 1:05d}.jsonl"
                shard_fh = open(out / shard_rel, "w", encoding="utf-8")  # closed by close_shard()
                shard_records = 0
            hashes: dict[str, str | None] = {}
            for size in SIZES:
                src = images.path(pid, size)
                if src.is_file():
                    dst = out / _image_rel(pid, size)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                    hashes[size] = _sha256(dst)
                else:
                    hashes[size] = None
            n_images += hashes["full"] is not None
            record = {
                "id": pid,
                "payload": payload,
                "tokens": _encode(tokens, TOKENS_DTYPE),
                "pooled": None if pooled is None else _encode(pooled, POOLED_DTYPE),
                "images": hashes,
            }
            pooled_pages += pooled is not None
            shard_fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            shard_records += 1
            pages += 1
            if progress is not None:
                progress("pages", pages, total)
    finally:
        close_shard()
    if progress is not None:
        progress("documents", len(docs), len(docs))

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "collection": store.collection,
        "backend": type(store).__name__,
        "colsmol_version": _colsmol_version(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "schema": {
            "dim": DIM,
            "vectors": {
                TOKENS_VECTOR: {"dtype": TOKENS_DTYPE, "multivector": "max_sim", "distance": "Dot"},
                POOLED_VECTOR: {"dtype": POOLED_DTYPE, "multivector": "max_sim", "distance": "Dot"},
            },
            "images": {"layout": "images/<id[:2]>/<id>.webp and <id>.thumb.webp"},
        },
        "counts": {"pages": pages, "documents": len(docs), "images": n_images, "pooled_pages": pooled_pages},
        "files": files,
    }
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    nbytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary = ExportSummary(
        out, store.collection, pages, len(docs), n_images, pooled_pages, nbytes, time.perf_counter() - start
    )
    if skipped_text_only:
        logger.warning("%d pages not embedded yet (text only) left out; ingest their files again", skipped_text_only)
    logger.info("exported %s", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------


def read_manifest(in_dir: Path) -> dict[str, Any]:
    """Load and check ``in_dir/manifest.json`` and every file it lists (existence and sha256).

    Raises :class:`BackupError` naming the first missing, corrupt or unsupported file.
    """
    root = Path(in_dir)
    if not root.is_dir():
        raise BackupError(f"import folder {root} does not exist")
    path = root / MANIFEST
    if not path.is_file():
        raise BackupError(f"{path} is missing: not a colsmol export, or the export was interrupted")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path} is not a colsmol export manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise BackupError(
            f"{path}: export format version {version!r} is not supported by this colsmol "
            f"(reads 1..{FORMAT_VERSION}); upgrade colsmol"
        )
    if (manifest.get("schema") or {}).get("dim") != DIM:
        raise BackupError(f"{path}: vectors have dim {(manifest.get('schema') or {}).get('dim')!r}, colsmol uses {DIM}")
    files = manifest.get("files")
    counts = manifest.get("counts")
    if not isinstance(files, list) or not isinstance(counts, dict):
        raise BackupError(f"{path} is corrupt: 'files' or 'counts' is missing")
    kinds = [f.get("kind") for f in files if isinstance(f, dict)]
    if len(kinds) != len(files) or kinds.count("documents") != 1:
        raise BackupError(f"{path} is corrupt: the file list needs exactly one documents file")
    for entry in files:
        rel = entry.get("path")
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
            raise BackupError(f"{path} is corrupt: bad file path {rel!r}")
        file = root / rel
        if not file.is_file():
            raise BackupError(f"{file} is missing from the export")
        if _sha256(file) != entry.get("sha256"):
            raise BackupError(f"{file} is corrupt: its sha256 does not match {MANIFEST}")
    if sum(f.get("records", 0) for f in files if f["kind"] == "points") != counts.get("pages"):
        raise BackupError(f"{path} is corrupt: the point files do not add up to {counts.get('pages')} pages")
    return manifest


def _read_lines(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(file, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            where = f"{file}:{n}"
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise BackupError(f"{where} is corrupt: {exc}") from exc
            if not isinstance(obj, dict):
                raise BackupError(f"{where} is corrupt: not a JSON object")
            yield where, obj


def _is_empty(store: VectorStore) -> bool:
    return store.count_pages() == 0 and not store.list_documents(include_incomplete=True)


def import_collection(
    store: VectorStore,
    images: PageImageStore,
    in_dir: Path,
    *,
    allow_merge: bool = False,
    progress: Progress | None = None,
) -> ImportSummary:
    """Restore an export made by :func:`export_collection` into ``store`` and ``images``.

    The store must be empty unless ``allow_merge`` (then pages and markers with the same ids are
    overwritten, others are kept). Pooled vectors are restored when the export has them; pages
    exported without them stay without (the search then uses exact MaxSim for them).
    Raises :class:`BackupError` for a missing or corrupt export file, naming it.
    """
    start = time.perf_counter()
    root = Path(in_dir)
    manifest = read_manifest(root)
    export_id = _sha256(root / MANIFEST)  # names this export: an interrupted import of it may resume
    previous = store.get_meta().get("import") or {}
    same_export = previous.get("export") == export_id
    if not allow_merge and not _is_empty(store):
        if same_export and previous.get("state") == "running":
            logger.info("resuming the interrupted import of %s into %r", root, store.collection)
        else:
            done = " (this export was already imported into it)" if same_export else ""
            raise BackupError(
                f"collection {store.collection!r} is not empty ({store.count_pages()} pages){done}: import into an "
                "empty collection (another COLSMOL_COLLECTION or data dir), or pass allow_merge=True (--merge) "
                "to add to it"
            )
    record = {"export": export_id, "path": str(root), "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    store.update_meta({"import": {**record, "state": "running"}})
    total = int(manifest["counts"]["pages"])
    pages = n_images = pooled_pages = 0
    batch: list[PageRecord] = []
    pending_images: list[tuple[str, dict[str, Any], str]] = []

    def flush() -> None:
        nonlocal n_images
        if not batch:
            return
        store.upsert_pages(batch)
        # Images after their page: a page without its image is re-rendered by a re-ingest,
        # an image without its page is an orphan nobody finds.
        for pid, hashes, where in pending_images:
            for size in SIZES:
                want = hashes.get(size)
                if want is None:
                    continue
                src = root / _image_rel(pid, size)
                if not src.is_file():
                    raise BackupError(f"{src} is missing from the export ({where} lists it)")
                if _sha256(src) != want:
                    raise BackupError(f"{src} is corrupt: its sha256 does not match {where}")
                _copy_atomic(src, images.path(pid, size))
            n_images += hashes.get("full") is not None
        batch.clear()
        pending_images.clear()
        if progress is not None:
            progress("pages", pages, total)

    for entry in manifest["files"]:
        if entry["kind"] != "points":
            continue
        for where, obj in _read_lines(root / entry["path"]):
            pid, payload = obj.get("id"), obj.get("payload")
            if not isinstance(pid, str) or not isinstance(payload, dict):
                raise BackupError(f"{where} is corrupt: needs a string 'id' and an object 'payload'")
            tokens = _decode(obj.get("tokens"), TOKENS_DTYPE, where)
            pooled = None if obj.get("pooled") is None else _decode(obj["pooled"], POOLED_DTYPE, where)
            pooled_pages += pooled is not None
            batch.append(PageRecord(point_id=pid, vectors=tokens, payload=payload, pooled=pooled))
            pending_images.append((pid, obj.get("images") or {}, where))
            pages += 1
            if len(batch) >= IMPORT_BATCH:
                flush()
    flush()

    docs = 0
    for where, obj in _read_lines(root / DOCUMENTS_FILE):
        try:
            info = DocumentInfo(
                doc_id=str(obj["doc_id"]),
                source=str(obj.get("source", "")),
                file_name=str(obj.get("file_name", "")),
                page_count=int(obj.get("page_count") or 0),
                pages_stored=0,
                content_hash=str(obj.get("content_hash", "")),
                ingested_at=str(obj.get("ingested_at", "")),
                complete=True,
                metadata=dict(obj.get("metadata") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"{where} is corrupt: {exc}") from exc
        store.mark_document_complete(info)
        docs += 1
    if progress is not None:
        progress("documents", docs, docs)
    store.update_meta({"import": {**record, "state": "done"}})
    flush_store = getattr(store, "flush", None)
    if callable(flush_store):
        flush_store()
    summary = ImportSummary(root, store.collection, pages, docs, n_images, pooled_pages, time.perf_counter() - start)
    logger.info("imported %s", summary)
    return summary


__all__ = [
    "BackupError",
    "ExportSummary",
    "ImportSummary",
    "export_collection",
    "import_collection",
    "read_manifest",
]
