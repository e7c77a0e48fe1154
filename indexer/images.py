"""Compressed page images on disk, keyed by point id, so answering never needs the original file.

Answering and display read pages from here, never from the original file, which may have moved.

Layout: ``root / id[:2] / f"{id}.webp"`` (full page, WebP quality 85) and
``root / id[:2] / f"{id}.thumb.webp"`` (longest side 256 px). Two hex characters of a uuid give
256 subfolders, so 1M pages make about 4,000 files per folder. Every write goes to a temporary
file in ``root / ".tmp"`` (same file system) and is renamed into place with ``os.replace``: a reader
sees the old image or the new one, never half of one. A writer killed mid-write leaves its temporary
file there; :meth:`PageImageStore.remove_stale_temporaries` (run when an ingest starts) removes those.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

from indexer.disk import replacing

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

Size = Literal["full", "thumb"]
SIZES: tuple[Size, ...] = ("full", "thumb")
THUMB_SIZE = 256
QUALITY = 85
# libwebp effort 0 (of 6): 40 ms for a 150 dpi Letter page against 170 ms at 4, files ~30% larger.
# Pages are saved on the ingest path for every page, so speed matters more than the last bytes.
WEBP_METHOD = 0
_WEBP_MAX_SIDE = 16_383  # the WebP format's limit
TMP_DIR = ".tmp"
STALE_TMP_S = 3600.0
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,127}$")
#: Files other stages keep beside a page image, ``<id>.<name>``, removed with it: the answer model's page
#: features (``rag.generators.page_features``).
SIDECARS = ("features.safetensors",)


class PageImageStore:
    """Page images, saved compressed with a thumbnail, under ``root``.

    >>> import tempfile; from PIL import Image
    >>> store = PageImageStore(Path(tempfile.mkdtemp()))
    >>> _ = store.save("ab12", Image.new("RGB", (850, 1100), "white"))
    >>> store.load("ab12", "thumb").size
    (198, 256)
    """

    def __init__(self, root: Path, quality: int = QUALITY, thumb_size: int = THUMB_SIZE) -> None:
        self.root = Path(root)
        self.quality = quality
        self.thumb_size = thumb_size

    @staticmethod
    def relative_path(point_id: str, size: Size = "full") -> PurePosixPath:
        """The image's path under the root, ``ab/<id>.webp`` (also the layout of an export's ``images/``)."""
        point_id = str(point_id)
        if not _ID.match(point_id):
            raise ValueError(f"invalid point id for a page image: {point_id!r}")
        if size not in ("full", "thumb"):
            raise ValueError(f"size must be 'full' or 'thumb', got {size!r}")
        suffix = ".webp" if size == "full" else ".thumb.webp"
        return PurePosixPath(point_id[:2].lower(), f"{point_id}{suffix}")

    def path(self, point_id: str, size: Size = "full") -> Path:
        """Where the image of ``point_id`` lives (whether or not it exists)."""
        return self.root / self.relative_path(point_id, size)

    def sidecar_path(self, point_id: str, name: str) -> Path:
        """Where a file derived from the page (one of ``SIDECARS``) lives, beside its image; deleted with it."""
        if name not in SIDECARS:
            raise ValueError(f"unknown page sidecar {name!r}; known: {', '.join(SIDECARS)}")
        return self.path(point_id).with_name(f"{point_id}.{name}")

    def save(self, point_id: str, image: Image.Image) -> Path:
        """Store ``image`` (any mode; saved as RGB) and its thumbnail; return the full image's path."""
        full = image if image.mode == "RGB" else image.convert("RGB")
        if max(full.size) > _WEBP_MAX_SIDE:
            full = full.copy()
            full.thumbnail((_WEBP_MAX_SIDE, _WEBP_MAX_SIDE))
        thumb = full.copy()
        thumb.thumbnail((self.thumb_size, self.thumb_size))
        target = self.path(point_id, "full")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Thumbnail first: once the full image exists, both do.
        self._write(self.path(point_id, "thumb"), thumb)
        self._write(target, full)
        return target

    @property
    def tmp_dir(self) -> Path:
        return self.root / TMP_DIR

    def _write(self, target: Path, image: Image.Image) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        with replacing(target, tmp_dir=self.tmp_dir) as tmp:
            image.save(tmp, format="WEBP", quality=self.quality, method=WEBP_METHOD)

    def remove_stale_temporaries(self, older_than_s: float = STALE_TMP_S) -> int:
        """Delete temporary files left by killed writers; returns how many. Files younger than ``older_than_s``
        may belong to a live writer in another process (several processes may share a data dir with the
        Qdrant server backend), so they stay."""
        removed = 0
        cutoff = time.time() - older_than_s
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.name.endswith(".tmp") and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
        if removed:
            logger.info("removed %d temporary page images left by an interrupted run", removed)
        return removed

    def load(self, point_id: str, size: Size = "full") -> Image.Image:
        """The stored image as an RGB PIL image. Raises ``FileNotFoundError`` if absent."""
        from PIL import Image

        with Image.open(self.path(point_id, size)) as img:
            return img.convert("RGB")

    def exists(self, point_id: str, size: Size = "full") -> bool:
        return self.path(point_id, size).is_file()

    def delete(self, point_ids: Iterable[str]) -> int:
        """Remove the images of these points and their sidecars (missing ones are skipped); return how many
        pages had an image."""
        removed = 0
        for pid in point_ids:
            found = False
            for size in ("full", "thumb"):
                try:
                    self.path(pid, size).unlink()
                    found = True
                except FileNotFoundError:
                    pass
            for name in SIDECARS:
                try:
                    self.sidecar_path(pid, name).unlink()
                except FileNotFoundError:
                    pass
            removed += found
        return removed

    def __repr__(self) -> str:
        return f"PageImageStore({str(self.root)!r})"
