"""Evaluation datasets: page images, query texts and relevance judgments (qrels).

Two layouts are read (see docs/eval.md):

**Folder (BEIR style).** ``DATASET/`` holds three parts, each as ``NAME.jsonl``, ``NAME.parquet``, ``NAME.tsv`` or a
folder ``NAME/`` of such files (a ``test*`` file is preferred when the folder holds several splits, as BEIR's
``qrels/test.tsv``):

- ``corpus``: one row per page, ``{"_id": "p1", "image": "corpus/p1.png"}``; the id column may also be called
  ``id``/``corpus-id``/``corpus_id``/``doc_id``/``image_filename``, the image column ``image_path``/``path``/``file``.
  An image is a path relative to the dataset folder, or (parquet) the Hugging Face image struct ``{bytes, path}``.
  A ``corpus/`` folder that holds only images is read as pages too: the id is the file path below ``corpus/``
  without its extension.
- ``queries``: ``{"_id": "q1", "text": "..."}`` (``id``/``query-id``/``query_id``/``qid``; ``text``/``query``).
- ``qrels``: ``{"query-id": "q1", "corpus-id": "p1", "score": 1}`` (``query_id``/``qid``; ``corpus_id``/``doc_id``;
  ``score``/``relevance``/``rel``; a missing score means 1). A ``.tsv`` needs a header line.

**ViDoRe v1 Hugging Face parquet.** ``DATASET/`` (or ``DATASET/data/``) holds ``*.parquet`` files with columns
``query``, ``image``, ``image_filename``: one row per query/page pair; rows whose ``query`` is null are distractor
pages. This is read exactly as the ViDoRe evaluator reads it: the corpus is every distinct ``image_filename``;
queries are deduplicated by text; each query is relevant (score 1) to the ``image_filename`` of its last row.

Malformed input raises :class:`DatasetError` naming the file and the line (jsonl/tsv) or row (parquet).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.errors import ColsmolError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
TABLE_SUFFIXES = (".jsonl", ".parquet", ".tsv")

CORPUS_ID = ("_id", "id", "corpus-id", "corpus_id", "doc_id", "docid", "image_filename")
CORPUS_IMAGE = ("image", "image_path", "path", "file", "file_name")
QUERY_ID = ("_id", "id", "query-id", "query_id", "qid")
QUERY_TEXT = ("text", "query")
QREL_QUERY = ("query-id", "query_id", "qid")
QREL_CORPUS = ("corpus-id", "corpus_id", "doc_id", "docid")
QREL_SCORE = ("score", "relevance", "rel", "label")


class DatasetError(ColsmolError):
    """An evaluation dataset is missing a part or holds a malformed row; the message names file and line."""


@dataclass(frozen=True)
class CorpusPage:
    """One page of the corpus: an image file on disk (``path``) or encoded image bytes (``data``)."""

    id: str
    path: Path | None = None
    data: bytes | None = None
    where: str = ""  # "corpus.jsonl:3", for error messages

    def image(self) -> Image.Image:
        """The page as an RGB PIL image (decoded on demand, so a large corpus is never all in memory)."""
        from PIL import Image, UnidentifiedImageError

        try:
            if self.data is not None:
                img = Image.open(io.BytesIO(self.data))
            elif self.path is not None:
                img = Image.open(self.path)
            else:
                raise DatasetError(f"{self.where}: page {self.id!r} has no image")
            img.load()
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"{self.where}: page {self.id!r}: cannot read the image ({exc})") from None
        return img.convert("RGB")


@dataclass
class EvalDataset:
    """Pages, the judged queries and their qrels (``qrels[query_id][corpus_id] = relevance``)."""

    name: str
    root: Path
    layout: str  # "folder" or "vidore-parquet"
    corpus: list[CorpusPage]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    unjudged_queries: int = 0  # queries without any qrels row: not evaluated
    files: dict[str, str] = field(default_factory=dict)  # part -> file(s) read

    def head(self, n_queries: int | None) -> EvalDataset:
        """The first ``n_queries`` judged queries (the whole corpus stays: it is the haystack)."""
        if n_queries is None or n_queries >= len(self.queries):
            return self
        keep = list(self.queries)[:n_queries]
        return replace(self, queries={q: self.queries[q] for q in keep}, qrels={q: self.qrels[q] for q in keep})

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.root),
            "layout": self.layout,
            "pages": len(self.corpus),
            "queries": len(self.queries),
            "unjudged_queries": self.unjudged_queries,
            "qrels": sum(len(v) for v in self.qrels.values()),
        }


# ---------------------------------------------------------------------------------------------- table reading


def _rows(path: Path, columns: Sequence[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for every row of a jsonl/tsv/parquet file; ``where`` is ``file:line`` or ``file: row N``."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(row, dict):
                    raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
                yield where, row
    elif suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t")
            header: list[str] | None = None
            for lineno, cells in enumerate(reader, 1):
                if not cells or not any(c.strip() for c in cells):
                    continue
                if header is None:
                    header = [c.strip() for c in cells]
                    continue
                where = f"{path}:{lineno}"
                if len(cells) != len(header):
                    raise DatasetError(f"{where}: {len(cells)} columns, the header line has {len(header)}")
                yield where, dict(zip(header, cells, strict=True))
    elif suffix == ".parquet":
        pq = _pyarrow_parquet(path)
        try:
            pf = pq.ParquetFile(path)
            present = set(pf.schema_arrow.names)
            cols = [c for c in columns if c in present] if columns is not None else None
            n = 0
            for batch in pf.iter_batches(batch_size=256, columns=cols):
                for row in batch.to_pylist():
                    n += 1
                    yield f"{path}: row {n}", row
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise DatasetError(f"{path}: cannot read parquet ({exc})") from None
    else:
        raise DatasetError(f"{path}: unsupported file type (use {', '.join(TABLE_SUFFIXES)})")


def _pyarrow_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{path}: reading parquet needs pyarrow; `pip install pyarrow`") from None
    return pq


def _field(row: dict[str, Any], names: Sequence[str], where: str, what: str, required: bool = True) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    if required:
        raise DatasetError(f"{where}: no {what} (expected a field named one of {', '.join(names)})")
    return None


def _as_id(value: Any, where: str, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DatasetError(f"{where}: {what} must be a string or integer, got {value!r}")
    text = str(value).strip()
    if not text:
        raise DatasetError(f"{where}: empty {what}")
    return text


def _find_part(root: Path, part: str, split: str) -> list[Path]:
    """The file(s) holding ``part``: ``part.{jsonl,parquet,tsv}`` or table files inside ``part/``."""
    for suffix in TABLE_SUFFIXES:
        p = root / f"{part}{suffix}"
        if p.is_file():
            return [p]
    d = root / part
    if d.is_dir():
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
        if not files:
            return []
        in_split = [p for p in files if p.name.startswith(split)]
        return in_split or files
    return []


def _image_folder(root: Path) -> list[Path]:
    d = root / "corpus"
    if not d.is_dir():
        return []
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# ---------------------------------------------------------------------------------------------- folder layout


def _load_corpus(root: Path, files: list[Path]) -> list[CorpusPage]:
    pages: dict[str, CorpusPage] = {}
    for path in files:
        for where, row in _rows(path, columns=CORPUS_ID + CORPUS_IMAGE):
            cid = _as_id(_field(row, CORPUS_ID, where, "corpus id"), where, "corpus id")
            if cid in pages:
                raise DatasetError(f"{where}: duplicate corpus id {cid!r} (first at {pages[cid].where})")
            image = _field(row, CORPUS_IMAGE, where, "image")
            page = _corpus_page(root, path, cid, image, where)
            pages[cid] = page
    return list(pages.values())


def _corpus_page(root: Path, table: Path, cid: str, image: Any, where: str) -> CorpusPage:
    if isinstance(image, dict):  # Hugging Face datasets Image feature: {"bytes": ..., "path": ...}
        if image.get("bytes"):
            return CorpusPage(cid, data=bytes(image["bytes"]), where=where)
        image = image.get("path")
    if isinstance(image, bytes | bytearray):
        return CorpusPage(cid, data=bytes(image), where=where)
    if not isinstance(image, str) or not image.strip():
        raise DatasetError(f"{where}: corpus {cid!r}: image must be a file path or image bytes, got {image!r}")
    for base in (root, table.parent):
        p = Path(image) if Path(image).is_absolute() else base / image
        if p.is_file():
            return CorpusPage(cid, path=p, where=where)
    raise DatasetError(f"{where}: corpus {cid!r}: image file {image!r} not found (paths are relative to {root})")


def _load_queries(files: list[Path]) -> tuple[dict[str, str], dict[str, str]]:
    queries: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for path in files:
        for where, row in _rows(path, columns=QUERY_ID + QUERY_TEXT):
            qid = _as_id(_field(row, QUERY_ID, where, "query id"), where, "query id")
            text = _field(row, QUERY_TEXT, where, "query text", required=False)
            if not isinstance(text, str) or not text.strip():
                raise DatasetError(f"{where}: query {qid!r} has empty text")
            if qid in queries:
                raise DatasetError(f"{where}: duplicate query id {qid!r} (first at {first_seen[qid]})")
            queries[qid] = text
            first_seen[qid] = where
    return queries, first_seen


def _score(raw: Any, where: str) -> int:
    if raw is None:
        return 1
    try:
        value = float(raw) if not isinstance(raw, bool) else float("nan")
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value != int(value):
        raise DatasetError(f"{where}: relevance score {raw!r} is not an integer")
    return int(value)


def _load_qrels(files: list[Path], queries: dict[str, str], corpus_ids: set[str]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for path in files:
        for where, row in _rows(path, columns=QREL_QUERY + QREL_CORPUS + QREL_SCORE):
            qid = _as_id(_field(row, QREL_QUERY, where, "query id"), where, "query id")
            cid = _as_id(_field(row, QREL_CORPUS, where, "corpus id"), where, "corpus id")
            raw = _field(row, QREL_SCORE, where, "score", required=False)
            score = _score(raw, where)
            if qid not in queries:
                raise DatasetError(f"{where}: unknown query id {qid!r} (not in the queries)")
            if cid not in corpus_ids:
                raise DatasetError(f"{where}: unknown corpus id {cid!r} (not in the corpus)")
            qrels.setdefault(qid, {})[cid] = score
    return qrels


def _load_folder(root: Path, split: str) -> EvalDataset:
    corpus_files = _find_part(root, "corpus", split)
    image_files = [] if corpus_files else _image_folder(root)
    query_files = _find_part(root, "queries", split)
    qrel_files = _find_part(root, "qrels", split)
    expected = "{0}.jsonl, {0}.parquet, {0}.tsv or a {0}/ folder of them"
    if not corpus_files and not image_files:
        raise DatasetError(f"{root}: no corpus: expected {expected.format('corpus')}, or a corpus/ folder of images")
    if not query_files:
        raise DatasetError(f"{root}: no queries: expected {expected.format('queries')}")
    if not qrel_files:
        raise DatasetError(f"{root}: no qrels: expected {expected.format('qrels')}")

    if corpus_files:
        corpus = _load_corpus(root, corpus_files)
    else:
        base = root / "corpus"
        corpus = [CorpusPage(p.relative_to(base).with_suffix("").as_posix(), path=p, where=str(p)) for p in image_files]
        seen: dict[str, Path] = {}
        for page, p in zip(corpus, image_files, strict=True):
            if page.id in seen:
                raise DatasetError(f"{p}: duplicate corpus id {page.id!r} (also {seen[page.id]})")
            seen[page.id] = p
    if not corpus:
        raise DatasetError(f"{', '.join(map(str, corpus_files or [root / 'corpus']))}: the corpus is empty")
    queries, _ = _load_queries(query_files)
    qrels = _load_qrels(qrel_files, queries, {p.id for p in corpus})
    judged = {q: t for q, t in queries.items() if q in qrels}
    if not judged:
        raise DatasetError(f"{', '.join(map(str, qrel_files))}: no query has a relevance judgment")
    return EvalDataset(
        name=root.name,
        root=root,
        layout="folder",
        corpus=corpus,
        queries=judged,
        qrels={q: qrels[q] for q in judged},
        unjudged_queries=len(queries) - len(judged),
        files={
            "corpus": ", ".join(map(str, corpus_files)) or str(root / "corpus"),
            "queries": ", ".join(map(str, query_files)),
            "qrels": ", ".join(map(str, qrel_files)),
        },
    )


# ---------------------------------------------------------------------------------------------- ViDoRe parquet


def _vidore_files(root: Path, split: str) -> list[Path]:
    files = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    in_split = [p for p in files if p.name.startswith(split) or p.parent.name == split]
    return in_split or files


def is_vidore_parquet(root: Path, split: str = "test") -> bool:
    """True when ``root`` holds parquet files with ViDoRe v1 columns (query, image, image_filename)."""
    files = _vidore_files(root, split)
    if not files:
        return False
    pq = _pyarrow_parquet(files[0])
    try:
        names = set(pq.read_schema(files[0]).names)
    except Exception:  # noqa: BLE001 - not a parquet file we can read: not this layout
        return False
    return {"query", "image", "image_filename"} <= names


def _load_vidore(root: Path, split: str) -> EvalDataset:
    files = _vidore_files(root, split)
    corpus: dict[str, CorpusPage] = {}
    query_ids: dict[str, str] = {}  # text -> qid, in order of first appearance
    last_page: dict[str, str] = {}  # text -> image_filename of its last row
    for path in files:
        for where, row in _rows(path, columns=("query", "image", "image_filename")):
            for col in ("image", "image_filename"):
                if col not in row:
                    raise DatasetError(f"{where}: no {col!r} column (not a ViDoRe v1 parquet file)")
            fname = _as_id(row["image_filename"], where, "image_filename")
            if fname not in corpus:
                if row["image"] is None:
                    raise DatasetError(f"{where}: page {fname!r} has no image")
                corpus[fname] = _corpus_page(root, path, fname, row["image"], where)
            query = row.get("query")
            if query is None:
                continue  # a distractor page
            if not isinstance(query, str) or not query.strip():
                raise DatasetError(f"{where}: empty query text for page {fname!r}")
            query_ids.setdefault(query, f"q{len(query_ids)}")
            last_page[query] = fname
    if not corpus:
        raise DatasetError(f"{root}: the ViDoRe parquet files hold no rows")
    if not query_ids:
        raise DatasetError(f"{root}: every row's query is null: no queries to evaluate")
    queries = {qid: text for text, qid in query_ids.items()}
    qrels = {qid: {last_page[text]: 1} for text, qid in query_ids.items()}
    return EvalDataset(
        name=root.name,
        root=root,
        layout="vidore-parquet",
        corpus=list(corpus.values()),
        queries=queries,
        qrels=qrels,
        files={"parquet": ", ".join(map(str, files))},
    )


# ---------------------------------------------------------------------------------------------- entry point


def load_dataset(path: str | Path, split: str = "test") -> EvalDataset:
    """Read an evaluation dataset in either layout (see the module docstring)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: expected a dataset folder (corpus, queries, qrels) or a ViDoRe parquet folder")
    has_parts = any(_find_part(root, part, split) for part in ("corpus", "queries", "qrels")) or bool(
        _image_folder(root)
    )
    if not has_parts and is_vidore_parquet(root, split):
        return _load_vidore(root, split)
    return _load_folder(root, split)
