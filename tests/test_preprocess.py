"""Tensor page preprocessing against colpali-engine's PIL processor: tiles, tokens, pixels, embeddings.

Pixel tolerance of the float32 (CPU) path: each resize pass sums 8-bit values times 22-bit weights
in float32, about 1e-7 relative error, so a value whose exact sum lies that close to a rounding
boundary comes out one 8-bit level off, and such a pixel can move a neighbour in the next pass.
We allow two levels (4/255 after normalization) on at most 0.1% of the values; the float64 path
(the one CUDA uses) must be bit-identical, which is what proves the arithmetic is Pillow's.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.errors import InvalidRequest
from indexer.models.encoder import ColSmolEncoder
from indexer.models.preprocess import TensorPreprocessor, tile_layout, view_count
from indexer.models.resample import resize, vertical_first
from indexer.render import iter_file_pages
from testkit.checkpoints import LONGEST_EDGE, TILE, build_processor, build_tokenizer
from testkit.pdfs import A4, A4_LANDSCAPE, LETTER, LETTER_LANDSCAPE, PageSpec, write_pdf

ROOT = Path(__file__).parents[1]
REAL_PDFS = [
    ROOT / "tests/fixtures/fpdf2_report.pdf",  # Letter, A4 landscape
    ROOT / "tests/fixtures/pdfium_created.pdf",  # Letter, 875 x 1240
    ROOT / "tests/fixtures/pillow_scans.pdf",  # scanned (JPEG) Letter pages
    ROOT / "samples/cargo-bike-battery-safety.pdf",  # A4 portrait
]
LEVEL = 2 / 255  # one 8-bit level after rescale by 1/255 and normalize with std 0.5
# width x height: a pixel, a 200:1 strip, its transpose, exactly tile-sized (tiny and full geometry),
# odd sizes, and one whose global view Pillow resizes vertically first (1024 x 2048 -> 512 x 512).
ODD_SIZES = [(1, 1), (10000, 50), (50, 10000), (TILE, TILE), (512, 512), (33, 17), (601, 401), (700, 1500)]


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + width * 7 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def real_pages(tmp_path_factory) -> list[Image.Image]:
    """Pages rendered by the production renderer at 150 dpi: repo PDFs plus Letter/A4 in both orientations."""
    made = write_pdf(
        tmp_path_factory.mktemp("pdfs") / "sizes.pdf",
        [PageSpec(*size, text="tiles") for size in (LETTER, A4, A4_LANDSCAPE, LETTER_LANDSCAPE)],
    )
    return [p.image for f in [*REAL_PDFS, made] for p in iter_file_pages(f, dpi=150)]


@pytest.fixture(scope="module")
def tiny_processor(tiny_models):
    from colpali_engine.models import ColIdefics3Processor

    return ColIdefics3Processor.from_pretrained(tiny_models["encoder"])


@pytest.fixture(scope="module")
def full_processor():
    """The real geometry (2048 px longest edge, 512 px tiles, 64 tokens a tile), without model weights."""
    from colpali_engine.models import ColIdefics3Processor

    return build_processor(build_tokenizer(), ColIdefics3Processor, longest_edge=2048, tile=512, image_seq_len=64)


def assert_same_batch(ours, ref, exact: bool = False) -> None:
    assert set(ours.keys()) == set(ref.keys())
    for key in ref:
        assert ours[key].shape == ref[key].shape, key
        # The tensor path's pixel mask is bool (the model only tests it for nonzero; 8x less memory than int64).
        mask_ok = key == "pixel_attention_mask" and ours[key].dtype == torch.bool
        assert ours[key].dtype == ref[key].dtype or mask_ok, key
        if key != "pixel_values" or exact:
            assert torch.equal(ours[key], ref[key]), key
    diff = (ours["pixel_values"] - ref["pixel_values"]).abs()
    assert diff.max() <= 2 * LEVEL + 1e-6
    assert (diff > 0).float().mean() <= 1e-3


# ---------------------------------------------------------------------------------------- arithmetic
def test_resize_is_pillow_bit_for_bit_in_float64() -> None:
    rng = np.random.default_rng(0)
    for trial in range(80):
        w, h = (int(v) for v in rng.integers(1, 120, 2))
        ow, oh = (int(v) for v in rng.integers(1, 160, 2))
        if trial % 3 == 0:  # on and around the boundary where Pillow 13 switches the pass order
            ow = int(rng.integers(1, w + 1))
            oh = max(1, h - 2 * (w - ow) + int(rng.integers(-1, 2)))
        resample = int(rng.choice([1, 1, 2, 3, 4, 5]))  # LANCZOS mostly, and Pillow's other filters
        img = _noise(w, h, trial)
        theirs = np.asarray(img.resize((ow, oh), resample))
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        ours = resize(x.double(), oh, ow, resample).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(ours, theirs), (w, h, ow, oh, resample)
        single = resize(x.float(), oh, ow, resample).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.abs(single.astype(int) - theirs).max() <= 1


def test_pass_order_rule_is_pillows() -> None:
    # Both orders give different pixels here, so the test above would catch a wrong rule; this
    # one documents it: vertical first when the height loses more than twice the width's pixels.
    assert vertical_first(60, 60, 58, 2) and not vertical_first(60, 60, 30, 2)
    assert vertical_first(1024, 2048, 512, 512) and not vertical_first(2048, 2048, 512, 512)
    assert not vertical_first(1275, 1650, 1582, 2048)  # upscaling height: horizontal first


def test_layout_equals_reference_rows_and_cols(tiny_processor) -> None:
    ip = tiny_processor.image_processor
    rng = np.random.default_rng(1)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 400, (150, 2))] + ODD_SIZES
    for w, h in sizes:
        ref = ip(images=[[_noise(w, h)]], return_row_col_info=True, return_tensors="pt")
        expected = (ref["rows"][0][0], ref["cols"][0][0])
        assert tile_layout(h, w, LONGEST_EDGE, TILE) == expected, (w, h)
        assert view_count(h, w, ip) == int(ref["pixel_attention_mask"][0].flatten(1).any(1).sum())


# ---------------------------------------------------------------------------------------- batches
@pytest.mark.parametrize("geometry", ["tiny", "full"])
def test_real_pdf_pages_equal_the_reference(geometry, real_pages, tiny_processor, full_processor) -> None:
    proc = tiny_processor if geometry == "tiny" else full_processor
    ours = TensorPreprocessor(proc)
    pages = real_pages if geometry == "tiny" else real_pages[::2]  # the full size takes ~0.5 s a page
    for page in pages:
        assert_same_batch(ours([page]), proc.process_images([page]))


@pytest.mark.parametrize("geometry", ["tiny", "full"])
def test_odd_sizes_equal_the_reference(geometry, tiny_processor, full_processor) -> None:
    proc = tiny_processor if geometry == "tiny" else full_processor
    ours = TensorPreprocessor(proc)
    for w, h in ODD_SIZES:
        img = _noise(w, h)
        assert_same_batch(ours([img]), proc.process_images([img]))


def test_fast_path_keeps_tiles_and_tokens_and_stays_close(real_pages, full_processor) -> None:
    """COLSMOL_PREPROCESS=fast: one bicubic resize a view, so pixels only close; layout and tokens identical."""
    fast = TensorPreprocessor(full_processor, exact=False)
    pages = [*real_pages[:3], _noise(700, 1500), _noise(10000, 50), _noise(1, 1)]
    for i, page in enumerate(pages):
        ours, ref = fast([page]), full_processor.process_images([page])
        for key in ("input_ids", "attention_mask", "pixel_attention_mask"):
            assert torch.equal(ours[key], ref[key]), key
        assert ours["pixel_values"].shape == ref["pixel_values"].shape
        if i < 3:  # rendered pages (on pixel noise the two filters differ a lot, as they should)
            diff = (ours["pixel_values"] - ref["pixel_values"]).abs()
            assert float(diff.mean()) < 2 * LEVEL, "within two 8-bit levels on average"


def test_float64_is_bit_identical(real_pages, full_processor) -> None:
    ours = TensorPreprocessor(full_processor, dtype=torch.float64)
    for img in [real_pages[1], _noise(700, 1500), _noise(10000, 50)]:  # A4 landscape, VH global, strip
        assert_same_batch(ours([img]), full_processor.process_images([img]), exact=True)


def test_mixed_batch_pads_like_the_reference(real_pages, tiny_processor) -> None:
    batch = [real_pages[0], _noise(1, 1), _noise(10000, 50), _noise(TILE, TILE), real_pages[1], _noise(50, 10000)]
    ours, ref = TensorPreprocessor(tiny_processor)(batch), tiny_processor.process_images(batch)
    views = ref["pixel_attention_mask"].flatten(2).any(2).sum(1)
    assert len(set(views.tolist())) > 1, "the batch must mix tile counts"
    assert (ref["attention_mask"] == 0).any(), "the batch must need token padding"
    assert_same_batch(ours, ref)


@pytest.mark.parametrize("variant", ["one tile a page", "no splitting"])
def test_single_view_geometries_equal_the_reference(variant) -> None:
    """Pages that become one view: the longest edge fits one tile, or splitting is off."""
    from colpali_engine.models import ColIdefics3Processor

    proc = build_processor(build_tokenizer(), ColIdefics3Processor, longest_edge=TILE if variant[0] == "o" else 96)
    proc.image_processor.do_image_splitting = variant[0] == "o"
    ours = TensorPreprocessor(proc)
    batch = [_noise(w, h) for w, h in ODD_SIZES]
    assert_same_batch(ours(batch), proc.process_images(batch))
    assert proc.process_images(batch)["pixel_values"].shape[1] == 1


def test_non_rgb_pages_are_converted_like_the_reference(tiny_processor) -> None:
    rgb = _noise(90, 70)
    ours = TensorPreprocessor(tiny_processor)
    for img in (rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P")):
        assert_same_batch(ours([img]), tiny_processor.process_images([img]))


def test_threads_share_one_preprocessor(real_pages, tiny_processor) -> None:
    ours = TensorPreprocessor(tiny_processor)
    pages = real_pages[:6]
    expected = [ours([p])["pixel_values"] for p in pages]
    results: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        for _ in range(3):
            results[i] = ours([pages[i]])["pixel_values"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(pages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, e in enumerate(expected):
        assert torch.equal(results[i], e)


# ---------------------------------------------------------------------------------------- encoder
def test_embeddings_through_both_paths_agree(tiny_models, real_pages) -> None:
    tensor = ColSmolEncoder(tiny_models["encoder"], device="cpu", preprocess="tensor")
    reference = ColSmolEncoder(tiny_models["encoder"], device="cpu", preprocess="reference")
    pages = [*real_pages[:4], _noise(10000, 50), _noise(1, 1)]
    for a, b in zip(tensor.embed_pages(pages), reference.embed_pages(pages), strict=True):
        assert a.shape == b.shape
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() > 0.999


def test_encoder_options(tiny_models, real_pages) -> None:
    reference = ColSmolEncoder(tiny_models["encoder"], device="cpu", preprocess="reference")
    page = real_pages[0]
    batch = reference.preprocess_pages([page])
    assert_same_batch(batch, reference.processor.process_images([page]), exact=True)
    tensor = ColSmolEncoder(tiny_models["encoder"], device="cpu")
    assert tensor.preprocess == "tensor"
    assert_same_batch(tensor.preprocess_pages([page]), batch)
    for w, h in [*ODD_SIZES, (1275, 1650), (1754, 1241)]:
        assert tensor.tile_count(_noise(w, h)) == view_count(h, w, reference.processor.image_processor)
    with pytest.raises(InvalidRequest, match="preprocess"):
        ColSmolEncoder(tiny_models["encoder"], preprocess="pil")  # type: ignore[arg-type]
    fast = ColSmolEncoder(tiny_models["encoder"], device="cpu", preprocess="fast")
    for key in ("input_ids", "attention_mask", "pixel_attention_mask"):
        assert torch.equal(fast.preprocess_pages([page])[key], batch[key]), key


def test_setting_reaches_the_encoder(tiny_models, tmp_path, monkeypatch) -> None:
    from rag.pipeline import RAGPipeline
    from tests.conftest import tiny_settings

    monkeypatch.setenv("COLSMOL_PREPROCESS", "reference")
    settings = tiny_settings(tiny_models, tmp_path / "data")
    assert settings.preprocess == "reference"
    with RAGPipeline.from_settings(settings) as rag:
        assert rag.encoder.preprocess == "reference"
