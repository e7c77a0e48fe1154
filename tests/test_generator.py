"""SmolVLMGenerator on a tiny real Idefics3 checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from indexer.errors import InvalidRequest, ModelUnavailable
from rag.generator import SmolVLMGenerator


def _pages(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (110, 85, 3), dtype=np.uint8)) for _ in range(n)]


def test_stream_equals_generate_greedy(tiny_generator: SmolVLMGenerator) -> None:
    pages = _pages(3)
    text = tiny_generator.generate("What is the total amount due?", pages, max_new_tokens=16)
    pieces = list(tiny_generator.stream("What is the total amount due?", pages, max_new_tokens=16))
    assert len(pieces) >= 1
    assert "".join(pieces).strip() == text


def test_prompt_holds_every_page_and_the_question(tiny_generator: SmolVLMGenerator) -> None:
    inputs = tiny_generator.build_inputs("Which year?", _pages(2))
    image_token = tiny_generator.processor.tokenizer.convert_tokens_to_ids("<global-img>")
    assert int((inputs["input_ids"] == image_token).sum()) == 2
    decoded = tiny_generator.processor.tokenizer.decode(inputs["input_ids"][0])
    assert "Which year?" in decoded and "only the document pages" in decoded


def test_generate_without_pages(tiny_generator: SmolVLMGenerator) -> None:
    assert isinstance(tiny_generator.generate("hello?", [], max_new_tokens=4), str)


@pytest.mark.parametrize("question", ["", "   \n"])
def test_empty_question(tiny_generator: SmolVLMGenerator, question: str) -> None:
    with pytest.raises(InvalidRequest):
        tiny_generator.generate(question, _pages(1))


def test_missing_model_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailable, match="COLSMOL_GENERATOR_MODEL"):
        SmolVLMGenerator("HuggingFaceTB/SmolVLM-256M-Instruct", device="cpu").load()


def test_page_token_budget_caps_image_tokens(tiny_models) -> None:
    """Pages are resized to the budget's longest edge before tiling: fewer tiles, fewer tokens."""
    pages = _pages(2)
    full = SmolVLMGenerator(tiny_models["generator"], device="cpu", image_longest_edge=None)
    capped = SmolVLMGenerator(tiny_models["generator"], device="cpu", image_longest_edge=32)
    assert full.page_size() is None and capped.page_size() == 32  # tiny model: 64 px, 32 px tiles
    image_token = full.processor.tokenizer.convert_tokens_to_ids("<image>")
    n_full = int((full.build_inputs("q?", pages)["input_ids"] == image_token).sum())
    n_capped = int((capped.build_inputs("q?", pages)["input_ids"] == image_token).sum())
    assert n_capped < n_full
    assert isinstance(capped.generate("q?", pages, max_new_tokens=3), str)
