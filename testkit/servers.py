"""Real servers on loopback for tests: colsmol's app under uvicorn, a tiny OpenAI-compatible fault server, and
llama.cpp's OpenAI-compatible server (llama-cpp-python) over the tiny generator converted to GGUF.

Every wait has a deadline; every process is stopped by its own handle.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``url`` until it answers 200, ``alive()`` turns False, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if not alive():
            raise RuntimeError(f"the server behind {url} exited before answering")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.1)


class LiveServer:
    """An ASGI app under a real uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# ---------------------------------------------------------------------------------------------- faults
class FaultServer:
    """A tiny real HTTP server speaking just enough of the OpenAI API to misbehave on purpose.

    ``mode`` picks the fault of ``POST /v1/chat/completions``: ``"429"`` / ``"500"`` (always that status, with
    ``Retry-After: 0``), ``"400-images"`` (a 400 refusing image input, as text-only servers do), ``"empty"`` (a
    stream with no text), ``"hang"`` (accept, then never answer), ``"slow"`` (one token every 0.2 s, forever,
    until the client goes). In "empty" and "slow", a request without ``stream`` gets an empty one-shot completion whose
    prompt tokens grow with its images (what the client's vision check asks for). ``GET /v1/models`` lists
    ``models``. ``chat_requests`` counts completion requests; ``disconnected`` is set once a ``slow`` stream's
    client has gone.
    """

    def __init__(self, mode: str, models: tuple[str, ...] = ("fault-model",)) -> None:
        self.mode = mode
        self.models = models
        self.chat_requests = 0
        self.disconnected = threading.Event()
        self.release = threading.Event()  # ends "hang" handlers at shutdown
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in outer.models]})
                else:
                    self._json(404, {"error": {"message": "not found", "type": "not_found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._json(404, {"error": {"message": "not found", "type": "not_found"}})
                    return
                outer.chat_requests += 1
                mode = outer.mode
                if mode in ("429", "500"):
                    message = "Rate limit reached" if mode == "429" else "internal error"
                    self._json(int(mode), {"error": {"message": message, "type": "error"}}, {"Retry-After": "0"})
                elif mode == "400-images":
                    # llama-server's own words when it has no vision projector loaded
                    message = "image input is not supported - hint: you may need to provide the mmproj"
                    self._json(400, {"error": {"code": 400, "message": message, "type": "invalid_request_error"}})
                elif mode == "hang":
                    outer.release.wait(60)
                elif mode in ("empty", "slow") and not request.get("stream"):
                    # A one-shot completion (the client's vision check): image parts cost prompt tokens.
                    contents = [m.get("content") for m in request.get("messages", [])]
                    parts = [p for c in contents if isinstance(c, list) for p in c if isinstance(p, dict)]
                    prompt = 10 + 50 * sum(p.get("type") == "image_url" for p in parts)
                    choice = {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}
                    self._json(
                        200,
                        {
                            "id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice],
                            "usage": {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1},
                        },
                    )  # fmt: skip
                elif mode in ("empty", "slow"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
                        for i in range(0 if mode == "empty" else 10_000):
                            piece = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                            self.wfile.write(f"data: {json.dumps({**chunk, 'choices': [piece]})}\n\n".encode())
                            self.wfile.flush()
                            time.sleep(0.2)
                        self.wfile.write(b"data: [DONE]\n\n")
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        outer.disconnected.set()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------------------------- llama.cpp
def llama_cpp_converter() -> Path | None:
    """llama.cpp's ``convert_hf_to_gguf.py`` as ``scripts/setup.sh`` leaves it in the venv (from the sdist of
    the pinned llama-cpp-python), or None."""
    script = Path(sys.prefix) / "share" / "llama.cpp" / "convert_hf_to_gguf.py"
    return script if script.is_file() else None


# Run by the converter's interpreter: the tiny test tokenizer is a byte-level BPE that llama.cpp's converter
# does not recognize by its hash (it knows published tokenizers), and there is no sentencepiece model to try.
# Its pre-tokenizer is GPT-2's byte-level split, so the conversion is told so; everything else is stock.
_CONVERT = """
import runpy, sys
from pathlib import Path
script = Path(sys.argv[1])
sys.argv = [str(script)] + sys.argv[2:]
sys.path[:0] = [str(script.parent), str(script.parent / "gguf-py")]
from conversion import base, llama
llama.LlamaModel.set_vocab = lambda self: self._set_vocab_gpt2()
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
runpy.run_path(str(script), run_name="__main__")
"""


def convert_to_gguf(
    model_dir: Path, out_dir: Path, converter: Path, outtype: str = "f32", mmproj_outtype: str | None = None
) -> tuple[Path, Path]:
    """A SmolVLM checkpoint as llama.cpp files: ``(model.gguf, mmproj.gguf)`` (about a second each for the tiny one);
    ``outtype`` is the converter's (f32, f16, q8_0...) for the text model, ``mmproj_outtype`` (default the same)
    for the vision projector.

    A copy of the config names the text model's architecture as SmolVLM's published config does
    (``VLlama3ForCausalLM``), which is how the converter tells SmolVLM's text half from other Idefics3 models.
    """
    src = out_dir / "hf"
    src.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.name != "config.json" and not (src / f.name).exists():
            (src / f.name).symlink_to(f)
    config = json.loads((model_dir / "config.json").read_text())
    config["text_config"]["architectures"] = ["VLlama3ForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    model, mmproj = out_dir / "model.gguf", out_dir / "mmproj.gguf"
    for out, extra, kind in ((model, [], outtype), (mmproj, ["--mmproj"], mmproj_outtype or outtype)):
        cmd = [sys.executable, "-c", _CONVERT, str(converter), str(src), "--outfile", str(out), "--outtype", kind]
        res = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=600)
        if res.returncode != 0 or not out.is_file():
            raise RuntimeError(f"GGUF conversion failed:\n{res.stderr[-3000:]}")
    return model, mmproj


class LlamaCppServer:
    """``python -m llama_cpp.server`` (llama.cpp behind an OpenAI-compatible API) as a child process.

    With ``mmproj`` it takes images through llama.cpp's multimodal library (``--chat_format mtmd``: the GGUF's
    own chat template, images where the messages have them); without, it is a text-only server.
    """

    def __init__(
        self, model: Path, mmproj: Path | None, alias: str, log: Path, n_ctx: int = 2048, n_threads: int = 1
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
        ]  # fmt: skip
        if mmproj is not None:
            self.cmd += ["--clip_model_path", str(mmproj), "--chat_format", "mtmd"]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaCppServer:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc
        try:
            wait_http(self.url + "/models", timeout=120, alive=lambda: proc.poll() is None)
        except Exception as exc:
            self.__exit__()
            raise RuntimeError(f"{exc}; its log:\n{self.log.read_text()[-3000:]}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
