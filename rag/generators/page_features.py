"""Page features of the answer model, computed once per page: what a question over known pages skips.

SmolVLM reads a page as tiles of 512 px through its SigLIP vision tower and pixel-shuffle connector: about
1.5-2.7 s a tile on a 2-core CPU, 10 tiles a Letter page at the 1,536 px page budget. Those features
depend only on the page image and the model, not on the question, so :class:`PageFeatureCache` keeps them:
``(rows, cols)`` of the page's tiling and the connector's output ``(n_tiles * tokens_per_tile, hidden)``.

- In memory: a least-recently-used map bounded in bytes, keyed by the page's content digest.
- On disk (optional, ``path_of``): one file per page, ``path_of(page_id)``, next to the stored page image
  (``indexer.images.PageImageStore.sidecar_path``), so deleting a page deletes its features with it. A file
  is used only when its digest (the page's pixels after fitting) and fingerprint (model, tiling, budget) match
  the page asked for: a page that changed, or another model, recomputes and overwrites it.

Features are kept in float32, the model's CPU dtype: a page costs 1.5 MB (10 tiles x 64 tokens x 576) and a
question over cached pages gets the same tokens as one that computed them.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.disk import replacing

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

FORMAT = "colsmol-page-features/1"


@dataclass(frozen=True)
class PageFeatures:
    """One page as the answer model sees it: its tiling and the connector's output ``(tokens, hidden)``."""

    rows: int
    cols: int
    features: torch.Tensor

    @property
    def nbytes(self) -> int:
        return int(self.features.numel() * self.features.element_size())


def page_digest(image: Image.Image) -> str:
    """A digest of the pixels the model is given (the page after fitting to the budget), mode and size included."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class PageFeatureCache:
    """Per-page features: an LRU in memory (``memory_bytes``), and files through ``path_of`` when given.

    ``fingerprint`` names what the features depend on besides the pixels (model weights, tiling, budget);
    entries with another fingerprint are misses. Thread-safe.
    """

    def __init__(
        self,
        fingerprint: str = "",
        memory_bytes: int = 256 * 2**20,
        path_of: Callable[[str], Path] | None = None,
    ) -> None:
        self.fingerprint = fingerprint
        self.memory_bytes = memory_bytes
        self.path_of = path_of
        self._mem: collections.OrderedDict[str, PageFeatures] = collections.OrderedDict()
        self._mem_used = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0

    def _key(self, digest: str) -> str:
        return f"{self.fingerprint}:{digest}"

    def get(self, digest: str, page_id: str | None = None) -> PageFeatures | None:
        """The features of the page with this digest (from memory, else from ``page_id``'s file), or None."""
        key = self._key(digest)
        with self._lock:
            found = self._mem.get(key)
            if found is not None:
                self._mem.move_to_end(key)
                self.hits += 1
                return found
        found = self._read(digest, page_id)
        with self._lock:
            if found is None:
                self.misses += 1
                return None
            self.disk_hits += 1
        self._remember(key, found)
        return found

    def put(self, digest: str, features: PageFeatures, page_id: str | None = None) -> None:
        """Keep ``features`` in memory, and in ``page_id``'s file when there is a ``path_of``."""
        self._remember(self._key(digest), features)
        if self.path_of is not None and page_id is not None:
            try:
                self._write(self.path_of(page_id), digest, features)
            except OSError as exc:  # a full or read-only disk costs speed, never the answer
                log.warning("could not store page features for %s: %s", page_id, exc)

    def forget(self, page_id: str) -> None:
        """Remove ``page_id``'s file (memory entries are content-keyed: a changed page never matches them)."""
        if self.path_of is not None:
            try:
                self.path_of(page_id).unlink()
            except FileNotFoundError:
                pass

    def clear_memory(self) -> None:
        with self._lock:
            self._mem.clear()
            self._mem_used = 0

    def _remember(self, key: str, features: PageFeatures) -> None:
        if features.nbytes > self.memory_bytes:
            return
        with self._lock:
            old = self._mem.pop(key, None)
            if old is not None:
                self._mem_used -= old.nbytes
            self._mem[key] = features
            self._mem_used += features.nbytes
            while self._mem_used > self.memory_bytes:
                _, evicted = self._mem.popitem(last=False)
                self._mem_used -= evicted.nbytes

    # ------------------------------------------------------------------ files
    def _read(self, digest: str, page_id: str | None) -> PageFeatures | None:
        if self.path_of is None or page_id is None:
            return None
        path = self.path_of(page_id)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if (meta.get("format"), meta.get("fingerprint"), meta.get("digest")) != (
                    FORMAT,
                    self.fingerprint,
                    digest,
                ):
                    return None  # another page image, model or budget: recomputed and overwritten
                return PageFeatures(int(meta["rows"]), int(meta["cols"]), fh.get_tensor("features"))
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is a miss, never an error
            log.warning("ignoring unreadable page features %s: %s", path, exc)
            return None

    def _write(self, path: Path, digest: str, features: PageFeatures) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "digest": digest,
            "rows": str(features.rows),
            "cols": str(features.cols),
        }
        with replacing(path) as tmp:  # readers see the old file or the new one, never half of one
            save_file({"features": features.features.contiguous()}, tmp, metadata=meta)
