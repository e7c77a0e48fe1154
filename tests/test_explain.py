"""Similarity maps over the tiny random encoder (32 px tiles, 4 image tokens = 2 x 2 cells per view).

The weights are random, so the maps mean nothing; what is tested is that each map cell is computed
from the right image token, by comparison with manual computations and by causality (the text model
is causal, so changing one tile changes no token before it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from indexer.errors import InvalidRequest
from retriever.explain import SimilarityMap, image_token_layout, similarity_map, upsample_nearest
from testkit.checkpoints import IMAGE_SEQ_LEN, PATCH, SCALE, TILE

QUERY = "what is the revenue in 2023?"
K = int(IMAGE_SEQ_LEN**0.5)  # 2 cells per side and view


def _page(width: int, height: int, seed: int = 0) -> Image.Image:
    """A page with some structure (random blocks), so tokens differ from one another."""
    rng = np.random.default_rng(seed)
    arr = np.full((height, width, 3), 255, dtype=np.uint8)
    for _ in range(12):
        x0, y0 = rng.integers(0, width - 4), rng.integers(0, height - 4)
        x1, y1 = x0 + rng.integers(3, max(4, width // 3)), y0 + rng.integers(3, max(4, height // 3))
        arr[y0:y1, x0:x1] = rng.integers(0, 255, size=3)
    return Image.fromarray(arr)


def _raw(encoder, image: Image.Image):
    """input_ids and the encoder's raw per-position vectors for one page (no padding with one page)."""
    batch = encoder.preprocess_pages([image])
    with torch.inference_mode():
        emb = encoder.model(**batch)[0].float().numpy()
    return batch["input_ids"][0].numpy(), emb


def _kept_query(encoder, query: str = QUERY) -> np.ndarray:
    q = encoder.embed_queries([query])[0]
    enc = encoder.processor.process_queries([query])
    ids = enc["input_ids"][0][enc["attention_mask"][0].bool()].numpy()
    special = set(encoder.processor.tokenizer.all_special_ids)
    return q[[int(i) not in special for i in ids]]


@pytest.mark.parametrize(
    ("size", "tiles"),
    [((100, 100), (2, 2)), ((200, 50), (1, 2)), ((60, 150), (2, 1))],
    ids=["square-2x2", "wide-1x2", "tall-2x1"],
)
def test_map_shapes_for_tile_grids(tiny_encoder, size, tiles):
    w, h = size
    m = similarity_map(tiny_encoder, _page(w, h), QUERY)
    assert isinstance(m, SimilarityMap)
    assert m.tiles == tiles
    assert m.heatmap.shape == (h, w) and m.heatmap.dtype == np.float32
    assert np.isfinite(m.heatmap).all() and m.heatmap.std() > 0
    assert m.per_token.shape == (len(m.query_tokens), tiles[0] * K, tiles[1] * K)
    assert m.grid_shape == (tiles[0] * K, tiles[1] * K)
    # Augmentation tokens are not shown; the query's text is.
    assert "<end_of_utterance>" not in m.query_tokens
    assert "".join(m.query_tokens) == QUERY
    # The whole-query heatmap is the nearest-upsampled sum of the per-token grids.
    np.testing.assert_allclose(m.heatmap, upsample_nearest(m.per_token.sum(0), h, w), rtol=1e-6)
    ov = m.overlay(alpha=0.5)
    assert ov.mode == "RGB" and ov.size == (w, h)


