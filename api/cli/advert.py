"""A running ``colsmol serve`` advertises itself in the data directory, so the CLI can go through it.

Embedded Qdrant Edge belongs to one process. While ``colsmol serve`` owns a data directory, every other
``colsmol`` command would be refused ("in use by process N"); instead the CLI finds the server here and
talks to it over HTTP, with the models already loaded (a search then costs a query, not a model load).

``DATA_DIR/serve/<collection>.json`` (mode 0600, written atomically at start-up, removed at shutdown)::

    {"url": "http://127.0.0.1:8000", "pid": 1234, "collection": "colsmol", "auth": false,
     "token": "<random>", "started_at": "..."}

- ``auth``: whether ``/v1`` needs ``COLSMOL_API_KEY`` (the key itself is never written here).
- ``token``: a random secret for the local-only routes (``/v1/local/*``: ingest and export *paths on this
  machine*). Only a process that can read this file, the same user on the same machine, can use them.

An advertisement whose process is gone (a ``kill -9``) or whose server does not answer is stale: the CLI
ignores it and opens the store itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from indexer.disk import replacing

TOKEN_HEADER = "X-Colsmol-Local-Token"
#: Sent by colsmol's own CLI (api/cli/client.py): its users get the command line's hints, not the HTTP ones.
CLIENT_HEADER = "X-Colsmol-Client"


@dataclass(frozen=True)
class Advert:
    url: str
    pid: int
    collection: str
    auth: bool
    token: str
    started_at: str


def advert_path(data_dir: Path, collection: str) -> Path:
    return Path(data_dir) / "serve" / f"{collection}.json"


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def publish(data_dir: Path, collection: str, host: str, port: int, auth: bool) -> Advert:
    """Write the advertisement of this process's server; returns it (with its fresh token)."""
    host = connect_host(host)
    url_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    advert = Advert(
        url=f"http://{url_host}:{port}",
        pid=os.getpid(),
        collection=collection,
        auth=auth,
        token=secrets.token_hex(24),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    target = advert_path(data_dir, collection)
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp:  # mode 0600: the advertisement holds the local routes' token
        tmp.write_text(json.dumps(asdict(advert)))
    return advert


def withdraw(data_dir: Path, collection: str, advert: Advert) -> None:
    """Remove the advertisement if it is still this server's."""
    target = advert_path(data_dir, collection)
    current = read(data_dir, collection)
    if current is not None and current.token == advert.token:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


def read(data_dir: Path, collection: str) -> Advert | None:
    """The advertisement as written, or None (missing, unreadable or malformed)."""
    try:
        raw = json.loads(advert_path(data_dir, collection).read_text())
        return Advert(
            url=str(raw["url"]),
            pid=int(raw["pid"]),
            collection=str(raw["collection"]),
            auth=bool(raw["auth"]),
            token=str(raw["token"]),
            started_at=str(raw.get("started_at", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def find(data_dir: Path, collection: str, timeout: float = 1.0) -> Advert | None:
    """A live server for this data directory and collection: its process exists and ``/healthz`` answers."""
    advert = read(data_dir, collection)
    if advert is None or advert.collection != collection or not pid_alive(advert.pid):
        return None
    import httpx

    try:
        ok = httpx.get(f"{advert.url}/healthz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        ok = False
    return advert if ok else None


def find_serving(data_dir: Path, collection: str) -> Advert | None:
    """A live server for this data directory that serves ``collection``: its own advertisement, else any live
    server of the data dir (it serves every collection created there, under /v1/collections/<name>)."""
    advert = find(data_dir, collection)
    if advert is not None:
        return advert
    folder = Path(data_dir) / "serve"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        other = find(data_dir, path.stem)
        if other is not None:
            return other
    return None
