"""Rendering with real components: PDFs built here and committed fixtures, both renderers, images, walking."""

from __future__ import annotations

import gc
import inspect
import io
import os
import shutil
import struct
import weakref
import zlib
from pathlib import Path

import pytest
from PIL import Image

from indexer.errors import ConfigError, DocumentError
from indexer.render import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    PdfiumRenderer,
    PdfRenderer,
    PopplerRenderer,
    file_page_count,
    fit_size,
    iter_file_pages,
    make_renderer,
    render_scale,
    walk_inputs,
)
from testkit.pdfs import A4, A4_LANDSCAPE, LETTER, PageSpec, mixed_pages, write_pdf

FIXTURES = Path(__file__).parent / "fixtures"
HAVE_POPPLER = shutil.which("pdftoppm") is not None and shutil.which("pdfinfo") is not None
needs_poppler = pytest.mark.skipif(not HAVE_POPPLER, reason="poppler-utils (pdftoppm, pdfinfo) is not installed")
RENDERERS = ["pdfium", pytest.param("poppler", marks=needs_poppler)]


def close_to(actual: tuple[int, int], expected: tuple[int, int], tol: int = 1) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


@pytest.fixture(scope="module")
def mixed_pdf(tmp_path_factory) -> Path:
    return write_pdf(tmp_path_factory.mktemp("pdf") / "mixed.pdf", mixed_pages())


# -- PDFs built at test time -------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERERS)
def test_mixed_pdf_pages_numbers_and_sizes(name, mixed_pdf):
    renderer = make_renderer(name)
    assert isinstance(renderer, PdfRenderer) and renderer.name == name
    assert renderer.page_count(mixed_pdf) == 5
    pages = list(renderer.render(mixed_pdf, dpi=150))
    assert [p.page_number for p in pages] == [1, 2, 3, 4, 5]
    assert {p.page_count for p in pages} == {5}
    sizes = [(p.width, p.height) for p in pages]
    assert all((p.image.width, p.image.height) == (p.width, p.height) and p.image.mode == "RGB" for p in pages)
    assert close_to(sizes[0], (1275, 1650))  # Letter at 150 dpi
    assert close_to(sizes[1], (1240, 1754))  # A4
    assert close_to(sizes[2], (1754, 1240))  # A4 landscape
    assert close_to(sizes[3], (1275, 1650))  # scanned-style full-page JPEG
    assert close_to(sizes[4], (1650, 1275))  # Letter with /Rotate 90
    # The scanned page is mostly off-white paper with dark text bars, not blank.
    scan = pages[3].image.convert("L")
    lo, hi = scan.getextrema()
    assert hi > 200 and lo < 100


@pytest.mark.parametrize("dpi", [72, 100, 300])
def test_size_is_proportional_to_dpi(tmp_path, dpi):
    pdf = write_pdf(tmp_path / "letter.pdf", [PageSpec(*LETTER)])
    (page,) = PdfiumRenderer().render(pdf, dpi=dpi)
    assert close_to((page.width, page.height), (round(8.5 * dpi), round(11 * dpi)))


@needs_poppler
def test_both_renderers_agree(mixed_pdf):
    a = list(PdfiumRenderer().render(mixed_pdf, dpi=100))
    b = list(PopplerRenderer(chunk_pages=2).render(mixed_pdf, dpi=100))
    assert len(a) == len(b) == 5
    for pa, pb in zip(a, b, strict=True):
        assert pa.page_number == pb.page_number
        assert close_to((pa.width, pa.height), (pb.width, pb.height), tol=2)


@pytest.mark.parametrize("name", RENDERERS)
def test_huge_page_is_scaled_under_budget_before_rendering(tmp_path, name):
    # 14400 x 14400 pt (200 x 200 inches) would be 30000 x 30000 px (2.7 GB) at 150 dpi.
    pdf = write_pdf(tmp_path / "huge.pdf", [PageSpec(14400, 14400), PageSpec(*LETTER)])
    pages = list(make_renderer(name).render(pdf, dpi=150))
    huge, letter = pages
    assert huge.width * huge.height <= DEFAULT_MAX_PIXELS
    assert close_to((huge.width, huge.height), (4096, 4096), tol=3)
    assert close_to((letter.width, letter.height), (1275, 1650))  # the budget is per page