def test_manual_computation_from_raw_token_embeddings(tiny_encoder):
    """Each grid cell equals query . (the image token at that tile/cell), computed independently:
    image-token runs in sequence order, tile n at (n // cols, n % cols) with rows/cols from the image
    processor, cells row-major in the run; the global run last."""
    page = _page(100, 100, seed=3)
    page.paste((0, 0, 0), (55, 5, 95, 45))  # a distinctive top-right tile
    ids, emb = _raw(tiny_encoder, page)
    q = _kept_query(tiny_encoder)
    info = tiny_encoder.processor.image_processor(
        [[page.convert("RGB")]], return_row_col_info=True, return_tensors="pt"
    )
    rows, cols = info["rows"][0][0], info["cols"][0][0]
    assert (rows, cols) == (2, 2)
    image_id = tiny_encoder.processor.tokenizer.convert_tokens_to_ids("<image>")
    runs = emb[ids == image_id].reshape(rows * cols + 1, K, K, -1)

    tiles = similarity_map(tiny_encoder, page, QUERY, combine="tiles").per_token
    glob = similarity_map(tiny_encoder, page, QUERY, combine="global").per_token
    full = similarity_map(tiny_encoder, page, QUERY)
    for n in range(rows * cols):
        r, c = divmod(n, cols)
        manual = np.einsum("qd,ijd->qij", q, runs[n])
        np.testing.assert_allclose(tiles[:, r * K : (r + 1) * K, c * K : (c + 1) * K], manual, atol=1e-5)
    manual_global = np.einsum("qd,ijd->qij", q, runs[-1])
    # Global cell (a, b) covers tile cells [a*rows, (a+1)*rows) x [b*cols, (b+1)*cols).
    for a in range(K):
        for b in range(K):
            block = glob[:, a * rows : (a + 1) * rows, b * cols : (b + 1) * cols]
            np.testing.assert_allclose(
                block, np.broadcast_to(manual_global[:, a, b, None, None], block.shape), atol=1e-5
            )
    np.testing.assert_allclose(full.per_token, np.maximum(tiles, glob), atol=1e-6)

    # Pixel -> cell: the top-right tile's top-right cell (grid (0, 3)) covers x in [75, 100), y in [0, 25).
    top_right = np.einsum("qd,d->q", q, runs[1][0, 1])
    expect = np.maximum(top_right, manual_global[:, 0, 1]).sum()
    for y, x in [(0, 75), (24, 99), (10, 90)]:
        assert full.heatmap[y, x] == pytest.approx(expect, rel=1e-5)
    assert full.heatmap[25, 75] != pytest.approx(expect, rel=1e-5)  # next cell down

    # One token's map.
    one = similarity_map(tiny_encoder, page, QUERY, token=2)
    np.testing.assert_allclose(one.heatmap, upsample_nearest(full.per_token[2], 100, 100), rtol=1e-6)


def test_changing_one_tile_moves_the_map_there(tiny_encoder):
    """Causality check of the row-major tile order: repaint the inside of the bottom-left quadrant.
    Tokens of tiles (0, 0) and (0, 1), which come before tile (1, 0) in the sequence, cannot change;
    tile (1, 0)'s cells must. A column-major reading would put the change in the top-right quadrant."""
    base = _page(128, 128, seed=5)
    edited = base.copy()
    ImageDraw.Draw(edited).rectangle((10, 76, 54, 118), fill=(20, 200, 20))
    a = similarity_map(tiny_encoder, base, QUERY, combine="tiles").per_token
    b = similarity_map(tiny_encoder, edited, QUERY, combine="tiles").per_token
    diff = np.abs(a - b).max(axis=0)  # (4, 4) grid
    assert diff[:K, :].max() < 1e-5  # tiles (0, 0) and (0, 1) untouched
    assert diff[K:, :K].min() > 1e-4  # tile (1, 0) changed, every cell


