"""Cited regions (retriever.regions) and the token layout they map through (indexer.models.token_layout).

Unit tests use hand-made layouts and vectors: a 2 x 2-tile page, an unsplit page, the global view, text tokens.
Then the layout rebuilt from a page's size and the tiny processor is checked against the ids the encoder's
preprocessing really produces, and the regions of real searches against their hits' MaxSim scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from indexer.models.token_layout import ImageTokenLayout, PageLayouts, TokenCells, image_token_layout
from retriever.regions import Region, RegionFinder, maxsim_winners, merge_cells, page_regions

K = 2  # 2 x 2 cells per view, as the tiny model


def _two_by_two(n_text_before: int = 3) -> tuple[ImageTokenLayout, int]:
    """A 2 x 2-tile page: ``n_text_before`` text tokens, then per view a marker and 4 image tokens, then the
    global view's marker, its 4 tokens and 2 text tokens. Returns the layout and the sequence length."""
    pos = n_text_before
    tiles = {}
    for r in range(2):
        for c in range(2):
            pos += 1  # the <row_r_col_c> marker
            tiles[(r, c)] = np.arange(pos, pos + K * K)
            pos += K * K
    pos += 1  # <global-img>
    glob = np.arange(pos, pos + K * K)
    return ImageTokenLayout(rows=2, cols=2, k=K, tiles=tiles, global_view=glob), pos + K * K + 2


def test_cells_of_a_two_by_two_tile_page() -> None:
    layout, n = _two_by_two()
    cells = TokenCells.from_layout(layout, n)
    assert cells.grid == (4, 4) and cells.n_tokens == n
    assert int(cells.is_image.sum()) == 5 * K * K
    assert not cells.is_image[:3].any() and not cells.is_image[-2:].any()
    # Tile (0, 1), its cell (1, 0): fine cell (1, 2).
    assert cells.boxes[layout.tiles[(0, 1)][2]].tolist() == [1, 2, 2, 3]
    # Tile (1, 1), its last cell: the page's bottom-right cell.
    assert cells.boxes[layout.tiles[(1, 1)][3]].tolist() == [3, 3, 4, 4]
    # Global cell (0, 1) covers the 2 x 2 fine cells at the top right.
    assert cells.boxes[layout.global_view[1]].tolist() == [0, 2, 2, 4]


def test_regions_of_a_two_by_two_tile_page() -> None:
    layout, n = _two_by_two()
    cells = TokenCells.from_layout(layout, n)
    top_right = layout.tiles[(0, 1)][1]  # fine cell (0, 3)
    next_to_it = layout.tiles[(0, 1)][3]  # fine cell (1, 3): touches it
    bottom_left = layout.tiles[(1, 0)][2]  # fine cell (3, 0)
    winners = np.array([top_right, next_to_it, bottom_left, top_right])
    terms = np.array([0.5, 0.25, 0.6, 0.5])
    regions = page_regions(winners, terms, cells)
    assert regions == (
        Region(0.75, 0.0, 1.0, 0.5, 1.25),  # two query tokens on one cell and one on its neighbour, merged
        Region(0.0, 0.75, 0.25, 1.0, 0.6),
    )
    assert page_regions(winners, terms, cells, max_regions=1) == regions[:1]


def test_global_view_cells_cover_blocks_and_merge_with_tile_cells() -> None:
    layout, n = _two_by_two()
    cells = TokenCells.from_layout(layout, n)
    glob_bottom_right = layout.global_view[3]  # fine cells [2, 4) x [2, 4): the bottom-right quarter
    inside_it = layout.tiles[(1, 1)][0]  # fine cell (2, 2)
    regions = page_regions(np.array([glob_bottom_right, inside_it]), np.array([0.3, 0.4]), cells)
    assert regions == (Region(0.5, 0.5, 1.0, 1.0, pytest.approx(0.7)),)
    alone = page_regions(np.array([layout.global_view[0]]), np.array([0.2]), cells)
    assert alone == (Region(0.0, 0.0, 0.5, 0.5, 0.2),)


def test_unsplit_page_is_its_global_view() -> None:
    layout = ImageTokenLayout(rows=0, cols=0, k=K, tiles={}, global_view=np.arange(2, 2 + K * K))
    cells = TokenCells.from_layout(layout, 2 + K * K + 3)
    assert cells.grid == (K, K)
    regions = page_regions(np.array([2 + 3, 2 + 0]), np.array([1.0, 0.5]), cells, gap=0)
    # Cells (1, 1) and (0, 0) touch diagonally: one box over the whole page.
    assert regions == (Region(0.0, 0.0, 1.0, 1.0, 1.5),)


