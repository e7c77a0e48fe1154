"""The corpus file of ``bench/scale.py``: one ``.npz`` holding ``tokens (T, 128)`` float16, ``offsets (N + 1,)``
int64 (page ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``) and ``queries (Q, q, 128)`` float32.

A 100,000-page corpus is 25 GB of fp16 tokens, so neither side holds it in memory: :func:`write_corpus` streams
pages into an uncompressed (stored) zip member, and :func:`open_corpus` memory-maps that member in place
(``np.load`` would read all of it). A compressed ``.npz`` (``np.savez_compressed``) is read the ordinary way.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIM = 128


@dataclass
class Corpus:
    tokens: np.ndarray  # (T, 128) float16, usually a read-only memory map
    offsets: np.ndarray  # (N + 1,) int64
    queries: np.ndarray  # (Q, q, 128) float32

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def page(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def _write_member(
    zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...], chunks: Iterable[np.ndarray]
) -> None:
    with zf.open(name, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        )
        for c in chunks:
            f.write(np.ascontiguousarray(c, dtype=dtype).tobytes())


def write_corpus(
    path: Path,
    n_pages: int,
    page: Callable[[int], np.ndarray],
    queries: np.ndarray,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stream ``page(i)`` for ``i < n_pages`` into ``path``; pages are generated twice (sizes, then tokens) so
    that nothing is held: generation is deterministic per page."""
    lengths = np.empty(n_pages, dtype=np.int64)
    cache: dict[int, np.ndarray] = {}
    for i in range(n_pages):
        v = page(i)
        lengths[i] = v.shape[0]
        if i < 64:
            cache[i] = v
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def chunks() -> Iterable[np.ndarray]:
        for i in range(n_pages):
            yield (cache.pop(i) if i in cache else page(i)).astype(np.float16)
            if progress is not None and (i + 1) % 1000 == 0:
                progress(i + 1)

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write_member(zf, "offsets.npy", np.int64, offsets.shape, [offsets])
        _write_member(zf, "queries.npy", np.float32, queries.shape, [queries])
        _write_member(zf, "tokens.npy", np.float16, (int(offsets[-1]), DIM), chunks())


def _mapped(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path}:{info.filename} is Fortran-ordered")
        return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=f.tell())


def open_corpus(path: Path) -> Corpus:
    """The corpus in ``path``, its tokens memory-mapped when the member is stored uncompressed."""
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
    missing = {"tokens.npy", "offsets.npy", "queries.npy"} - set(infos)
    if missing:
        raise SystemExit(f"{path}: missing {sorted(missing)}; a corpus holds tokens, offsets and queries")
    arrays = {}
    for name in ("tokens", "offsets", "queries"):
        info = infos[f"{name}.npy"]
        if info.compress_type == zipfile.ZIP_STORED:
            arrays[name] = _mapped(path, info)
        else:
            with np.load(path) as z:
                arrays[name] = z[name]
    tokens, offsets, queries = arrays["tokens"], np.asarray(arrays["offsets"], np.int64), np.asarray(arrays["queries"])
    if tokens.ndim != 2 or tokens.shape[1] != DIM or offsets[-1] != tokens.shape[0] or queries.ndim != 3:
        raise SystemExit(
            f"{path}: expected tokens (T, {DIM}), offsets (N + 1,) ending at T, queries (Q, q, {DIM}); got "
            f"{tokens.shape}, {offsets.shape} ending at {offsets[-1]}, {queries.shape}"
        )
    return Corpus(tokens, offsets, np.array(queries, dtype=np.float32))