def test_within_view_cell_order_matches_pixel_shuffle(tiny_encoder):
    """Patches are row-major in the vision embeddings and the connector's pixel shuffle merges
    SCALE x SCALE neighbours into token (row // SCALE) * K + col // SCALE, the order the maps use."""
    inner = tiny_encoder.model.model
    grid = TILE // PATCH
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, TILE, TILE)
    mask = torch.ones(1, grid, grid, dtype=torch.bool)
    with torch.inference_mode():
        base = inner.connector.pixel_shuffle(inner.vision_model.embeddings(pixels, mask).contiguous(), SCALE)
        for pr, pc in [(0, 0), (0, 3), (2, 1), (3, 2)]:
            p = pixels.clone()
            p[..., pr * PATCH : (pr + 1) * PATCH, pc * PATCH : (pc + 1) * PATCH] += 1.0
            out = inner.connector.pixel_shuffle(inner.vision_model.embeddings(p, mask).contiguous(), SCALE)
            changed = (out - base).abs().amax(-1)[0].nonzero().flatten().tolist()
            assert changed == [(pr // SCALE) * K + pc // SCALE]


def test_single_view_page(tiny_models):
    """A processor whose longest edge is one tile does not split: the map is the global view alone."""
    from indexer.models.encoder import ColSmolEncoder

    enc = ColSmolEncoder(tiny_models["encoder"], device="cpu").load()
    enc.processor.image_processor.size = {"longest_edge": TILE}
    page = _page(90, 70, seed=7)
    m = similarity_map(enc, page, QUERY)
    assert m.tiles == (0, 0)
    assert m.per_token.shape == (len(m.query_tokens), K, K)
    assert m.heatmap.shape == (70, 90) and m.heatmap.std() > 0
    assert m.overlay(0.3).size == (90, 70)
    ids, emb = _raw(enc, page)
    run = emb[ids == enc.processor.tokenizer.convert_tokens_to_ids("<image>")]
    assert run.shape[0] == IMAGE_SEQ_LEN
    np.testing.assert_allclose(
        m.per_token, np.einsum("qd,ijd->qij", _kept_query(enc), run.reshape(K, K, -1)), atol=1e-5
    )
    with pytest.raises(InvalidRequest):
        similarity_map(enc, page, QUERY, combine="tiles")


def test_include_special_and_bad_arguments(tiny_encoder):
    page = _page(64, 64)
    m = similarity_map(tiny_encoder, page, QUERY, include_special=True)
    assert m.query_tokens.count("<end_of_utterance>") == 10
    with pytest.raises(InvalidRequest):
        similarity_map(tiny_encoder, page, QUERY, token=99)
    with pytest.raises(InvalidRequest):
        similarity_map(tiny_encoder, page, QUERY, combine="mean")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        m.overlay(alpha=1.5)


def test_overlay_blends_page_and_colormap(tiny_encoder):
    page = Image.new("RGB", (80, 40), (255, 255, 255))
    m = similarity_map(tiny_encoder, page, QUERY)
    assert np.array_equal(np.asarray(m.overlay(0.0)), np.asarray(page))
    full = np.asarray(m.overlay(1.0)).astype(int)
    hottest = np.unravel_index(np.argmax(m.heatmap), m.heatmap.shape)
    coldest = np.unravel_index(np.argmin(m.heatmap), m.heatmap.shape)
    assert tuple(full[hottest]) == (253, 231, 37)  # top of viridis
    assert tuple(full[coldest]) == (68, 1, 84)  # bottom of viridis


def test_layout_parser_rejects_malformed_sequences(tiny_encoder):
    from indexer.errors import ColsmolError

    tok = tiny_encoder.processor.tokenizer
    ids = tiny_encoder.preprocess_pages([_page(100, 100)])["input_ids"][0].numpy()
    image_id = tok.convert_tokens_to_ids("<image>")
    layout = image_token_layout(ids, tok, image_id, IMAGE_SEQ_LEN)
    assert (layout.rows, layout.cols, layout.k) == (2, 2, K)
    assert sorted(layout.tiles) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert layout.global_view[0] > max(p[-1] for p in layout.tiles.values())
    broken = ids.copy()
    broken[np.flatnonzero(ids == image_id)[0]] = tok.convert_tokens_to_ids("<fake_token_around_image>")
    with pytest.raises(ColsmolError):
        image_token_layout(broken, tok, image_id, IMAGE_SEQ_LEN)
