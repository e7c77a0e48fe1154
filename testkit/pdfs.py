"""Build small, valid PDFs at test time, with no dependency beyond PIL.

``build_pdf`` writes PDF 1.4 by hand: a catalog, a page tree, one Helvetica font, and per page a
content stream (a coloured frame, a filled box and a line of text) plus, optionally, a full-page
JPEG image (a "scanned" page). Sizes are in points (1/72 inch).

>>> data = build_pdf([PageSpec(*LETTER), PageSpec(*A4_LANDSCAPE)])
>>> data[:8], data.rstrip().endswith(b"%%EOF")
(b'%PDF-1.4', True)
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

LETTER = (612.0, 792.0)
A4 = (595.0, 842.0)
A4_LANDSCAPE = (842.0, 595.0)
LETTER_LANDSCAPE = (792.0, 612.0)


@dataclass(frozen=True)
class PageSpec:
    """One page: ``width`` x ``height`` in points, optional text, optional full-page scan, optional /Rotate."""

    width: float
    height: float
    text: str = "colsmol test page"
    scan: bool = False  # draw a full-page JPEG image, like a scanner would produce
    rotate: int = 0


def scan_image(width_px: int = 850, height_px: int = 1100, seed: int = 0):
    """An RGB PIL image that looks a bit like a scanned page: off-white paper, grey text bars, noise."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width_px, height_px), (245, 242, 235))
    draw = ImageDraw.Draw(image)
    y = height_px // 12
    line = 0
    while y < height_px - height_px // 12:
        length = int(width_px * (0.55 + 0.3 * (((seed + line) * 37) % 10) / 10))
        draw.rectangle([width_px // 10, y, width_px // 10 + length, y + height_px // 80], fill=(60, 60, 60))
        y += height_px // 30
        line += 1
    noise = Image.effect_noise((width_px, height_px), 12).convert("RGB")
    return Image.blend(image, noise, 0.08)


def _jpeg_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=70)
    return buf.getvalue()


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def build_pdf(pages: list[PageSpec]) -> bytes:
    """The bytes of a valid PDF with ``pages`` (may be empty: a zero-page PDF)."""
    objects: list[bytes] = []  # object i+1

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled in below
    pages_obj = add(b"")
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    kids: list[int] = []
    scan_cache: dict[tuple[int, int], tuple[int, int, bytes]] = {}
    for number, spec in enumerate(pages, start=1):
        w, h = spec.width, spec.height
        ops = [
            b"q 0.1 0.3 0.8 RG 4 w %.2f %.2f %.2f %.2f re S Q" % (10, 10, w - 20, h - 20),
            b"q 0.9 0.5 0.1 rg %.2f %.2f %.2f %.2f re f Q" % (w * 0.1, h * 0.6, w * 0.5, h * 0.2),
        ]
        resources = b"/Font << /F1 %d 0 R >>" % font
        if spec.scan:
            px = (max(1, int(w * 100 / 72)), max(1, int(h * 100 / 72)))  # a 100 dpi scan
            if px not in scan_cache:
                jpeg = _jpeg_bytes(scan_image(*px, seed=number))
                scan_cache[px] = (*px, jpeg)
            pw, ph, jpeg = scan_cache[px]
            image_obj = add(
                b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
                b"/BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\nstream\n"
                % (pw, ph, len(jpeg))
                + jpeg
                + b"\nendstream"
            )
            resources += b" /XObject << /Im1 %d 0 R >>" % image_obj
            ops.insert(0, b"q %.2f 0 0 %.2f 0 0 cm /Im1 Do Q" % (w, h))
        if spec.text:
            size = max(6.0, min(w, h) / 25)
            text = _escape(f"{spec.text} {number}").encode("latin-1", "replace")
            ops.append(b"BT /F1 %.1f Tf %.2f %.2f Td (%s) Tj ET" % (size, w * 0.1, h * 0.85, text))
        content = b"\n".join(ops)
        stream = add(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        rotate = b" /Rotate %d" % spec.rotate if spec.rotate else b""
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.2f %.2f] /Resources << %s >> /Contents %d 0 R%s >>"
                % (pages_obj, w, h, resources, stream, rotate)
            )
        )
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj
    kid_refs = b" ".join(b"%d 0 R" % k for k in kids)
    objects[pages_obj - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kid_refs, len(kids))

    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, xref))
    return out.getvalue()


def write_pdf(path: str | Path, pages: list[PageSpec]) -> Path:
    """Write ``build_pdf(pages)`` to ``path`` and return it."""
    path = Path(path)
    path.write_bytes(build_pdf(pages))
    return path


def mixed_pages() -> list[PageSpec]:
    """Letter, A4, A4 landscape, a scanned Letter page, and a Letter page with /Rotate 90."""
    return [
        PageSpec(*LETTER, text="letter portrait"),
        PageSpec(*A4, text="a4 portrait"),
        PageSpec(*A4_LANDSCAPE, text="a4 landscape"),
        PageSpec(*LETTER, text="", scan=True),
        PageSpec(*LETTER, text="rotated", rotate=90),
    ]