@pytest.mark.parametrize("name", RENDERERS)
def test_small_budget_keeps_aspect_ratio(tmp_path, name):
    pdf = write_pdf(tmp_path / "a4l.pdf", [PageSpec(*A4_LANDSCAPE)])
    (page,) = make_renderer(name).render(pdf, dpi=300, max_pixels=500_000)
    assert page.width * page.height <= 500_000
    assert abs(page.width / page.height - 842 / 595) < 0.01


def test_render_scale_and_fit_size():
    assert render_scale(612, 792, 150, DEFAULT_MAX_PIXELS) == pytest.approx(150 / 72)
    for w, h, budget in [(14400, 14400, 16_777_216), (14400, 10, 1000), (3, 5000, 7777), (612, 792, 1)]:
        s = render_scale(w, h, 150, budget)
        assert -(-w * s // 1) * -(-h * s // 1) <= budget
    assert fit_size(30000, 30000, 16_777_216) == (4096, 4096)
    w, h = fit_size(45000, 100, 100_000)
    assert w * h <= 100_000 and h >= 1


@pytest.mark.parametrize("name", RENDERERS)
def test_zero_page_pdf(tmp_path, name):
    pdf = write_pdf(tmp_path / "none.pdf", [])
    with pytest.raises(DocumentError, match="no pages"):
        make_renderer(name).render(pdf)
    with pytest.raises(DocumentError, match="no pages"):
        make_renderer(name).page_count(pdf)


# -- laziness ----------------------------------------------------------------------------------


def test_pages_are_lazy_and_not_retained(tmp_path):
    pdf = write_pdf(tmp_path / "long.pdf", [PageSpec(*LETTER)] * 200)
    assert PdfiumRenderer().page_count(pdf) == 200  # cheap: no rendering
    gen = PdfiumRenderer().render(pdf, dpi=50)
    assert inspect.isgenerator(gen)
    assert inspect.getgeneratorstate(gen) == inspect.GEN_CREATED  # nothing rendered yet
    first = next(gen)
    assert (first.page_number, first.page_count) == (1, 200)
    assert inspect.getgeneratorstate(gen) == inspect.GEN_SUSPENDED  # paused after exactly one page
    ref = weakref.ref(first.image)
    del first
    second = next(gen)
    gc.collect()
    assert ref() is None, "the generator must not keep earlier pages alive"
    assert second.page_number == 2
    gen.close()  # runs the finally: the document is closed
    assert inspect.getgeneratorstate(gen) == inspect.GEN_CLOSED


@needs_poppler
def test_poppler_renders_in_bounded_chunks(tmp_path):
    pdf = write_pdf(tmp_path / "long.pdf", [PageSpec(*LETTER)] * 30)
    gen = PopplerRenderer(chunk_pages=4).render(pdf, dpi=20)
    first = next(gen)
    assert (first.page_number, first.page_count) == (1, 30)
    gen.close()


# -- committed fixtures ------------------------------------------------------------------------

GOOD_FIXTURES = {
    "fpdf2_report.pdf": [(1275, 1650), (1754, 1240), (1275, 1650)],
    "pillow_scans.pdf": [(1275, 1650), (1275, 1650)],
    "pdfium_created.pdf": [(1275, 1650), (875, 1240)],
    "owner_password_only.pdf": [(1275, 1650), (1754, 1240), (1275, 1650)],
}
BAD_FIXTURES = {
    "corrupt.pdf": "corrupt PDF",
    "truncated.pdf": "truncated PDF",
    "encrypted_secret.pdf": "encrypted: needs a password",
    "zero_pages.pdf": "no pages",
    "empty.pdf": "empty file",
}


@pytest.mark.parametrize("name", RENDERERS)
@pytest.mark.parametrize("fixture", sorted(GOOD_FIXTURES))
def test_good_fixtures_render(name, fixture):
    path = FIXTURES / fixture
    renderer = make_renderer(name)
    assert file_page_count(path, renderer) == len(GOOD_FIXTURES[fixture])
    pages = list(iter_file_pages(path, renderer, dpi=150))
    assert [p.page_number for p in pages] == list(range(1, len(pages) + 1))
    for page, expected in zip(pages, GOOD_FIXTURES[fixture], strict=True):
        assert close_to((page.width, page.height), expected)


@pytest.mark.parametrize("name", RENDERERS)
@pytest.mark.parametrize("fixture", sorted(BAD_FIXTURES))
def test_bad_fixtures_raise_on_open_with_reason(name, fixture):
    path = FIXTURES / fixture
    renderer = make_renderer(name)
    # Raised by the call itself, before any page is produced.
    with pytest.raises(DocumentError) as info:
        iter_file_pages(path, renderer)
    assert info.value.reason.startswith(BAD_FIXTURES[fixture]), info.value.reason
    assert info.value.path == str(path)
    assert "\n" not in str(info.value)
    with pytest.raises(DocumentError):
        renderer.page_count(path)


@pytest.mark.parametrize("name", RENDERERS)
def test_encrypted_fixture_with_password(name):
    path = FIXTURES / "encrypted_secret.pdf"
    renderer = make_renderer(name)
    assert renderer.page_count(path, password="secret") == 3
    pages = list(iter_file_pages(path, renderer, dpi=72, password="secret"))
    assert [(p.width, p.height) for p in pages][0] == (612, 792)
    with pytest.raises(DocumentError, match="encrypted: wrong password"):
        iter_file_pages(path, renderer, password="nope")


def test_fixtures_stay_small():
    assert sum(p.stat().st_size for p in FIXTURES.iterdir() if p.is_file()) < 1_000_000


# -- images ------------------------------------------------------------------------------------


def save(image: Image.Image, path: Path, fmt: str, **kw) -> Path:
    image.save(path, format=fmt, **kw)
    return path


def test_png_with_alpha_is_flattened_on_white(tmp_path):
    image = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    image.paste((10, 20, 200, 255), (0, 0, 100, 100))
    (page,) = iter_file_pages(save(image, tmp_path / "a.png", "PNG"))
    assert (page.page_number, page.page_count, page.width, page.height) == (1, 1, 300, 200)
    assert page.image.mode == "RGB"
    assert page.image.getpixel((250, 150)) == (255, 255, 255)
    assert page.image.getpixel((50, 50)) == (10, 20, 200)


@pytest.mark.parametrize(
    ("fmt", "suffix", "mode"),
    [
        ("JPEG", ".jpg", "RGB"),
        ("JPEG", ".jpeg", "L"),
        ("WEBP", ".webp", "RGB"),
        ("PNG", ".png", "P"),
        ("PNG", ".png", "I;16"),
    ],
)
def test_single_images_become_rgb_pages(tmp_path, fmt, suffix, mode):
    image = (
        Image.new("RGB", (640, 480), (30, 120, 200)).convert(mode)
        if mode != "I;16"
        else Image.new("I;16", (640, 480), 4000)
    )
    path = save(image, tmp_path / f"img{suffix}", fmt)
    pages = list(iter_file_pages(path))
    assert len(pages) == 1 and pages[0].image.mode == "RGB" and (pages[0].width, pages[0].height) == (640, 480)
    assert file_page_count(path) == 1


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (300, 200), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed, as phones write it
    (page,) = iter_file_pages(save(image, tmp_path / "phone.jpg", "JPEG", exif=exif))
    assert (page.width, page.height) == (200, 300)


def test_multipage_tiff_gives_one_page_per_frame(tmp_path):
    frames = [
        Image.new("RGB", size, color)
        for size, color in [((400, 500), "red"), ((500, 400), "green"), ((300, 300), "blue")]
    ]
    path = tmp_path / "scan.tiff"
    frames[0].save(path, format="TIFF", save_all=True, append_images=frames[1:], compression="tiff_deflate")
    pages = list(iter_file_pages(path))
    assert [(p.page_number, p.page_count, p.width, p.height) for p in pages] == [
        (1, 3, 400, 500),
        (2, 3, 500, 400),
        (3, 3, 300, 300),
    ]
    assert [p.image.getpixel((5, 5)) for p in pages] == [(255, 0, 0), (0, 128, 0), (0, 0, 255)]
    assert file_page_count(path) == 3


def test_tiff_frames_are_lazy(tmp_path):
    frames = [Image.new("L", (200, 200), v) for v in (0, 100, 200)]
    path = tmp_path / "t.tif"
    frames[0].save(path, format="TIFF", save_all=True, append_images=frames[1:])
    gen = iter_file_pages(path)
    assert inspect.getgeneratorstate(gen) == inspect.GEN_CREATED
    first = next(gen)
    ref = weakref.ref(first.image)
    del first
    assert next(gen).page_number == 2
    gc.collect()
    assert ref() is None
    gen.close()


def test_large_images_are_shrunk_to_the_budget(tmp_path):
    jpeg = save(Image.new("RGB", (4000, 3000), (200, 180, 40)), tmp_path / "big.jpg", "JPEG")
    (page,) = iter_file_pages(jpeg, max_pixels=1_000_000)
    assert page.width * page.height <= 1_000_000 and abs(page.width / page.height - 4 / 3) < 0.01
    png = save(Image.new("RGB", (2500, 1000), "white"), tmp_path / "big.png", "PNG")
    (page,) = iter_file_pages(png, max_pixels=1_000_000)
    assert page.width * page.height <= 1_000_000 and abs(page.width / page.height - 2.5) < 0.01


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` with one tiny (invalid) data chunk: a bomb to refuse."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(30000, 30000))
    with pytest.raises(DocumentError, match="page too large"):
        iter_file_pages(path)


def test_truncated_image_is_corrupt(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((300, 300), 50).save(buf, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    gen = iter_file_pages(path)  # the header is fine, so the damage shows when the page is decoded
    with pytest.raises(DocumentError, match="corrupt PNG image"):
        list(gen)


# -- content sniffing and unsupported inputs ---------------------------------------------------


def test_content_wins_over_the_suffix(tmp_path):
    png_named_pdf = save(Image.new("RGB", (120, 80), "white"), tmp_path / "actually_png.pdf", "PNG")
    (page,) = iter_file_pages(png_named_pdf)
    assert (page.width, page.height) == (120, 80)
    pdf_named_png = write_pdf(tmp_path / "actually_pdf.png", [PageSpec(*A4)])
    (page,) = iter_file_pages(pdf_named_png, dpi=72)
    assert (page.width, page.height) == (595, 842)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("notes.txt", b"hello world\n", "unsupported file type"),
        ("doc.docx", b"PK\x03\x04" + b"\0" * 100, "unsupported file type"),
        ("anim.gif", b"GIF89a" + b"\0" * 100, "unsupported file type"),
        ("fake.pdf", b"this is not a pdf at all", "corrupt PDF (no %PDF- header)"),
        ("fake.png", b"this is not a png at all", "corrupt image"),
        ("empty.jpg", b"", "empty file"),
        ("bad.jpg", b"\xff\xd8\xff\xe0" + b"\x13" * 50, "corrupt JPEG image"),
    ],
)
def test_unsupported_and_fake_files_are_rejected(tmp_path, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DocumentError) as info:
        list(iter_file_pages(path))
    assert info.value.reason.startswith(reason), info.value.reason


def test_unreadable_inputs(tmp_path):
    with pytest.raises(DocumentError, match="unreadable: is a directory"):
        iter_file_pages(tmp_path)
    with pytest.raises(DocumentError, match="not found"):
        iter_file_pages(tmp_path / "missing.pdf")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_permission_denied(tmp_path):
    path = write_pdf(tmp_path / "locked.pdf", [PageSpec(*LETTER)])
    path.chmod(0)
    try:
        with pytest.raises(DocumentError, match="unreadable: permission denied"):
            iter_file_pages(path)
    finally:
        path.chmod(0o644)


def test_unknown_renderer_name():
    with pytest.raises(ConfigError, match="unknown renderer"):
        make_renderer("ghostscript")  # type: ignore[arg-type]


# -- walking inputs ----------------------------------------------------------------------------


def test_walk_inputs_recurses_sorts_and_skips(tmp_path):
    root = tmp_path / "docs"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    (root / ".hidden_dir").mkdir()
    for rel in [
        "z.pdf",
        "a/x.PNG",
        "b/deep/y.tiff",
        "b/c.jpg",
        ".hidden.pdf",
        ".hidden_dir/w.pdf",
        "notes.txt",
        "README",
    ]:
        (root / rel).write_bytes(b"x")
    (root / "b" / "loop").symlink_to(root, target_is_directory=True)  # a symlink loop back to the top
    (root / "b" / "self").symlink_to(root / "b", target_is_directory=True)
    (root / "a" / "alias.pdf").symlink_to(root / "z.pdf")  # the same file twice
    (root / "dangling.pdf").symlink_to(root / "nowhere.pdf")

    result = walk_inputs([root, tmp_path / "missing"])
    rel = [p.relative_to(root).as_posix() for p in result.files]
    assert rel == sorted(rel)
    # z.pdf is reached first through the a/alias.pdf symlink (sorted walk order), so that spelling is kept.
    assert rel == ["a/alias.pdf", "a/x.PNG", "b/c.jpg", "b/deep/y.tiff"]
    assert len({p.resolve() for p in result.files}) == len(result.files) == 4
    reasons = {p.name: reason for p, reason in result.skipped}
    assert reasons["notes.txt"].startswith("unsupported suffix")
    assert reasons["README"].startswith("unsupported suffix")
    assert reasons["dangling.pdf"].startswith("broken symlink")  # found in a folder: skipped
    assert dict((p.name, r) for p, r in result.failed) == {"missing": "not found"}  # named: a failure
    assert not any(".hidden" in str(p) for p in result.files)


def test_walk_inputs_special_files_and_unreadable_folders(tmp_path):
    """Named paths that are missing fail; FIFOs and devices (even behind a symlink) are skipped for what they are."""
    root = tmp_path / "docs"
    root.mkdir()
    os.mkfifo(root / "pipe.pdf")
    (root / "zero.pdf").symlink_to("/dev/zero")
    (root / "ok.pdf").write_bytes(b"%PDF-1.4")
    result = walk_inputs([root, root / "pipe.pdf", tmp_path / "gone", tmp_path / "dangling"])
    assert [p.name for p in result.files] == ["ok.pdf"]
    skipped = {(p.name, r) for p, r in result.skipped}
    assert ("pipe.pdf", "not a regular file (FIFO)") in skipped
    assert ("zero.pdf", "not a regular file (character device)") in skipped
    assert [(p.name, r) for p, r in result.failed] == [("gone", "not found"), ("dangling", "not found")]
    if os.geteuid() != 0:  # root reads every folder whatever its mode
        locked = root / "locked"
        locked.mkdir()
        locked.chmod(0)
        try:
            failed = dict((p.name, r) for p, r in walk_inputs([root]).failed)
            assert failed["locked"].startswith("unreadable folder")
        finally:
            locked.chmod(0o700)
    assert walk_inputs([root]) == walk_inputs([root])  # deterministic


def test_walk_inputs_takes_explicit_files(tmp_path):
    pdf = write_pdf(tmp_path / ".explicit_hidden.pdf", [PageSpec(*LETTER)])
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    result = walk_inputs([pdf, other, pdf])
    assert result.files == [pdf]
    assert [(p, r.split()[0]) for p, r in result.skipped] == [(other, "unsupported")]
    assert ".pdf" in SUPPORTED_SUFFIXES and ".tif" in SUPPORTED_SUFFIXES
