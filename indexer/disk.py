"""Free disk space: refuse a write that would fill the disk, and name a full disk in one line; atomic file writes.

Embedded Qdrant Edge keeps its vectors and WAL in memory-mapped files. When the disk fills while it
writes, the kernel kills the process with SIGBUS (measured here on an ext4 loop device: the 37th
1,000-token page into 20 MB of free space ended in a bus error, no exception): nothing to catch and a
shard left mid-write. So every write checks the free space first, with a margin for the engine's 32 MB
storage chunks and WAL segments, and stops with :class:`~indexer.errors.DiskFull` instead. Reading
needs no margin (an Edge shard opened for reading with 1 MB free worked).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import DiskFull

#: Free space every write leaves untouched: two of the engine's 32 MB chunks.
WRITE_MARGIN_BYTES = 64 * 1024 * 1024
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent), None when unknown."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def full_disk(where: str | Path, free: int | None = None) -> DiskFull:
    """The one-line error for a full disk under ``where``."""
    free = free_bytes(where) if free is None else free
    amount = "free space unknown" if free is None else f"{free / 1e6:.0f} MB free"
    return DiskFull(
        f"the disk holding {where} is full ({amount}; colsmol keeps {WRITE_MARGIN_BYTES // 2**20} MB free for "
        "its store): free some space and run the same command again; everything stored so far is kept"
    )


def require_free(where: str | Path, need: int = 0) -> None:
    """Raise :class:`DiskFull` unless ``need`` bytes plus the margin are free under ``where``."""
    free = free_bytes(where)
    if free is not None and free < need + WRITE_MARGIN_BYTES:
        raise full_disk(where, free)


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError saying the disk (or the user's quota) is full, or an engine error that says so."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return "no space left on device" in text or "disk quota exceeded" in text


@contextlib.contextmanager
def replacing(target: str | Path, tmp_dir: str | Path | None = None) -> Iterator[Path]:
    """A new temporary file (mode 0600) to write ``target``'s content to: on a clean exit it replaces ``target`` in
    one rename, so readers see the old file or the new one, never half of one; on an error it is removed.

    ``tmp_dir`` (default: ``target``'s folder, which must exist) must be on the same file system.
    """
    target = Path(target)
    folder = Path(tmp_dir) if tmp_dir is not None else target.parent
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
