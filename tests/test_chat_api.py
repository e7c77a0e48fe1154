"""colsmol as an OpenAI-compatible model and as an MCP server, driven by the official clients.

One pipeline (tiny random checkpoints, Qdrant Edge in a tmp dir) behind one live uvicorn serves the OpenAI SDK
(``/v1/chat/completions``, ``/v1/models``) and the MCP SDK's streamable HTTP client (``/mcp``); ``colsmol mcp`` is
spawned as a process for the MCP SDK's stdio client. Faults of an answer backend reach clients through the API
as OpenAI-shaped 5xx errors (the backend is the fault server of :mod:`testkit.servers`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from api.http.app import create_app
from indexer.settings import Settings
from rag.generators.openai import OpenAIGenerator
from rag.pipeline import MAX_QUESTION_CHARS, RAGPipeline
from testkit.pdfs import LETTER, PageSpec, write_pdf
from testkit.servers import FaultServer, LiveServer, free_port
from tests.conftest import tiny_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return tiny_settings(tiny_models, tmp_path_factory.mktemp("chat-data"), max_new_tokens=8, dpi=50)


def _docs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_pdf(root / "report.pdf", [PageSpec(LETTER[0] / 2, LETTER[1] / 2, text=t) for t in ("revenue 2023", "costs")])
    write_pdf(root / "memo.pdf", [PageSpec(LETTER[0] / 2, LETTER[1] / 2, text="memo")])
    return root


@pytest.fixture(scope="module")
def pipeline(settings: Settings):
    rag = RAGPipeline.from_settings(settings)
    rag.ingest([_docs(settings.data_dir.parent / "chat-docs")])
    yield rag
    rag.close()


@pytest.fixture(scope="module")
def live(settings: Settings, pipeline: RAGPipeline) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings, pipeline)) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def _ask(question: str = "What was the revenue?") -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": question}]


# ---------------------------------------------------------------------------------------------- OpenAI API
def test_models_list_the_rag_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["colsmol"]
    assert client.models.retrieve("colsmol").id == "colsmol"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_completion_cites_pages_and_streams_the_same_answer(client: openai.OpenAI, live: LiveServer) -> None:
    # temperature, top_p, user and seed are what SDKs and chat tools send: accepted and ignored.
    common: dict[str, Any] = dict(model="colsmol", messages=_ask(), max_tokens=6, temperature=0.7, top_p=0.9)
    common.update(user="u1", seed=1, extra_body={"k": 2})
    done = client.chat.completions.create(**common)
    text = done.choices[0].message.content or ""
    citations = (done.model_extra or {})["citations"]
    assert done.object == "chat.completion" and done.model == "colsmol" and done.choices[0].finish_reason == "stop"
    assert len(citations) == 2 and [c["rank"] for c in citations] == [1, 2]
    assert text.endswith(f"- [2] {citations[1]['file_name']}, page {citations[1]['page_number']}")
    assert "Sources:\n- [1] " in text
    image = httpx.get(citations[0]["image_url"], timeout=30)  # absolute URLs a client can fetch as they are
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"

    chunks = list(client.chat.completions.create(**common, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == text  # greedy: the streamed answer is the same answer, sources list included
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and (last.model_extra or {})["citations"] == citations

    # The raw stream is OpenAI's SSE: data lines, then [DONE].
    body = {"model": "colsmol", "messages": _ask(), "max_tokens": 2, "stream": True, "k": 1}
    raw = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60).text
    events = [block for block in raw.strip().split("\n\n")]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-1])


def test_filter_and_k_as_in_the_answer_api(client: openai.OpenAI, pipeline: RAGPipeline) -> None:
    memo = next(d.doc_id for d in pipeline.documents() if d.file_name == "memo.pdf")
    done = client.chat.completions.create(
        model="colsmol", messages=_ask("memo?"), max_tokens=2, extra_body={"k": 3, "filter": {"doc_id": memo}}
    )
    assert [c["doc_id"] for c in (done.model_extra or {})["citations"]] == [memo]


def test_the_last_user_message_is_the_question_and_text_parts_are_read(client: openai.OpenAI) -> None:
    messages = [
        {"role": "user", "content": "an earlier question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": [{"type": "text", "text": "What about costs?"}]},
    ]
    done = client.chat.completions.create(model="colsmol", messages=messages, max_tokens=2)  # type: ignore[arg-type]
    assert done.choices[0].message.content is not None and (done.model_extra or {})["citations"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "colsmol", "messages": []}, "messages"),
        ({"model": "colsmol", "messages": [{"role": "system", "content": "hi"}]}, None),
        ({"model": "colsmol", "messages": [{"role": "user", "content": "   "}]}, None),
        ({"model": "colsmol", "messages": [{"role": "user", "content": "q" * (MAX_QUESTION_CHARS + 1)}]}, None),
        ({"model": "colsmol", "messages": [{"role": "user", "content": 5}]}, "messages.0.content.str"),
        ({"model": "colsmol", "messages": [{"role": "user", "content": "x"}], "k": 99}, "k"),
        ({"model": "colsmol", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"model": "colsmol", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"model": "colsmol", "messages": [{"role": "user", "content": "x"}], "filter": {"bogus": 1}}, None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_bad_requests_are_openai_400s(live: LiveServer, body: dict[str, Any], param: str | None) -> None:
    r = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param


def test_unknown_model_oversized_and_malformed_bodies(client: openai.OpenAI, live: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=_ask())
    assert "'gpt-4o' does not exist" in info.value.message and info.value.code == "model_not_found"
    huge = {"model": "colsmol", "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    r = httpx.post(live.url + "/v1/chat/completions", json=huge, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
        for _ in range(9):
            yield b" " * (1024 * 1024)

    r = httpx.post(live.url + "/v1/chat/completions", content=chunked(), timeout=30)
    assert r.status_code == 413
    json_type = {"content-type": "application/json"}
    r = httpx.post(live.url + "/v1/chat/completions", content=b'{"model": ', headers=json_type, timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_api_key_guards_chat_and_mcp(settings: Settings, pipeline: RAGPipeline) -> None:
    keyed = settings.model_copy(update={"api_key": "s3cret"})
    with LiveServer(create_app(keyed, pipeline)) as server:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as info:
                bad.models.list()
            assert info.value.response.headers["www-authenticate"] == "Bearer"
            assert info.value.body["type"] == "authentication_error"  # type: ignore[index]
        with openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0) as good:
            assert [m.id for m in good.models.list()] == ["colsmol"]
        r = httpx.post(server.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=30)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        tools = asyncio.run(_mcp_http(server.url, {"Authorization": "Bearer s3cret"}, _list_tools))
        assert "search" in tools


class _SlowRecorder:
    """The pipeline's generator for one test: pieces every 50 ms, up to max_new_tokens, recording how the stream
    ended. It stands in for a long generation so a disconnect lands mid-stream."""

    def __init__(self) -> None:
        self.model_id, self.loaded = "slow", True
        self.pieces = 0
        self.ended = threading.Event()

    def load(self) -> _SlowRecorder:
        return self

    def close(self) -> None:
        pass

    def generate(
        self, question: str, pages: Sequence[Any], max_new_tokens: int = 256, stop: Any = None, page_ids: Any = None
    ) -> str:
        return "".join(self.stream(question, pages, max_new_tokens, stop))

    def stream(
        self, question: str, pages: Sequence[Any], max_new_tokens: int = 256, stop: Any = None, page_ids: Any = None
    ):
        try:
            for i in range(max_new_tokens):
                if stop is not None and stop.is_set():
                    return
                time.sleep(0.05)
                self.pieces += 1
                yield f"w{i} "
        finally:
            self.ended.set()


def test_client_disconnect_mid_stream_stops_generation(
    live: LiveServer, pipeline: RAGPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = _SlowRecorder()
    monkeypatch.setattr(pipeline, "generator", slow)
    body = {"model": "colsmol", "messages": _ask(), "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # the role chunk and a few pieces, with blank separators
        assert any("w1 " in line for line in got)
    assert slow.ended.wait(10), "generation went on after the client left"
    assert slow.pieces < 200, slow.pieces  # 2,000 pieces would take 100 s

    # The same through an openai backend: colsmol closes its request upstream, and the backend sees it go.
    with FaultServer("slow") as backend:
        monkeypatch.setattr(pipeline, "generator", OpenAIGenerator(backend.url))
        with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert any("t1 " in next(lines) for _ in range(6))
        assert backend.disconnected.wait(10), "the backend kept generating for a client that left"


def test_backend_faults_reach_clients_as_openai_5xx(
    live: LiveServer, client: openai.OpenAI, pipeline: RAGPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer backend that is down or rate limiting: chat, answer and streams get one clear 503, quickly.
    The backend is testkit's fault server: a real llama.cpp server cannot be made to answer 429."""
    port = free_port()  # nothing listens there
    down = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, timeout_s=5)
    monkeypatch.setattr(pipeline, "generator", down)
    for stream in (False, True):
        t = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            list(client.chat.completions.create(model="colsmol", messages=_ask(), stream=stream))  # type: ignore[call-overload]
        assert info.value.status_code == 503 and "cannot be reached" in info.value.message
        assert time.monotonic() - t < 15
    r = httpx.post(live.url + "/v1/answer", json={"question": "revenue?"}, timeout=30)
    assert r.status_code == 503 and "COLSMOL_GENERATOR_URL" in r.json()["detail"]

    with FaultServer("429") as storm:
        monkeypatch.setattr(pipeline, "generator", OpenAIGenerator(storm.url, max_retries=2, timeout_s=5))
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="colsmol", messages=_ask())
        assert "rate limiting" in info.value.message and storm.chat_requests == 3