def test_text_token_winners_have_no_place_on_the_page() -> None:
    layout, n = _two_by_two()
    cells = TokenCells.from_layout(layout, n)
    text = [0, 1, 2, n - 1, int(layout.tiles[(0, 0)][0]) - 1]  # prompt text and a tile marker
    assert page_regions(np.array(text), np.ones(len(text)), cells) == ()
    one = page_regions(np.array([*text, layout.tiles[(0, 0)][0]]), np.arange(len(text) + 1.0), cells)
    assert one == (Region(0.0, 0.0, 0.25, 0.25, float(len(text))),)


def test_merge_gap_and_ranking() -> None:
    boxes = np.array([[0, 0, 1, 1], [0, 2, 1, 3], [5, 5, 6, 6], [9, 9, 10, 10], [9, 0, 10, 1]])
    scores = np.array([1.0, 1.0, 0.5, 3.0, -1.0])
    gap1 = merge_cells(boxes, scores, (10, 10), max_regions=10, gap=1)
    assert [(r.x0, r.x1, r.score) for r in gap1] == [
        (0.9, 1.0, 3.0),
        (0.0, 0.3, 2.0),
        (0.5, 0.6, 0.5),
        (0.0, 0.1, -1.0),
    ]
    gap0 = merge_cells(boxes, scores, (10, 10), max_regions=10, gap=0)
    assert len(gap0) == 5
    assert merge_cells(np.zeros((0, 4)), np.zeros(0), (4, 4)) == ()
    # A chain of neighbours is one component, whatever the order.
    chain = np.array([[0, 4, 1, 5], [0, 0, 1, 1], [0, 2, 1, 3], [0, 6, 1, 7]])
    assert len(merge_cells(chain, np.ones(4), (1, 8), gap=1)) == 1


