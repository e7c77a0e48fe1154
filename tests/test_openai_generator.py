"""The OpenAI-compatible generator backend against real servers.

- llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server`` from llama-cpp-python, built from source by
  the test extra) serving the tiny random SmolVLM converted to GGUF + vision projector with llama.cpp's own
  converter: answers, streaming, stop, models, images really read, and colsmol's pipeline and API on top.
- testkit's fault server (a tiny real HTTP server) for what a real server cannot be made to do on cue: 429 and
  5xx storms, a hang, an empty stream, a 400 refusing images, a stream that never ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from indexer.errors import ConfigError, InvalidRequest, ModelUnavailable
from indexer.settings import Settings
from rag.generators import make_generator
from rag.generators.openai import OpenAIGenerator
from rag.generators.prompt import PAGE_LONGEST_EDGE, SYSTEM_INSTRUCTION
from testkit.servers import FaultServer, LlamaCppServer, convert_to_gguf, free_port, llama_cpp_converter


def _pages(n: int, size: tuple[int, int] = (85, 110)) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- settings
def test_settings_select_and_configure_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLSMOL_GENERATOR_BACKEND", "openai")
    monkeypatch.setenv("COLSMOL_GENERATOR_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("COLSMOL_GENERATOR_API_KEY", "k")
    monkeypatch.setenv("COLSMOL_GENERATOR_MODEL_NAME", "qwen2.5-vl")
    monkeypatch.setenv("COLSMOL_GENERATOR_TIMEOUT_S", "30")
    gen = make_generator(Settings())
    assert isinstance(gen, OpenAIGenerator) and not gen.loaded
    assert (gen.base_url, gen.model, gen.timeout_s) == ("http://127.0.0.1:8080/v1", "qwen2.5-vl", 30)
    assert gen.max_retries == 2 and gen._api_key == "k"
    monkeypatch.setenv("COLSMOL_GENERATOR_URL", "")
    with pytest.raises(ConfigError, match="needs COLSMOL_GENERATOR_URL"):
        make_generator(Settings())
    with pytest.raises(ConfigError, match="not an http"):
        OpenAIGenerator("127.0.0.1:8080")


def test_messages_carry_fitted_pages_then_the_shared_instruction() -> None:
    import base64
    import io

    gen = OpenAIGenerator("http://127.0.0.1:1/v1", model="m", image_format="png")
    big = _pages(1, (2000, 2600))[0]
    [message] = gen.build_messages("  Which year?  ", [big, _pages(1)[0]])
    parts = message["content"]
    assert message["role"] == "user" and [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[2]["text"] == f"{SYSTEM_INSTRUCTION}\nQuestion: Which year?"
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as shown:
        assert max(shown.size) == PAGE_LONGEST_EDGE  # the page budget SmolVLM uses
    with pytest.raises(InvalidRequest):
        gen.build_messages(" ", [])


# ---------------------------------------------------------------------------------------------- faults
def test_unreachable_server_is_one_line_quickly() -> None:
    gen = OpenAIGenerator(f"http://127.0.0.1:{free_port()}/v1", model="m", max_retries=2)
    t = time.monotonic()
    with pytest.raises(ModelUnavailable, match="cannot be reached .*COLSMOL_GENERATOR_URL") as info:
        gen.load()
    assert time.monotonic() - t < 10 and "\n" not in str(info.value)
    assert not gen.loaded


def test_rate_limit_and_server_error_storms_end_after_bounded_retries() -> None:
    for mode, words in (("429", "rate limiting (429 after 2 retries)"), ("500", "failed (500 after 2 retries")):
        with FaultServer(mode) as server:
            gen = OpenAIGenerator(server.url, max_retries=2)
            t = time.monotonic()
            with pytest.raises(ModelUnavailable) as info:
                gen.generate("q?", _pages(1))
            assert words in str(info.value), info.value
            assert server.chat_requests == 3 and time.monotonic() - t < 15  # 1 + 2 retries with backoff


def test_refused_images_empty_answers_and_hangs_are_clear() -> None:
    with FaultServer("400-images") as server:
        with pytest.raises(ModelUnavailable, match="must accept images: .*--mmproj") as info:
            OpenAIGenerator(server.url).generate("q?", _pages(1))
        assert "image input is not supported" in str(info.value) and server.chat_requests == 1  # 4xx: no retry
    with FaultServer("empty") as server:
        with pytest.raises(ModelUnavailable, match="returned no text for model 'fault-model'"):
            OpenAIGenerator(server.url).generate("q?", _pages(1))
        with pytest.raises(ModelUnavailable, match="returned no text"):
            list(OpenAIGenerator(server.url).stream("q?", []))
    with FaultServer("hang") as server:
        gen = OpenAIGenerator(server.url, timeout_s=1, max_retries=1)
        t = time.monotonic()
        with pytest.raises(ModelUnavailable, match="did not answer within 1 s"):
            gen.generate("q?", [])
        assert time.monotonic() - t < 8


def test_unknown_or_ambiguous_model_names_the_served_ones() -> None:
    with FaultServer("empty", models=("llava", "qwen2.5-vl")) as server:
        with pytest.raises(ModelUnavailable, match=r"has no model 'gpt-4o' \(it serves: llava, qwen2.5-vl\)"):
            OpenAIGenerator(server.url, model="gpt-4o").load()
        with pytest.raises(ModelUnavailable, match="serves 2 models .*COLSMOL_GENERATOR_MODEL_NAME"):
            OpenAIGenerator(server.url).load()
        assert OpenAIGenerator(server.url, model="llava").load().loaded
        wrong_path = server.url.replace("/v1", "/nope")
        with pytest.raises(ModelUnavailable, match="does not list its models"):
            OpenAIGenerator(wrong_path).load()
        with pytest.raises(ModelUnavailable, match="404.*ends with the API base"):
            OpenAIGenerator(wrong_path, model="llava").generate("q?", [])


def test_stop_and_close_end_the_request() -> None:
    """A stream that would never end: setting stop, or closing the iterator, closes the connection."""
    with FaultServer("slow") as server:
        gen = OpenAIGenerator(server.url)
        stop = threading.Event()
        pieces = gen.stream("q?", [], max_new_tokens=10_000, stop=stop)
        assert next(pieces) == "t0 "
        stop.set()
        assert list(pieces) == []  # at most the piece already on its way is dropped
        assert server.disconnected.wait(5), "the server kept streaming to nobody"
    with FaultServer("slow") as server:
        pieces = OpenAIGenerator(server.url).stream("q?", [], max_new_tokens=10_000)
        next(pieces)
        pieces.close()
        assert server.disconnected.wait(5)


# ---------------------------------------------------------------------------------------------- llama.cpp
@pytest.fixture(scope="module")
def gguf(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"llama-cpp-python[server] is not installed ({exc}); scripts/test.sh installs it (test extra)")
    converter = llama_cpp_converter()
    if converter is None:
        pytest.skip(f"llama.cpp's converter is not in {sys.prefix}/share/llama.cpp; scripts/setup.sh puts it there")
    return convert_to_gguf(tiny_models["generator"], tmp_path_factory.mktemp("gguf"), converter)


@pytest.fixture(scope="module")
def llama(gguf: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    log = tmp_path_factory.mktemp("llama-log") / "server.log"
    with LlamaCppServer(gguf[0], gguf[1], alias="tiny-smolvlm", log=log) as server:
        yield server


def test_answers_from_llama_cpp_server(llama: LlamaCppServer) -> None:
    gen = OpenAIGenerator(llama.url).load()  # no model name: the server's only model
    assert gen.loaded and gen.model_id == "tiny-smolvlm"
    pages = _pages(2)
    text = gen.generate("What is the total amount due?", pages, max_new_tokens=12)
    assert text and text == text.strip()
    assert "".join(gen.stream("What is the total amount due?", pages, max_new_tokens=12)).strip() == text
    gen.close()
    assert not gen.loaded


def test_llama_cpp_server_reads_the_pages_as_images(llama: LlamaCppServer) -> None:
    """The data URLs reach llama.cpp's vision projector: each page adds image tokens to the prompt."""
    import openai

    gen = OpenAIGenerator(llama.url)
    with openai.OpenAI(base_url=llama.url, api_key="none", max_retries=0, timeout=60) as client:

        def prompt_tokens(n_pages: int) -> int:
            messages: Any = gen.build_messages("Which year?", _pages(n_pages))
            done = client.chat.completions.create(model="tiny-smolvlm", messages=messages, max_tokens=1)
            assert done.usage is not None
            return done.usage.prompt_tokens

        none, one, two = prompt_tokens(0), prompt_tokens(1), prompt_tokens(2)
    assert two - one == one - none > 0


