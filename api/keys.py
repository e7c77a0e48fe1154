"""API keys scoped to one collection and a role, and who a request's key makes it (:class:`Principal`).

``colsmol keys create --collection NAME --role read|write|admin`` prints a key once. The store keeps only
``HMAC-SHA256(server secret, key)``: the secret (32 random bytes) is ``DATA_DIR/keys.secret``, mode 0600, made on the
first key; the records are ``DATA_DIR/keys.json`` (mode 0600, replaced atomically, writers serialised by a lock
file). A stolen ``keys.json`` without the secret yields nothing to try offline. Keys are compared in constant time.

A key reads ``csk_<id>_<secret>``: the id finds the record (listed and revoked by id), the rest is checked.

Roles: ``read`` searches, answers, explains and reads documents and page images; ``write`` also ingests and
deletes documents; ``admin`` also deletes its collection and manages its keys. ``COLSMOL_API_KEY`` is the global
admin: every collection, creating collections, any key. With neither that key nor any scoped key the server is
open, as a single-user colsmol always was; the first scoped key closes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from indexer.disk import replacing
from indexer.errors import InvalidRequest, NotFound

Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = ("read", "write", "admin")
PREFIX = "csk_"


@dataclass(frozen=True)
class Principal:
    """Who a request is: ``collection`` None means every collection (the global admin key, or an open server)."""

    role: Role
    collection: str | None = None
    key_id: str | None = None

    def sees(self, collection: str) -> bool:
        return self.collection is None or self.collection == collection

    def may(self, role: Role, collection: str | None) -> bool:
        """Whether this principal holds ``role`` on ``collection`` (None: on the whole server)."""
        if ROLES.index(self.role) < ROLES.index(role):
            return False
        return self.collection is None or self.collection == collection


#: Everyone, on a server without keys; and the holder of ``COLSMOL_API_KEY``.
GLOBAL_ADMIN = Principal("admin")


@dataclass(frozen=True)
class KeyRecord:
    """A key as listed: never its secret."""

    id: str
    collection: str
    role: Role
    created_at: str
    digest: str = ""

    def public(self) -> dict[str, str]:
        return {"id": self.id, "collection": self.collection, "role": self.role, "created_at": self.created_at}


class KeyStore:
    """The scoped keys of one data directory (see the module docstring). Safe across threads and processes:
    the CLI may create or revoke keys while the server runs; the server sees them on the next request."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "keys.json"
        self.secret_path = self.data_dir / "keys.secret"
        self._lock = threading.Lock()
        self._cache: tuple[int, dict[str, KeyRecord]] | None = None
        self._secret: bytes | None = None

    # ------------------------------------------------------------------ reading
    def _records(self) -> dict[str, KeyRecord]:
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
        try:
            raw = json.loads(self.path.read_text())
            records = {r["id"]: KeyRecord(**r) for r in raw.get("keys", [])}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(f"the key store {self.path} is unreadable ({exc}); restore it or remove it") from None
        with self._lock:
            self._cache = (stamp, records)
        return records

    def any(self) -> bool:
        """Whether any scoped key exists (then every request needs a key)."""
        return bool(self._records())

    def list(self, collection: str | None = None) -> list[KeyRecord]:
        keys = sorted(self._records().values(), key=lambda r: (r.collection, r.created_at, r.id))
        return [k for k in keys if collection is None or k.collection == collection]

    def get(self, key_id: str) -> KeyRecord:
        record = self._records().get(key_id)
        if record is None:
            raise NotFound(f"no key with id {key_id[:40]!r}", hints={"cli": "`colsmol keys list` lists them"})
        return record

    def verify(self, token: str) -> KeyRecord | None:
        """The record of a presented key, or None when it is not a live key."""
        if not token.startswith(PREFIX):
            return None
        key_id, _, _ = token[len(PREFIX) :].partition("_")
        record = self._records().get(key_id)
        if record is None:  # ids are not secret: only the part after them is
            return None
        return record if hmac.compare_digest(self._digest(token), record.digest) else None

    # ------------------------------------------------------------------ writing
    def create(self, collection: str, role: str) -> tuple[KeyRecord, str]:
        """A new key: its record and the key itself (shown once, never stored)."""
        if role not in ROLES:
            raise InvalidRequest(f"role {role!r} is not one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(
            id=key_id,
            collection=collection,
            role=role,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            digest=self._digest(token),
        )
        with self._writing() as records:
            records[key_id] = record
        return record, token

    def revoke(self, key_id: str) -> KeyRecord:
        with self._writing() as records:
            record = records.pop(key_id, None)
        if record is None:
            raise NotFound(f"no key with id {key_id[:40]!r}", hints={"cli": "`colsmol keys list` lists them"})
        return record

    def revoke_collection(self, collection: str) -> int:
        """Revoke every key of a collection (it is being deleted); how many there were."""
        with self._writing() as records:
            gone = [k for k, r in records.items() if r.collection == collection]
            for k in gone:
                del records[k]
        return len(gone)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, KeyRecord]]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "keys.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                self._cache = None
            records = dict(self._records())
            yield records
            with replacing(self.path) as tmp:
                tmp.write_text(json.dumps({"keys": [asdict(r) for r in records.values()]}, indent=1))
        finally:
            os.close(fd)

    def _digest(self, token: str) -> str:
        return hmac.new(self._server_secret(), token.encode(), hashlib.sha256).hexdigest()

    def _server_secret(self) -> bytes:
        if self._secret is not None:
            return self._secret
        try:
            secret = self.secret_path.read_bytes()
        except FileNotFoundError:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it just now
                secret = self.secret_path.read_bytes()
            else:
                secret = secrets.token_bytes(32)
                with os.fdopen(fd, "wb") as f:
                    f.write(secret)
        if len(secret) < 32:
            raise InvalidRequest(f"the key secret {self.secret_path} is damaged; restore it (keys made with it stop "
                                 "working without it)")
        self._secret = secret
        return secret
