"""Image files as pages: PNG, JPEG, WebP and TIFF.

Every frame of a multi-page TIFF is one page (scanners write multi-page documents that way). An animated
PNG or WebP is an animation, not a document: only its first frame becomes a page.

Images keep their own pixel size (``dpi`` does not apply); a frame larger than ``max_pixels`` is
shrunk to fit, JPEGs already while decoding (``Image.draft``, DCT scaling by 1/2, 1/4 or 1/8).
Decompression bombs are refused: PIL refuses to open an image above ``2 * Image.MAX_IMAGE_PIXELS``
(about 179 MP by default), and we apply the same limit to the pixels each frame would decode.
Transparent images are flattened onto white, and EXIF orientation (phone photos) is applied.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indexer.errors import DocumentError
from indexer.render.base import DEFAULT_MAX_PIXELS, FileKind, fit_size
from indexer.types import RenderedPage

logger = logging.getLogger(__name__)

_KIND_NAME = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP", "tiff": "TIFF"}


def max_decode_pixels() -> int | None:
    """The hard limit on pixels decoded for one frame: PIL's bomb error threshold, or None if disabled."""
    from PIL import Image

    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


def image_page_count(path: str | Path, kind: FileKind) -> int:
    """Number of pages of an image file (frames of a TIFF, else 1), reading headers only."""
    im = _open(Path(path), kind)
    try:
        return _page_count(im, Path(path), kind)
    finally:
        im.close()


def _page_count(im: Any, path: Path, kind: FileKind) -> int:
    if kind != "tiff":
        return 1
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except Exception:  # noqa: BLE001 - counting TIFF frames walks the IFD chain, which may be broken (any error)
        raise DocumentError(str(path), f"corrupt {_KIND_NAME[kind]} image (cannot count its frames)") from None


def iter_image_pages(path: str | Path, kind: FileKind, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[RenderedPage]:
    """Open the image now (raising DocumentError at once) and return a lazy iterator over its frames as RGB pages."""
    path = Path(path)
    im = _open(path, kind)
    try:
        n = _page_count(im, path, kind)
    except BaseException:
        im.close()
        raise
    return _frames(im, path, kind, n, max_pixels)


def _open(path: Path, kind: FileKind) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path, formats=[_KIND_NAME[kind].upper()])
    except Image.DecompressionBombError as e:
        raise DocumentError(str(path), f"page too large ({e})") from None
    except PermissionError:
        raise DocumentError(str(path), "unreadable: permission denied") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError, struct.error, EOFError):
        raise DocumentError(str(path), f"corrupt {_KIND_NAME[kind]} image (cannot read its header)") from None
    return im


def _frames(im: Any, path: Path, kind: FileKind, n: int, max_pixels: int) -> Iterator[RenderedPage]:
    try:
        for index in range(n):
            image = _load_frame(im, path, kind, index, max_pixels)
            yield RenderedPage(image=image, page_number=index + 1, page_count=n, width=image.width, height=image.height)
    finally:
        im.close()


def _load_frame(im: Any, path: Path, kind: FileKind, index: int, max_pixels: int) -> Any:
    from PIL import Image, ImageOps

    name = _KIND_NAME[kind]
    try:
        if index:
            im.seek(index)
        width, height = im.size
        if kind == "jpeg" and width * height > max_pixels:
            im.draft("RGB", fit_size(width, height, max_pixels))  # decode at 1/2, 1/4 or 1/8 scale
        limit = max_decode_pixels()
        if limit is not None and im.size[0] * im.size[1] > limit:
            raise DocumentError(
                str(path), f"page too large (page {index + 1} is {width} x {height} px, over {limit} px to decode)"
            )
        im.load()
    except DocumentError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, ValueError, EOFError, struct.error...
        logger.debug("PIL failed on %s frame %d: %r", path, index, e)
        raise DocumentError(str(path), f"corrupt {name} image (page {index + 1} cannot be decoded)") from None
    frame = im
    try:
        if im.getexif().get(0x0112, 1) != 1:  # EXIF Orientation
            frame = ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - a bad EXIF block must not lose the page
        logger.debug("ignoring bad EXIF orientation in %s: %r", path, e)
    frame = _to_rgb(frame)
    if frame.width * frame.height > max_pixels:
        frame = frame.resize(
            fit_size(frame.width, frame.height, max_pixels), Image.Resampling.LANCZOS, reducing_gap=3.0
        )
    # The page must outlive the file: `im` is closed (and its pixels dropped) when the iterator ends.
    return im.copy() if frame is im else frame


def _to_rgb(frame: Any) -> Any:
    """RGB copy of ``frame``; transparency is composited onto white (a page's background)."""
    from PIL import Image

    if frame.mode == "RGB":
        return frame
    has_alpha = frame.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (frame.mode == "P" and "transparency" in frame.info)
    if has_alpha:
        rgba = frame.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if frame.mode.startswith("I;16") or frame.mode in ("I", "F"):
        # 16-bit or float greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        frame = frame.convert("I") if frame.mode != "F" else frame
        lo, hi = frame.getextrema()
        span = (hi - lo) or 1
        frame = frame.point(lambda v: (v - lo) * 255.0 / span).convert("L")
    return frame.convert("RGB")
