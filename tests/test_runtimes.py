"""Encoder runtime selection (indexer.models.runtimes, indexer.models.vision_runtimes) and the page resolution setting.

Selection is tested on hand-made candidates (what is chosen, skipped, cached, re-measured), then on the tiny
checkpoint with the real candidates. Nothing here asserts a speed: which runtime wins depends on the machine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.errors import ConfigError, InvalidRequest
from indexer.models.encoder import ColSmolEncoder
from indexer.models.runtimes import Candidate, ChoiceCache, choose, token_cosine_min

REF = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


class Probe:
    """Runs a candidate's value (a zero-argument function returning its output), counting the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, value):
        name, out = value()
        self.calls.append(name)
        return out


def _value(name: str, out: torch.Tensor, delay: float = 0.0):
    def run():
        if delay:
            import time

            time.sleep(delay)
        return name, out

    return run


def _broken() -> None:
    raise ImportError("no such runtime library here")


def _candidates(builds: list[str]) -> list[Candidate]:
    """fp32 (slow), a fast one that fails fidelity, one that raises, one that is faithful and faster than fp32."""

    def build(name, value):
        def b():
            builds.append(name)
            return value

        return b

    return [
        Candidate("fp32", build("fp32", _value("fp32", REF, delay=0.03))),
        Candidate("wrong", build("wrong", _value("wrong", REF[[1, 0]]))),
        Candidate("broken", _broken),
        Candidate("good", build("good", _value("good", REF * 2 + 1e-4, delay=0.005))),
    ]


def test_auto_skips_a_candidate_that_raises_and_one_that_fails_fidelity(caplog) -> None:
    builds: list[str] = []
    with caplog.at_level(logging.INFO, logger="indexer.models.runtimes"):
        choice = choose(_candidates(builds), Probe(), token_cosine_min, what="test")
    assert choice.name == "good" and not choice.cached
    trials = {t.name: t for t in choice.trials}
    assert trials["broken"].error is not None and "ImportError" in trials["broken"].error
    assert trials["wrong"].error is not None and "fidelity" in trials["wrong"].error
    assert trials["good"].ok and trials["good"].fidelity > 0.998 and trials["fp32"].ok
    assert "good chosen" in caplog.text and "no such runtime library" in caplog.text


def test_named_runtime_is_built_without_probing_and_falls_back_when_it_cannot(caplog) -> None:
    probe = Probe()
    builds: list[str] = []
    assert choose(_candidates(builds), probe, token_cosine_min, requested="wrong").name == "wrong"
    assert probe.calls == []  # asked for by name: not measured, not gated
    with caplog.at_level(logging.WARNING, logger="indexer.models.runtimes"):
        fallback = choose(_candidates(builds), probe, token_cosine_min, requested="broken", what="encoder")
    assert fallback.name == "fp32" and "broken unavailable" in fallback.reason
    assert "encoder runtime broken unavailable (ImportError: no such runtime library here); using fp32" in caplog.text
    with pytest.raises(ValueError, match="unknown"):
        choose(_candidates(builds), probe, token_cosine_min, requested="nope")


def test_cache_is_reused_and_invalidated_when_its_key_changes(tmp_path: Path) -> None:
    cache = ChoiceCache(tmp_path / "runtimes" / "choices.json")
    key = {"cpu": "test cpu", "torch": "1.0", "model": "m"}
    builds: list[str] = []
    probe = Probe()
    first = choose(_candidates(builds), probe, token_cosine_min, cache=cache, key=key)
    assert first.name == "good" and probe.calls, "the first use measures"
    saved = json.loads(cache.path.read_text())
    (record,) = saved.values()
    assert record["choice"] == "good" and record["key"]["cpu"] == "test cpu"

    probe.calls.clear()
    builds.clear()
    again = choose(_candidates(builds), probe, token_cosine_min, cache=cache, key=key)
    assert again.name == "good" and again.cached and probe.calls == [] and builds == ["good"]
    assert {t.name for t in again.trials} == {"fp32", "wrong", "broken", "good"}  # the measurements behind it

    other = choose(_candidates(builds), probe, token_cosine_min, cache=cache, key={**key, "torch": "2.0"})
    assert not other.cached and probe.calls, "a new torch version measures again"
    assert len(json.loads(cache.path.read_text())) == 2

    cache.path.write_text("{not json")  # a damaged file is an empty cache, then rewritten
    assert not choose(_candidates(builds), probe, token_cosine_min, cache=cache, key=key).cached
    assert len(json.loads(cache.path.read_text())) == 1


def test_a_cached_choice_that_no_longer_builds_is_measured_again(tmp_path: Path) -> None:
    cache = ChoiceCache(tmp_path / "choices.json")
    key = {"cpu": "x"}
    builds: list[str] = []
    assert choose(_candidates(builds), Probe(), token_cosine_min, cache=cache, key=key).name == "good"
    cands = _candidates(builds)
    cands[3] = Candidate("good", _broken)  # say its library was uninstalled since
    choice = choose(cands, Probe(), token_cosine_min, cache=cache, key=key)
    assert choice.name == "fp32" and not choice.cached


