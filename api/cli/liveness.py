"""Which API processes serving a data directory are alive, whatever their PIDs.

Job records and upload folders name the process that owns them, so that the next start can tell work
left behind by a dead server (``kill -9``, power loss) from work another live worker is doing. PIDs cannot
say that: in a container the server is PID 1 after every restart. Instead each process takes an exclusive
``flock`` on its own file, ``<dir>/<id>.lock``; the kernel drops the lock when the process dies, so an
owner is alive exactly while its file stays locked.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path


class ProcessClaim:
    """This process's claim (``id``), held until :meth:`release` or death, and a liveness test for others'."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.id = uuid.uuid4().hex
        # Locked under a temporary name, then renamed: nobody ever sees the final name unlocked.
        tmp = folder / f".{self.id}.tmp"
        self._fd: int | None = os.open(tmp, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, self._path(self.id))

    def _path(self, owner: str) -> Path:
        return self.folder / f"{owner}.lock"

    def alive(self, owner: str) -> bool:
        """Whether the process that claimed ``owner`` still runs (a malformed or unknown id is dead)."""
        if owner == self.id:
            return self._fd is not None
        if not owner.isalnum():
            return False
        try:
            fd = os.open(self._path(owner), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the lock if we just took it
        self._path(owner).unlink(missing_ok=True)  # a dead owner's file: tidy it away
        return False

    def release(self) -> None:
        if self._fd is not None:
            self._path(self.id).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