class _OomOnCall:
    """The real tiny generator's forward, raising CUDA's own out-of-memory error on its ``n``-th call (1: the
    prefill): what a GPU does when another request holds the memory. No GPU here, so the error is injected."""

    def __init__(self, forward: Any, n: int) -> None:
        self.forward, self.n, self.calls = forward, n, 0
        functools.update_wrapper(self, forward)  # generate() reads the forward's signature

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.n:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB\nof 79.1 GiB in use")
        return self.forward(*args, **kwargs)


def test_out_of_gpu_memory_in_an_answer_is_a_503_or_an_error_event(
    live: LiveServer, pipeline: RAGPipeline, tiny_generator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    freed: list[int] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(1))
    monkeypatch.setattr(pipeline, "generator", tiny_generator)  # eager decoding: every step is a forward call
    oom = _OomOnCall(tiny_generator.model.forward, 1)
    monkeypatch.setattr(tiny_generator.model, "forward", oom)
    r = httpx.post(live.url + "/v1/answer", json={"question": "revenue?"}, timeout=60)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
    detail = r.json()["detail"]
    assert "ran out of memory on an answer" in detail and "Tried to allocate 1.00 GiB" in detail
    assert "\n" not in detail and "try again" in detail and freed
    oom.calls = 0
    chat = httpx.post(live.url + "/v1/chat/completions", json={"model": "colsmol", "messages": _ask()}, timeout=60)
    assert chat.status_code == 503 and chat.headers["Retry-After"] == "5"
    assert chat.json()["error"]["code"] == "out_of_memory"

    # Mid-stream (after the prefill and two tokens): the stream ends with an error event, then done.
    oom.calls, oom.n = 0, 4
    with httpx.stream("POST", live.url + "/v1/answer", json={"question": "revenue?", "stream": True}, timeout=60) as s:
        status, body = s.status_code, s.read().decode()
    assert status == 200, body
    events = [line for line in body.splitlines() if line.startswith("event:")]
    assert events[0] == "event: token" and events[-2:] == ["event: error", "event: done"], events
    error = json.loads(body.split("event: error\ndata: ", 1)[1].split("\n", 1)[0])
    assert "ran out of memory on an answer" in error["detail"] and oom.calls == 4


