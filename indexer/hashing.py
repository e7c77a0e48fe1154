"""Content hashes of files: the document id of an input file, the checksums of an export."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk``-sized blocks (memory stays flat).

    >>> import tempfile, os; fd, name = tempfile.mkstemp(); os.write(fd, b"abc"); os.close(fd)
    3
    >>> sha256_file(name)[:16]
    'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
