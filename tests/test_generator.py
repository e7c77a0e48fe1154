"""SmolVLMGenerator on a tiny real Idefics3 checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from indexer.errors import ConfigError, InvalidRequest, ModelUnavailable
from rag.generators.smolvlm import SmolVLMGenerator


def _pages(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (110, 85, 3), dtype=np.uint8)) for _ in range(n)]


def _transformers_greedy(gen: SmolVLMGenerator, question: str, pages: list[Image.Image], n: int) -> str:
    """The plain transformers reference: ``model.generate`` (greedy) on the same prompt, decoded."""
    import torch

    inputs = gen.build_inputs(question, pages)
    with torch.no_grad():
        out = gen.model.generate(**inputs, max_new_tokens=n, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    return gen.processor.tokenizer.decode(new, skip_special_tokens=True).strip()


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
    text = tiny_generator.generate("hello?", [], max_new_tokens=4)
    assert text == _transformers_greedy(tiny_generator, "hello?", [], 4)


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
    capped = SmolVLMGenerator(tiny_models["generator"], device="cpu", image_longest_edge=32, decode="eager")
    assert full.page_size() is None and capped.page_size() == 32  # tiny model: 64 px, 32 px tiles
    image_token = full.processor.tokenizer.convert_tokens_to_ids("<image>")
    n_full = int((full.build_inputs("q?", pages)["input_ids"] == image_token).sum())
    n_capped = int((capped.build_inputs("q?", pages)["input_ids"] == image_token).sum())
    assert n_capped < n_full
    assert capped.generate("q?", pages, max_new_tokens=3) == _transformers_greedy(capped, "q?", pages, 3)


# ---------------------------------------------------------------------- decode modes
# On CPU "static" uses the StaticCache without torch.compile (compile_decode is False: compilation and
# CUDA graphs are only enabled on CUDA, where bench/answer.py --decode eager,static measures them).

PROMPTS = [("What is the total amount due on the invoice, and by which date?", 3), ("hi?", 0)]


@pytest.fixture(scope="module")
def static_generator(tiny_models) -> SmolVLMGenerator:
    gen = SmolVLMGenerator(tiny_models["generator"], device="cpu", decode="static").load()
    yield gen
    gen.close()


def _ids_and_logits(gen: SmolVLMGenerator, question: str, n_pages: int, n: int):
    inputs = gen.build_inputs(question, _pages(n_pages))
    out = gen.run_generate(inputs, n, min_new_tokens=n, output_logits=True, return_dict_in_generate=True)
    return inputs["input_ids"].shape[1], out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), out.logits


def test_static_decode_runs_uncompiled_on_cpu(static_generator: SmolVLMGenerator) -> None:
    assert static_generator.decode_mode == "static"
    assert static_generator.compile_decode is False


def test_static_equals_eager_token_for_token(
    tiny_generator: SmolVLMGenerator, static_generator: SmolVLMGenerator
) -> None:
    """Greedy ids (forced to 24 tokens) and their logits match, for two prompt lengths in a row on one cache."""
    import torch

    assert tiny_generator.decode_mode == "eager"
    lengths, caches = [], []
    for question, n_pages in PROMPTS:  # long prompt first, then a short one on the same (reset) cache
        n_eager, ids_eager, logits_eager = _ids_and_logits(tiny_generator, question, n_pages, 24)
        n_static, ids_static, logits_static = _ids_and_logits(static_generator, question, n_pages, 24)
        assert n_static == n_eager
        assert ids_static == ids_eager
        for a, b in zip(logits_eager, logits_static, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        lengths.append(n_eager)
        caches.append(static_generator._caches[1])
    assert lengths[0] != lengths[1]
    assert caches[0] is caches[1]  # one StaticCache reused across calls: stable addresses for CUDA graphs
    assert caches[0].get_max_length() % SmolVLMGenerator.STATIC_CACHE_BUCKET == 0


@pytest.mark.parametrize(("question", "n_pages"), PROMPTS)
def test_static_generate_and_stream_equal_eager(
    tiny_generator: SmolVLMGenerator, static_generator: SmolVLMGenerator, question: str, n_pages: int
) -> None:
    pages = _pages(n_pages)
    text = tiny_generator.generate(question, pages, max_new_tokens=16)
    assert static_generator.generate(question, pages, max_new_tokens=16) == text
    assert "".join(static_generator.stream(question, pages, max_new_tokens=16)).strip() == text


def test_static_cache_grows_by_buckets(tiny_models, tiny_generator: SmolVLMGenerator) -> None:
    gen = SmolVLMGenerator(tiny_models["generator"], device="cpu", decode="static", static_cache_tokens=100)
    try:
        assert gen.static_cache_tokens == 256
        short = _ids_and_logits(gen, "hi?", 0, 4)
        assert gen._caches[1].get_max_length() == 256
        n_prompt, ids, _ = _ids_and_logits(gen, *PROMPTS[0], 100)  # prompt + 100 > 256 tokens
        assert n_prompt + 100 > 256 and gen._caches[1].get_max_length() == 512
        assert ids == _ids_and_logits(tiny_generator, *PROMPTS[0], 100)[1]
        assert _ids_and_logits(gen, "hi?", 0, 4)[1] == short[1]  # the cache never shrinks back
        assert gen._caches[1].get_max_length() == 512
    finally:
        gen.close()


def test_warmup_static_on_cpu(tiny_models) -> None:
    gen = SmolVLMGenerator(tiny_models["generator"], device="cpu", decode="static")
    assert gen.load().warmed_up is False  # no compilation on CPU, so load() does not warm up
    assert gen.warmup(max_new_tokens=2) > 0 and gen.warmed_up
    assert gen.decode_mode == "static"
    gen.close()


def test_auto_decode_is_the_cpu_path_on_cpu_and_static_only_when_verified(tiny_models, monkeypatch) -> None:
    assert SmolVLMGenerator(tiny_models["generator"], device="cpu").decode_mode == SmolVLMGenerator.CPU_DECODE
    monkeypatch.setattr(SmolVLMGenerator, "STATIC_DECODE_VERIFIED", True)
    assert SmolVLMGenerator(tiny_models["generator"], device="cpu").decode_mode != "static"  # CUDA only


@pytest.mark.parametrize("decode", ["compiled", "", "STATIC", None])
def test_invalid_decode_rejected(tiny_models, decode) -> None:
    with pytest.raises(ConfigError, match="decode mode"):
        SmolVLMGenerator(tiny_models["generator"], device="cpu", decode=decode)


def test_warmup_falls_back_when_compiled_decode_fails(
    tiny_models, tiny_generator: SmolVLMGenerator, monkeypatch
) -> None:
    """fullgraph=True failing is retried with fullgraph=False; failing again falls back to eager decoding."""
    gen = SmolVLMGenerator(tiny_models["generator"], device="cpu", decode="static").load()
    calls: list[bool] = []
    real = gen._model_generate

    def fake(inputs, max_new_tokens, **extra):
        calls.append(gen.compile_fullgraph)
        if gen.compile_fullgraph:
            raise RuntimeError("graph break")
        return real(inputs, max_new_tokens, **extra)

    monkeypatch.setattr(gen, "_model_generate", fake)
    gen.compile_decode = True  # as on CUDA; on CPU generate() does not compile even when asked to
    monkeypatch.setattr(gen, "_compile_config", lambda: None)  # compile_config=None: generate's defaults
    gen.warmup(max_new_tokens=2)
    assert calls[0] is True and gen.compile_fullgraph is False and gen.decode_mode == "static"

    def broken(inputs, max_new_tokens, **extra):
        if gen.compile_decode:
            raise RuntimeError("no compiler")
        return real(inputs, max_new_tokens, **extra)

    gen.compile_fullgraph, gen.warmed_up = True, False
    monkeypatch.setattr(gen, "_model_generate", broken)
    gen.warmup(max_new_tokens=2)
    assert gen.decode_mode == "eager" and gen.compile_decode is False and gen.warmed_up
    monkeypatch.undo()
    assert gen.generate("hi?", [], max_new_tokens=2) == tiny_generator.generate("hi?", [], max_new_tokens=2)
    gen.close()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_compiled_static_decode_on_cuda_equals_eager(tiny_models) -> None:
    """The compiled static path for real (torch.compile + CUDA graphs, no call patched out): same greedy text as
    eager decoding on the same device."""
    eager = SmolVLMGenerator(tiny_models["generator"], device="cuda", decode="eager").load()
    static = SmolVLMGenerator(tiny_models["generator"], device="cuda", decode="static").load()
    try:
        assert static.compile_decode is True
        static.warmup(max_new_tokens=4)
        assert static.decode_mode == "static", "compilation fell back to eager"
        for question, n_pages in PROMPTS:
            pages = _pages(n_pages)
            assert static.generate(question, pages, max_new_tokens=16) == eager.generate(
                question, pages, max_new_tokens=16
            )
    finally:
        eager.close()
        static.close()