# ---------------------------------------------------------------------------------------------- MCP
async def _mcp_http(url: str, headers: dict[str, str] | None, work: Any) -> Any:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers or {}, timeout=60) as http:
        async with Client(streamable_http_client(url + "/mcp", http_client=http)) as mcp_client:
            return await work(mcp_client)


async def _list_tools(c: Any) -> list[str]:
    return sorted(t.name for t in (await c.list_tools()).tools)


async def _exercise_tools(c: Any) -> dict[str, Any]:
    """Every tool once, and the failures a model would cause: what an agent sees."""
    out: dict[str, Any] = {"tools": await _list_tools(c)}
    found = await c.call_tool("search", {"query": "revenue", "k": 2})
    out["search"] = found
    point_id = found.structured_content["result"][0]["point_id"]
    out["answer"] = await c.call_tool("answer", {"question": "What was the revenue?", "k": 2})
    out["page"] = await c.call_tool("get_page", {"point_id": point_id, "size": "thumb"})
    out["resource"] = await c.read_resource(f"colsmol://pages/{point_id}")
    out["documents"] = await c.call_tool("list_documents", {})
    out["empty_query"] = await c.call_tool("search", {"query": "  "})
    out["bad_filter"] = await c.call_tool("search", {"query": "x", "filter": {"bogus": 1}})
    out["bad_k"] = await c.call_tool("answer", {"question": "x", "k": 99})
    out["no_page"] = await c.call_tool("get_page", {"point_id": "0123abcd"})
    return out


