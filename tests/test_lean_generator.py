"""SmolVLM's lean CPU path (decode="lean" / "lean-fp16") against transformers' generate, on the tiny checkpoint:
the same greedy tokens (fp32), a bounded difference (fp16 weights), stop events, the page-feature cache and its
invalidation, and the fallbacks."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.images import PageImageStore
from rag.generators import FEATURES_SIDECAR, make_generator
from rag.generators.lean_decode import LeanDecoder
from rag.generators.page_features import PageFeatureCache
from rag.generators.smolvlm import SmolVLMGenerator
from rag.pipeline import RAGPipeline
from testkit.pdfs import LETTER, PageSpec, write_pdf
from tests.conftest import tiny_settings

QUESTION = "What is the total amount due on the invoice, and by which date?"


def _pages(n: int, seed: int = 7) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (110, 85, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def lean(tiny_models) -> SmolVLMGenerator:
    gen = SmolVLMGenerator(tiny_models["generator"], device="cpu", decode="lean").load()
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def lean16(tiny_models) -> SmolVLMGenerator:
    gen = SmolVLMGenerator(tiny_models["generator"], device="cpu", decode="lean-fp16").load()
    yield gen
    gen.close()


def _forced(gen: SmolVLMGenerator, question: str, pages: list[Image.Image], n: int) -> list[int]:
    inputs = gen.build_inputs(question, pages)
    out = gen.run_generate(inputs, n, min_new_tokens=n)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_lean_prompt_is_the_processors(tiny_generator: SmolVLMGenerator, lean: SmolVLMGenerator) -> None:
    """Same token ids as the processor, and the page features the model computes for all pages at once."""
    pages = _pages(3)
    eager_inputs = tiny_generator.build_inputs(QUESTION, pages)
    lean_inputs = lean.build_inputs(QUESTION, pages)
    assert "pixel_values" not in lean_inputs
    assert lean_inputs["input_ids"].tolist() == eager_inputs["input_ids"].tolist()
    with torch.inference_mode():
        whole = tiny_generator.model.model.get_image_features(
            eager_inputs["pixel_values"], eager_inputs["pixel_attention_mask"], return_dict=True
        ).pooler_output
    torch.testing.assert_close(lean_inputs["image_features"], torch.cat(list(whole)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_pages", [3, 0])
def test_lean_fp32_gives_eagers_greedy_tokens(
    tiny_generator: SmolVLMGenerator, lean: SmolVLMGenerator, n_pages: int
) -> None:
    pages = _pages(n_pages)
    assert _forced(lean, QUESTION, pages, 40) == _forced(tiny_generator, QUESTION, pages, 40)
    text = tiny_generator.generate(QUESTION, pages, max_new_tokens=16)
    assert lean.generate(QUESTION, pages, max_new_tokens=16) == text
    assert "".join(lean.stream(QUESTION, pages, max_new_tokens=16)).strip() == text


def test_lean_decoder_grows_its_cache_by_buckets(tiny_generator: SmolVLMGenerator, lean: SmolVLMGenerator) -> None:
    """A generation longer than the first bucket grows the key/value buffers and still matches eager."""
    assert _forced(lean, "hi?", [], 300) == _forced(tiny_generator, "hi?", [], 300)


def test_lean_fp16_stays_close_to_eager(tiny_generator: SmolVLMGenerator, lean16: SmolVLMGenerator) -> None:
    """fp16 decode weights: the first token is the fp32 prefill's; teacher-forced logits stay within 2% of the
    logit range of fp32 steps on the same cache (the full-size difference is measured by bench/answer.py)."""
    assert lean16.decode_mode == "lean-fp16"
    pages = _pages(3)
    ids = _forced(tiny_generator, QUESTION, pages, 24)
    assert _forced(lean16, QUESTION, pages, 24)[0] == ids[0]
    model = tiny_generator.model
    inputs = lean16.build_inputs(QUESTION, pages)
    from transformers import DynamicCache

    with torch.inference_mode():
        embeds = model.model.inputs_merger(
            input_ids=inputs["input_ids"],
            inputs_embeds=model.model.text_model.get_input_embeddings()(inputs["input_ids"]),
            image_hidden_states=inputs["image_features"],
        )
        cache = DynamicCache(config=model.config.text_config)
        model.model.text_model(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
        exact = LeanDecoder(model.model.text_model, model.lm_head, "fp32")
        half = LeanDecoder(model.model.text_model, model.lm_head, "fp16")
        n = int(inputs["input_ids"].shape[1])
        exact.start(cache, n)
        half.start(cache, n)
        for token in ids:
            a, b = exact.step(torch.tensor([[token]])), half.step(torch.tensor([[token]]))
            span = float(a.max() - a.min())
            assert float((a - b).abs().max()) <= 0.02 * span


def test_stop_event_ends_lean_generation(lean: SmolVLMGenerator) -> None:
    stop = threading.Event()
    steps = []

    class Count:
        def __call__(self, input_ids, scores):  # noqa: ANN001
            steps.append(1)
            if len(steps) == 3:
                stop.set()
            return scores

    inputs = lean.build_inputs(QUESTION, _pages(1))
    out = lean.run_generate(inputs, 200, min_new_tokens=200, logits_processor=Count(), **lean._stopping(stop))
    assert int(out.shape[1]) - int(inputs["input_ids"].shape[1]) == 3
    pieces = lean.stream(QUESTION, _pages(1), max_new_tokens=200, stop=stop)
    assert len(list(pieces)) <= 1  # already set: one token decoded at most


def test_page_features_are_computed_once(tiny_models, monkeypatch) -> None:
    gen = SmolVLMGenerator(tiny_models["generator"], device="cpu", decode="lean").load()
    calls = []
    real = gen.model.model.get_image_features
    monkeypatch.setattr(gen.model.model, "get_image_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    pages = _pages(3)
    first = gen.generate(QUESTION, pages, max_new_tokens=8)
    assert len(calls) == 3
    assert gen.generate("Another question?", pages, max_new_tokens=8) and len(calls) == 3  # text only
    assert gen.generate(QUESTION, pages, max_new_tokens=8) == first
    gen.generate(QUESTION, [*pages[:2], _pages(1, seed=8)[0]], max_new_tokens=8)  # one new page
    assert len(calls) == 4
    gen.close()


def test_page_features_on_disk_follow_the_page(tiny_models, tmp_path: Path, monkeypatch) -> None:
    """Features stored beside the page image: reused by a new process, recomputed when the page's image changes
    or another model asks, and deleted with the page."""
    images = PageImageStore(tmp_path / "pages")
    pages = _pages(2)
    ids = ["aa11", "bb22"]
    for pid, page in zip(ids, pages, strict=True):
        images.save(pid, page)

    def generator(model: Path) -> SmolVLMGenerator:
        cache = PageFeatureCache(path_of=lambda pid: images.sidecar_path(pid, FEATURES_SIDECAR))
        return SmolVLMGenerator(model, device="cpu", decode="lean", page_cache=cache).load()

    gen = generator(tiny_models["generator"])
    text = gen.generate(QUESTION, pages, max_new_tokens=8, page_ids=ids)
    paths = [images.sidecar_path(pid, FEATURES_SIDECAR) for pid in ids]
    assert all(p.is_file() for p in paths)
    gen.close()

    again = generator(tiny_models["generator"])  # a new process: nothing in memory
    assert again.generate(QUESTION, pages, max_new_tokens=8, page_ids=ids) == text
    assert (again.page_cache.disk_hits, again.page_cache.misses) == (2, 0)
    changed = _pages(1, seed=9)[0]
    before = paths[0].stat().st_mtime_ns
    again.generate(QUESTION, [changed, pages[1]], max_new_tokens=8, page_ids=ids)
    assert again.page_cache.misses == 1 and paths[0].stat().st_mtime_ns != before  # recomputed, overwritten
    again.close()

    other = tmp_path / "other-model"
    from testkit.checkpoints import build_generator

    build_generator(other, seed=5)
    gen2 = generator(other)
    gen2.generate(QUESTION, pages, max_new_tokens=4, page_ids=ids)
    assert gen2.page_cache.misses == 2  # another model's features never match
    gen2.close()

    assert images.delete(ids) == 2
    assert not any(p.exists() for p in paths)


def test_pipeline_precomputes_at_ingest_and_deletes_with_the_document(tiny_models, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text=f"invoice {i}") for i in range(2)])
    settings = tiny_settings(tiny_models, tmp_path / "data", dpi=40, generator_decode="lean", generator_precompute=True)
    with RAGPipeline.from_settings(settings) as rag:
        report = rag.ingest([docs])
        [doc_id] = [f.doc_id for f in report.files if f.doc_id]
        pids = rag.store.page_ids(doc_id)
        sidecars = [rag.images.sidecar_path(pid, FEATURES_SIDECAR) for pid in pids]
        assert len(sidecars) == 2 and all(p.is_file() for p in sidecars)
        gen = rag.generator
        assert isinstance(gen, SmolVLMGenerator)
        misses = gen.page_cache.misses
        answer = rag.answer("what is the invoice total?", k=2, max_new_tokens=4)
        assert answer.sources and gen.page_cache.misses == misses  # the question paid for its text only
        rag.delete(doc_id)
        assert not any(p.exists() for p in sidecars)


def test_settings_wire_the_cpu_path(tiny_models, tmp_path: Path) -> None:
    gen = make_generator(tiny_settings(tiny_models, tmp_path, generator_page_edge=1024))
    assert isinstance(gen, SmolVLMGenerator)
    assert gen.decode_mode == SmolVLMGenerator.CPU_DECODE and gen.image_longest_edge == 1024
    assert gen.page_cache.path_of is None  # memory only unless asked
    disk = make_generator(tiny_settings(tiny_models, tmp_path, generator_page_features="disk"))
    assert isinstance(disk, SmolVLMGenerator) and disk.page_cache.path_of is not None
    assert disk.page_cache.path_of("ab12").name == f"ab12.{FEATURES_SIDECAR}"


def test_fallbacks(tiny_models, tiny_generator: SmolVLMGenerator, monkeypatch) -> None:
    """No fp16 matrix products here: fp32 decode weights. A generation config the lean loop does not apply
    (a repetition penalty): answers go through generate."""
    import rag.generators.smolvlm_lean as lean_mod

    monkeypatch.setattr(lean_mod, "fp16_matmul_works", lambda: False)
    gen = SmolVLMGenerator(tiny_models["generator"], device="cpu", decode="lean-fp16").load()
    assert gen.decode_mode == "lean"
    pages = _pages(2)
    assert gen.generate(QUESTION, pages, max_new_tokens=12) == tiny_generator.generate(
        QUESTION, pages, max_new_tokens=12
    )
    gen.close()
    monkeypatch.undo()

    gen = SmolVLMGenerator(tiny_models["generator"], device="cpu", decode="lean")
    gen.model.generation_config.repetition_penalty = 1.3
    gen.load()
    assert gen._lean_unsupported == ["repetition_penalty"]
    assert "pixel_values" in gen.build_inputs(QUESTION, pages)
    assert isinstance(gen.generate(QUESTION, pages, max_new_tokens=4), str)
    gen.close()


def test_concurrent_lean_generations_take_turns(lean: SmolVLMGenerator) -> None:
    """One key/value cache per generator: answers on several threads equal the same answers one by one."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(QUESTION, _pages(2)), ("hi?", []), ("Who signed?", _pages(1, seed=3))]
    alone = [lean.generate(q, p, max_new_tokens=12) for q, p in jobs]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda job: lean.generate(job[0], job[1], max_new_tokens=12), jobs))
    assert together == alone