def test_stop_on_llama_cpp_server(llama: LlamaCppServer) -> None:
    stop = threading.Event()
    pieces = OpenAIGenerator(llama.url).stream("q?", _pages(1), max_new_tokens=200, stop=stop)
    first = next(pieces)
    stop.set()
    assert first and len(list(pieces)) <= 1


def test_unknown_model_on_llama_cpp_server(llama: LlamaCppServer) -> None:
    with pytest.raises(ModelUnavailable, match=r"no model 'gpt-4o' \(it serves: tiny-smolvlm\)"):
        OpenAIGenerator(llama.url, model="gpt-4o").load()


def test_pipeline_api_and_cli_on_the_llama_cpp_backend(
    llama: LlamaCppServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """colsmol unchanged on top of the backend: RAGPipeline, the HTTP API (stream and not), `colsmol answer`."""
    from fastapi.testclient import TestClient

    from api.http.app import create_app
    from rag.pipeline import RAGPipeline
    from testkit.pdfs import LETTER, PageSpec, write_pdf
    from tests.conftest import tiny_settings

    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(LETTER[0] / 2, LETTER[1] / 2, text=f"alpha {i}") for i in range(2)])
    settings = tiny_settings(
        tiny_models, tmp_path / "data", dpi=50, generator_backend="openai", generator_url=llama.url, max_new_tokens=6
    )
    with RAGPipeline.from_settings(settings) as rag:
        assert isinstance(rag.generator, OpenAIGenerator)
        rag.ingest([docs])
        answer = rag.answer("what is alpha?", k=2)
        assert answer.text and len(answer.sources) == 2
        with TestClient(create_app(settings, rag)) as client:
            r = client.post("/v1/answer", json={"question": "what is alpha?", "k": 1})
            assert r.status_code == 200 and r.json()["text"] and len(r.json()["sources"]) == 1
            r = client.post("/v1/answer", json={"question": "what is alpha?", "k": 1, "stream": True})
            assert "event: token" in r.text and r.text.rstrip().endswith("event: done\ndata: {}")
    env = dict(os.environ, COLSMOL_DATA_DIR=str(tmp_path / "data"), COLSMOL_ENCODER_MODEL=str(tiny_models["encoder"]))
    env.update(COLSMOL_DEVICE="cpu", COLSMOL_GENERATOR_BACKEND="openai", COLSMOL_GENERATOR_URL=llama.url)
    res = subprocess.run(
        [sys.executable, "-m", "api.cli", "answer", "what is alpha?", "-k", "1", "--max-new-tokens", "4"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Sources:\n  [1] a.pdf, page " in res.stdout


def test_text_only_server_refuses_images_clearly(gguf: tuple[Path, Path], tmp_path: Path) -> None:
    """llama.cpp without the vision projector takes image parts and drops them (llama-cpp-python's server does;
    llama-server answers 400, the fault server's "400-images"): colsmol refuses such a model at load, in one line,
    instead of answering without reading the pages."""
    with LlamaCppServer(gguf[0], None, alias="text-only", log=tmp_path / "server.log") as server:
        with pytest.raises(ModelUnavailable, match="ignores the images sent to model 'text-only'") as info:
            OpenAIGenerator(server.url).generate("q?", _pages(1), max_new_tokens=4)
        assert "\n" not in str(info.value) and "must accept images" in str(info.value)
        assert OpenAIGenerator(server.url, check_vision=False).load().loaded  # the check can be turned off