def _check_tools(out: dict[str, Any], over_http: bool) -> None:
    assert out["tools"] == ["answer", "get_page", "list_collections", "list_documents", "search"]
    hits = out["search"].structured_content["result"]
    assert len(hits) == 2 and hits[0]["rank"] == 1 and hits[0]["page_uri"].startswith("colsmol://pages/")
    assert (hits[0]["image_url"] or "").startswith("http://127.0.0.1:") == over_http
    assert all(isinstance(h["regions"], list) for h in hits)  # cited regions (tests/test_api.py checks them)
    answer = out["answer"].structured_content
    assert not out["answer"].is_error and len(answer["sources"]) == 2 and "[2] " in answer["text"]
    assert all(isinstance(s["regions"], list) for s in answer["sources"])
    image = out["page"].content[0]
    assert image.type == "image" and image.mime_type == "image/webp"
    assert base64.b64decode(image.data)[8:12] == b"WEBP"
    blob = out["resource"].contents[0]
    assert blob.mime_type == "image/webp" and base64.b64decode(blob.blob)[8:12] == b"WEBP"
    docs = out["documents"].structured_content["result"]
    assert sorted(d["file_name"] for d in docs) == ["memo.pdf", "report.pdf"]
    assert out["empty_query"].is_error and "the query is empty" in out["empty_query"].content[0].text
    assert out["bad_filter"].is_error and "bogus" in out["bad_filter"].content[0].text
    assert out["bad_k"].is_error
    assert out["no_page"].is_error and "no page with id" in out["no_page"].content[0].text


def test_mcp_over_http(live: LiveServer) -> None:
    _check_tools(asyncio.run(_mcp_http(live.url, None, _exercise_tools)), over_http=True)
    # A browser page on another origin cannot drive the tools.
    r = httpx.post(live.url + "/mcp", json={}, headers={"Origin": "http://evil.example"}, timeout=30)
    assert r.status_code == 403


def test_mcp_over_stdio(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """``colsmol mcp`` as a chat app starts it: a child process speaking MCP on stdin/stdout."""
    from mcp import Client, StdioServerParameters

    data = tmp_path / "data"
    with RAGPipeline.from_settings(tiny_settings(tiny_models, data, dpi=50)) as rag:
        rag.ingest([_docs(tmp_path / "docs")])
    env = {
        "COLSMOL_DATA_DIR": str(data),
        "COLSMOL_ENCODER_MODEL": str(tiny_models["encoder"]),
        "COLSMOL_GENERATOR_MODEL": str(tiny_models["generator"]),
        "COLSMOL_DEVICE": "cpu",
        "COLSMOL_MAX_NEW_TOKENS": "4",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "api.cli", "mcp"], env=env, cwd=Path.cwd())

    async def run() -> dict[str, Any]:
        async with Client(params, read_timeout_seconds=120) as c:
            return await _exercise_tools(c)

    _check_tools(asyncio.run(run()), over_http=False)


def test_openapi_documents_the_chat_endpoint(live: LiveServer) -> None:
    schema = httpx.get(live.url + "/openapi.json", timeout=30).json()
    assert "/v1/chat/completions" in schema["paths"] and "/v1/models" in schema["paths"]
    assert "/mcp" not in schema["paths"]
    body = json.dumps(schema["components"]["schemas"]["ChatCompletion"])
    assert "citations" in body