def test_maxsim_winners_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((7, 128)).astype(np.float32)
    pages = [rng.standard_normal((n, 128)).astype(np.float32) for n in (5, 40, 13)]
    given = [torch.from_numpy(p).half() for p in pages[:2]] + [pages[2]]  # resident fp16, or float32 from a store
    got = maxsim_winners(q, given)
    for (idx, vals), p in zip(got, given, strict=True):
        sims = q @ np.asarray(p.float() if isinstance(p, torch.Tensor) else p).T
        assert idx.tolist() == sims.argmax(1).tolist()
        np.testing.assert_allclose(vals, sims.max(1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------- the real layout
@pytest.fixture(scope="module")
def processor() -> Any:
    from colpali_engine.models import ColIdefics3Processor

    from testkit.checkpoints import build_processor, build_tokenizer

    return build_processor(build_tokenizer(), ColIdefics3Processor)


@pytest.mark.parametrize("size", [(100, 100), (200, 50), (60, 150), (20, 20), (425, 550)])
def test_layout_from_page_size_matches_the_processors_ids(processor: Any, size: tuple[int, int]) -> None:
    from PIL import Image

    page = Image.new("RGB", size, "white")
    ids = processor.process_images([page])["input_ids"][0].numpy()
    tok = processor.tokenizer
    parsed = image_token_layout(ids, tok, tok.convert_tokens_to_ids("<image>"), processor.image_seq_len)
    cells = PageLayouts(lambda: processor).cells(size[0], size[1], len(ids))
    assert cells is not None and (cells.rows, cells.cols) == (parsed.rows, parsed.cols)
    assert cells.boxes.shape == (len(ids), 4)
    assert cells.is_image.tolist() == (ids == tok.convert_tokens_to_ids("<image>")).tolist()
    assert cells.boxes[parsed.global_view[-1]].tolist()[2:] == list(cells.grid)


def test_layout_of_another_resolution_or_none(processor: Any) -> None:
    layouts = PageLayouts(lambda: processor)
    one_tile = layouts.cells(100, 100, 52)  # 2 x 2 tiles at the processor's own longest edge (64)
    assert one_tile is not None and one_tile.grid == (4, 4)
    # A page stored when the processor's longest edge was 32 (one tile: unsplit): fewer tokens, still laid out.
    from indexer.models.preprocess import prompt_ids

    unsplit = len(prompt_ids(processor, (0, 0)))
    cells = layouts.cells(100, 100, unsplit)
    assert cells is not None and (cells.rows, cells.grid) == (0, (K, K))
    assert layouts.cells(100, 100, 51) is None  # no layout has 51 tokens (say, a pooled index)
    assert layouts.cells(0, 100, 52) is None


class _Store:
    """The two store reads a RegionFinder makes."""

    def __init__(self, sizes: dict[str, tuple[int, int]], vectors: dict[str, np.ndarray]) -> None:
        self.sizes, self.vectors, self.payload_reads = sizes, vectors, list[str]()

    def get_payloads(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        self.payload_reads += ids
        return {i: {"width": self.sizes[i][0], "height": self.sizes[i][1]} for i in ids if i in self.sizes}

    def get_vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        return {i: self.vectors[i] for i in ids if i in self.vectors}


def test_region_finder_places_planted_matches(processor: Any) -> None:
    """Query tokens planted equal to chosen image tokens of a stored page come back as those cells; a pooled
    resident copy falls back to the store's vectors; unknown pages get no regions."""
    from indexer.models.preprocess import prompt_ids

    tok = processor.tokenizer
    ids = np.asarray(prompt_ids(processor, (2, 2)))
    layout = image_token_layout(ids, tok, tok.convert_tokens_to_ids("<image>"), processor.image_seq_len)
    rng = np.random.default_rng(1)
    page = rng.standard_normal((len(ids), 128)).astype(np.float32)
    page /= np.linalg.norm(page, axis=1, keepdims=True)
    # Query token 0 = tile (1, 0) cell 1 (fine cell (2, 1)); query token 1 = tile (0, 1) cell 0 (fine (0, 2)).
    q = np.stack([page[layout.tiles[(1, 0)][1]], page[layout.tiles[(0, 1)][0]]]) * 10
    store = _Store({"p": (100, 100)}, {"p": page})
    finder = RegionFinder(store, lambda: processor, gap=0)  # type: ignore[arg-type]
    [[regions, nothing]] = finder.find([q], [["p", "unknown"]], lambda pids: {"p": page} if "p" in pids else {})
    assert nothing == ()
    assert [(r.x0, r.y0, r.x1, r.y1) for r in regions] == [(0.5, 0.0, 0.75, 0.25), (0.25, 0.5, 0.5, 0.75)] or [
        (r.x0, r.y0, r.x1, r.y1) for r in regions
    ] == [(0.25, 0.5, 0.5, 0.75), (0.5, 0.0, 0.75, 0.25)]
    assert sum(r.score for r in regions) == pytest.approx(20.0, rel=1e-5)
    # Pooled resident vectors (half as many) do not fit a layout: the store's full vectors are used.
    [[again, _]] = finder.find([q], [["p", "unknown"]], lambda pids: {"p": page[::2]})
    assert again == regions
    assert store.payload_reads.count("p") == 1  # a page's size is read once


def test_region_finder_never_raises(processor: Any) -> None:
    def broken(_: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    finder = RegionFinder(_Store({"p": (10, 10)}, {}), lambda: processor)  # type: ignore[arg-type]
    assert finder.find([np.ones((2, 128), np.float32)], [["p"]], broken) == [[()]]


# ---------------------------------------------------------------------------------------------- real searches
def test_search_hits_carry_regions_that_add_up_to_their_scores(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Over the tiny encoder: every hit has a layout, its regions lie on the page, and (with no cap on their
    number) their scores plus the terms won by text tokens make the hit's MaxSim score."""
    from rag.pipeline import RAGPipeline
    from testkit.pdfs import LETTER, PageSpec, write_pdf
    from tests.conftest import tiny_settings

    settings = tiny_settings(tiny_models, tmp_path / "data", dpi=50)
    with RAGPipeline.from_settings(settings) as rag:
        pdf = write_pdf(tmp_path / "a.pdf", [PageSpec(*LETTER, text="revenue"), PageSpec(LETTER[1], LETTER[0]),
                                             PageSpec(200, 200, text="x")])  # fmt: skip
        rag.ingest([pdf])
        queries = ["What was the revenue in 2023?", "table", "x"]  # with random weights most winners are text tokens
        # Visual hits only: this checks MaxSim's regions (text hits cite word boxes: tests/test_hybrid.py).
        batches = rag.search_batch(queries, k=3, mode="visual")
        assert any(h.regions for hits in batches for h in hits)
        finder = RegionFinder(rag.store, lambda: rag.encoder.processor, max_regions=1000)
        index = rag.live_index.get()  # type: ignore[union-attr]
        encoded = rag.encoder.embed_queries(queries)  # as search_batch encodes them (padded together)
        for query, q, hits in zip(queries, encoded, batches, strict=True):
            alone = rag.search(query, k=3, mode="visual")  # encoded alone, not padded in a batch: the same boxes
            assert [[(r.x0, r.y0, r.x1, r.y1) for r in h.regions] for h in hits] == [
                [(r.x0, r.y0, r.x1, r.y1) for r in h.regions] for h in alone
            ]
            ids = [h.point_id for h in hits]
            [every] = finder.find([q], [ids], index.get_vectors)
            vectors = index.get_vectors(ids)
            sizes = finder.sizes.get(ids)
            for hit, regions in zip(hits, every, strict=True):
                assert len(hit.regions) <= 3 and hit.regions == regions[:3]
                for r in hit.regions:
                    assert 0 <= r.x0 < r.x1 <= 1 and 0 <= r.y0 < r.y1 <= 1
                cells = finder.layouts.cells(*sizes[hit.point_id], len(vectors[hit.point_id]))
                assert cells is not None
                [(winners, terms)] = maxsim_winners(q, [vectors[hit.point_id]])
                text_terms = float(terms[~cells.is_image[winners]].sum())
                assert sum(r.score for r in regions) + text_terms == pytest.approx(hit.score, abs=1e-3)