# ---------------------------------------------------------------------------------------------- tiny encoder
def _pages(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    sizes = [(85, 110), (100, 20), (64, 64)][:n]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _cosines(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return min(token_cosine_min(torch.from_numpy(x), torch.from_numpy(y)) for x, y in zip(a, b, strict=True))


def test_every_runtime_embeds_like_fp32_on_the_tiny_encoder(tiny_models, tiny_encoder, tmp_path: Path) -> None:
    from indexer.models.vision_runtimes import RUNTIMES, tower_candidates, vision_tower

    assert [c.name for c in tower_candidates(vision_tower(tiny_encoder.model), "m")] == list(RUNTIMES)
    pages = _pages()
    ref = tiny_encoder.embed_pages(pages)
    queries = tiny_encoder.embed_queries(["annual report"])
    for name in RUNTIMES[1:]:
        enc = ColSmolEncoder(tiny_models["encoder"], device="cpu", runtime=name, runtime_cache=tmp_path).load()
        assert enc.runtime_choice is not None
        if enc.runtime_choice.name != name:  # e.g. openvino-bf16 on a CPU without native bf16
            assert "unavailable" in enc.runtime_choice.reason
            continue
        assert _cosines(ref, enc.embed_pages(pages)) >= 0.998, name
        # queries never touch the vision tower: identical whatever runs the pages
        np.testing.assert_array_equal(enc.embed_queries(["annual report"])[0], queries[0])
    assert list(tmp_path.glob("openvino/*/vision.xml")), "the converted tower is kept for the next process"


def test_auto_picks_caches_and_embeds_within_fidelity(tiny_models, tiny_encoder, tmp_path: Path, monkeypatch) -> None:
    from indexer.models import runtimes, vision_runtimes
    from indexer.models.vision_runtimes import RUNTIMES

    # The torch runtimes always fit (however loaded the machine), a conversion never does: the OpenVINO runtimes
    # wait for a later load.
    monkeypatch.setattr(runtimes, "MIN_BUDGET_S", 600.0)
    monkeypatch.setattr(vision_runtimes, "CONVERT_S", 1e9)
    first = ColSmolEncoder(tiny_models["encoder"], device="cpu", runtime="auto", runtime_cache=tmp_path).load()
    choice = first.runtime_choice
    assert choice is not None and not choice.cached and first.calibration_seconds > 0
    assert {t.name for t in choice.trials} == {"fp32", "int8", "bf16"}
    assert choice.pending == ["openvino", "openvino-bf16"]
    assert all(t.ok or t.error for t in choice.trials)
    (record,) = json.loads((tmp_path / "choices.json").read_text()).values()
    assert record["choice"] == choice.name and record["key"]["model"] == str(tiny_models["encoder"])
    assert record["pending"] == ["openvino", "openvino-bf16"]
    assert _cosines(tiny_encoder.embed_pages(_pages()), first.embed_pages(_pages())) >= 0.998

    second = ColSmolEncoder(tiny_models["encoder"], device="cpu", runtime="auto", runtime_cache=tmp_path).load()
    assert second.runtime_choice is not None and second.runtime_choice.cached
    assert second.runtime_choice.name == choice.name and second.calibration_seconds == 0

    monkeypatch.setattr(vision_runtimes, "CONVERT_S", 0.0)  # say the converted graph is on disk by now
    third = ColSmolEncoder(tiny_models["encoder"], device="cpu", runtime="auto", runtime_cache=tmp_path).load()
    assert third.runtime_choice is not None and not third.runtime_choice.cached
    trials = {t.name for t in third.runtime_choice.trials}
    # The conversion itself may use up this load's budget: then openvino-bf16 waits for the next one.
    assert {"fp32", "int8", "bf16", "openvino"} <= trials and set(third.runtime_choice.pending) <= {"openvino-bf16"}
    assert trials | set(third.runtime_choice.pending) == set(RUNTIMES)
    (record,) = json.loads((tmp_path / "choices.json").read_text()).values()
    assert record["pending"] == third.runtime_choice.pending and record["choice"] == third.runtime_choice.name


def test_new_weights_at_the_same_path_are_measured_again(tiny_models, tmp_path: Path) -> None:
    import os
    import shutil

    from indexer.models.loading import weights_identity

    model = shutil.copytree(tiny_models["encoder"], tmp_path / "model")
    before = weights_identity(str(model))
    weights = next(model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # "retrained"
    assert weights_identity(str(model)) != before  # part of the choice's cache key and of the converted graph's path


def test_unknown_runtime_is_refused(tiny_models) -> None:
    with pytest.raises(InvalidRequest, match="openvino-bf16"):
        ColSmolEncoder(tiny_models["encoder"], runtime="tensorrt")


def test_openvino_tower_sends_partial_patch_masks_to_torch(tiny_encoder, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from indexer.models.vision_runtimes import tower_candidates, vision_tower

    tower = vision_tower(tiny_encoder.model)
    ov_tower = {c.name: c for c in tower_candidates(tower, "m", tmp_path)}["openvino"].build()
    size, patch = tower.config.image_size, tower.config.patch_size
    x = torch.randn(2, 3, size, size)
    mask = torch.ones(2, size // patch, size // patch, dtype=torch.bool)
    mask[1, :, -1] = False  # the last column of patches is padding in the second image
    with torch.inference_mode():
        want = tower(pixel_values=x, patch_attention_mask=mask).last_hidden_state
        got = ov_tower(pixel_values=x, patch_attention_mask=mask).last_hidden_state
        torch.testing.assert_close(got, want)
        whole = ov_tower(pixel_values=x, patch_attention_mask=torch.ones_like(mask)).last_hidden_state
        full = tower(pixel_values=x, patch_attention_mask=torch.ones_like(mask)).last_hidden_state
    assert token_cosine_min(full, whole) > 0.9999


# ---------------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("preprocess", ["tensor", "reference"])
def test_longest_edge_sets_tiles_and_tokens_in_both_paths(tiny_models, preprocess: str) -> None:
    page = Image.new("RGB", (85, 110), "white")  # portrait, like a Letter page
    counts = {}
    for edge in (None, 32, 96, 100):
        enc = ColSmolEncoder(tiny_models["encoder"], device="cpu", preprocess=preprocess, longest_edge=edge)
        batch = enc.preprocess_pages([page])
        views = int(batch["pixel_attention_mask"][0].flatten(1).any(1).sum())
        assert views == enc.tile_count(page)
        counts[edge] = (enc.page_longest_edge, views, int(batch["attention_mask"].sum()))
    tile = 32  # testkit's tiny geometry: 32 px tiles, 4 tokens a tile, model longest edge 64
    assert counts[None][:2] == (64, 2 * 2 + 1)
    assert counts[32][:2] == (32, 1)  # one tile: the global view alone
    assert counts[96][:2] == (96, 3 * 3 + 1)
    assert counts[100] == counts[96], "rounded to whole tiles"
    assert counts[32][2] < counts[None][2] < counts[96][2]
    assert counts[96][2] - counts[None][2] >= (10 - 5) * (tile // 8) ** 2 // 4


def test_both_paths_agree_at_another_resolution(tiny_models) -> None:
    page = Image.fromarray(np.random.default_rng(3).integers(0, 255, (110, 85, 3), dtype=np.uint8))
    a = ColSmolEncoder(tiny_models["encoder"], device="cpu", preprocess="tensor", longest_edge=96)
    b = ColSmolEncoder(tiny_models["encoder"], device="cpu", preprocess="reference", longest_edge=96)
    x, y = a.preprocess_pages([page]), b.preprocess_pages([page])
    for key in ("input_ids", "attention_mask", "pixel_attention_mask"):
        assert torch.equal(x[key], y[key]), key
    assert (x["pixel_values"] - y["pixel_values"]).abs().max() <= 4 / 255 + 1e-6


def test_collection_records_resolution_and_refuses_another(tiny_models, tmp_path: Path) -> None:
    from rag.pipeline import RAGPipeline
    from tests.conftest import tiny_settings

    docs = tmp_path / "docs"
    docs.mkdir()
    Image.new("RGB", (85, 110), "white").save(docs / "a.png")
    data = tmp_path / "data"
    with RAGPipeline.from_settings(tiny_settings(tiny_models, data)) as rag:
        assert rag.ingest([docs]).pages_embedded == 1
        assert rag.store.get_meta()["page_longest_edge"] == 64  # the model's own, recorded at first ingest
        assert rag.search("white page", k=1)
    Image.new("RGB", (110, 85), "gray").save(docs / "b.png")
    with RAGPipeline.from_settings(tiny_settings(tiny_models, data, page_longest_edge=96)) as rag:
        with pytest.raises(ConfigError) as info:
            rag.search("white page", k=1)
        msg = str(info.value)
        assert "64 px" in msg and "96 px" in msg and "COLSMOL_PAGE_LONGEST_EDGE=64" in msg and "\n" not in msg
        with pytest.raises(ConfigError, match="COLSMOL_PAGE_LONGEST_EDGE=64"):
            rag.ingest([docs])
        assert rag.store.count_pages() == 1, "nothing was written at the other resolution"

        rag.store.update_meta({"page_longest_edge": None})  # a collection from before the record existed
        with pytest.raises(ConfigError, match="64 px"):  # counts as the model's own
            rag.search("white page", k=1)

