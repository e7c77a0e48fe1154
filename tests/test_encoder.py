"""ColSmolEncoder on tiny real checkpoints: reference equivalence, padding, adapters, offline errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.errors import InvalidRequest, ModelUnavailable
from indexer.models.encoder import ColSmolEncoder

# Aspect ratios chosen so Idefics3 splits them into different tile counts (5, 3 and 3 tiles incl. the
# global view), which forces left padding inside one batch.
SIZES = [(85, 110), (100, 20), (15, 100), (20, 30), (100, 100)]
#: Smallest token cosine allowed between colsmol's vectors and the reference's: measured 0.9999996 on these pages
#: with the tiny checkpoint (the tensor path's pixel rounding), so a wrong token or a mis-stripped row fails.
COSINE_FLOOR = 0.9999


def _pages(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


def _reference(encoder: ColSmolEncoder, images: list[Image.Image]) -> list[np.ndarray]:
    """The colpali-engine README loop, one page at a time (so no padding): its own processor
    (``ColIdefics3Processor.process_images``, the PIL reference, not colsmol's tensor preprocessing), its
    model forward, padding rows dropped by the attention mask."""
    out = []
    for img in images:
        batch = encoder.processor.process_images([img])
        with torch.no_grad():
            emb = encoder.model(**batch)[0]
        out.append(emb[batch["attention_mask"][0].bool()].numpy())
    return out


def test_pages_equal_colpali_forward(tiny_encoder: ColSmolEncoder) -> None:
    """colsmol's batched path (tensor preprocessing, sorted batches with left padding, padding stripped) gives
    the reference's tokens: the same count per page and the same vectors, within the tensor path's pixel
    rounding (two 8-bit levels, tests/test_preprocess.py)."""
    images = _pages()
    ours = tiny_encoder.embed_pages(images)
    ref = _reference(tiny_encoder, images)
    assert len({v.shape[0] for v in ours}) > 1, "the batch must mix page lengths"
    for mine, theirs in zip(ours, ref, strict=True):
        assert mine.shape == theirs.shape
        assert mine.shape[1] == 128 and mine.dtype == np.float32
        cosine = (mine * theirs).sum(axis=1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(theirs, axis=1)
        assert cosine.min() > COSINE_FLOOR, cosine.min()


def test_queries_equal_colpali_forward(tiny_encoder: ColSmolEncoder) -> None:
    texts = ["total revenue 2023", "what does the quarterly report say about the annual tax summary table"]
    ours = tiny_encoder.embed_queries(texts)
    for text, mine in zip(texts, ours, strict=True):
        batch = tiny_encoder.processor.process_queries([text])
        with torch.no_grad():
            emb = tiny_encoder.model(**batch)[0]
        np.testing.assert_allclose(mine, emb[batch["attention_mask"][0].bool()].numpy(), atol=1e-5)
    assert ours[0].shape[0] < ours[1].shape[0]


def test_left_padding_nan_rows_are_dropped(tiny_encoder: ColSmolEncoder) -> None:
    images = _pages(1)
    batch = tiny_encoder.processor.process_images(images)
    with torch.no_grad():
        raw = tiny_encoder.model(**batch)
    assert batch["attention_mask"].min() == 0, "the batch must contain padding"
    pad = ~batch["attention_mask"].bool()
    # The failure this guards against: padded positions of a left-padded batch come out NaN.
    assert torch.isnan(raw[pad]).any(), "tiny model no longer produces NaN padding; the test lost its point"
    vectors = tiny_encoder.embed_preprocessed(batch)
    for v, m in zip(vectors, batch["attention_mask"], strict=True):
        assert v.shape[0] == int(m.sum())
        assert np.isfinite(v).all()
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)


def test_batch_size_does_not_change_vectors(tiny_models) -> None:
    images = _pages(2)
    one = ColSmolEncoder(tiny_models["encoder"], device="cpu", batch_size=1).embed_pages(images)
    many = ColSmolEncoder(tiny_models["encoder"], device="cpu", batch_size=5).embed_pages(images)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_peft_adapter_is_applied(tiny_models, tiny_encoder: ColSmolEncoder) -> None:
    adapted = ColSmolEncoder(tiny_models["adapter"], device="cpu").load()
    images = _pages(3)[:2]
    a = adapted.embed_pages(images)
    b = tiny_encoder.embed_pages(images)
    assert [x.shape for x in a] == [x.shape for x in b]
    assert not np.allclose(a[0], b[0], atol=1e-3), "adapter weights were not applied"

    # The merged result equals PEFT's own forward of base + adapter.
    from colpali_engine.models import ColIdefics3
    from peft import PeftModel

    base = ColIdefics3.from_pretrained(tiny_models["encoder"])
    peft_model = PeftModel.from_pretrained(base, tiny_models["adapter"]).eval()
    batch = adapted.preprocess_pages([images[0]])
    with torch.no_grad():
        ref = peft_model(**batch)[0][batch["attention_mask"][0].bool()].numpy()
    np.testing.assert_allclose(a[0], ref, atol=1e-5)


def test_processor_is_the_pil_reference(tiny_encoder: ColSmolEncoder, tiny_models) -> None:
    """Page preprocessing must match the PIL (LANCZOS) processor the checkpoint was trained with.

    The reference option is that processor; the default tensor path is within two 8-bit levels
    (tests/test_preprocess.py says why).
    """
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    reference = Idefics3ImageProcessorPil.from_pretrained(tiny_models["encoder"])
    img = _pages(4)[0]
    theirs = reference(images=[[img]], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(tiny_encoder.processor.process_images([img])["pixel_values"], theirs)
    ours = tiny_encoder.preprocess_pages([img])["pixel_values"]
    torch.testing.assert_close(ours, theirs, atol=4 / 255 + 1e-6, rtol=0)


def test_missing_model_offline_is_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    enc = ColSmolEncoder("vidore/colSmol-256M", device="cpu")
    with pytest.raises(ModelUnavailable) as info:
        enc.load()
    msg = str(info.value)
    assert "vidore/colSmol-256M" in msg and "COLSMOL_ENCODER_MODEL" in msg and "\n" not in msg


def test_empty_query_is_rejected(tiny_encoder: ColSmolEncoder) -> None:
    with pytest.raises(InvalidRequest):
        tiny_encoder.embed_queries(["  "])
