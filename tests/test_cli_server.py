"""The CLI while `colsmol serve` owns the data directory: every command goes through the server, same output.

Real processes throughout: `colsmol serve` runs as a subprocess on a free port (tiny models, embedded Qdrant
Edge), and each command is a separate `python -m api.cli` process, as a user types them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.cli import advert
from testkit.pdfs import A4, LETTER, PageSpec, write_pdf
from tests.test_ingest import _cli_env, _colsmol


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """`colsmol serve` as a subprocess; waits until it advertises itself and answers /readyz."""

    def __init__(self, env: dict[str, str], data_dir: Path) -> None:
        self.port = _free_port()
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"colsmol serve exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            assert time.monotonic() < deadline, "colsmol serve did not become ready"
            if advert.read(data_dir, "colsmol") is not None:
                try:
                    if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _json(*args: str, env: dict[str, str]) -> object:
    res = _colsmol(*args, "--json", env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_every_command_goes_through_a_running_server(tiny_models, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text=f"alpha {i}") for i in range(3)])
    data = tmp_path / "data"
    env = _cli_env(tiny_models, data)
    assert _colsmol("ingest", str(docs), "--dpi", "40", env=env).returncode == 0
    local_hits = _json("search", "what is alpha?", "-k", "3", env=env)
    assert any(h["regions"] for h in local_hits), local_hits  # cited regions, the same through the server
    local_docs = _json("documents", env=env)

    server = ServeProcess(env, data)
    try:
        ad = advert.read(data, "colsmol")
        assert ad is not None and ad.pid == server.proc.pid and not ad.auth
        assert oct(advert.advert_path(data, "colsmol").stat().st_mode & 0o777) == "0o600"
        # Read commands: the same output as the CLI gave on its own.
        assert _json("search", "what is alpha?", "-k", "3", env=env) == local_hits
        assert _json("documents", env=env) == local_docs
        # Ingest goes through the server (embedded Qdrant is its), with path semantics and the same report.
        write_pdf(docs / "b.pdf", [PageSpec(*A4, text="beta")])
        report = _json("ingest", str(docs), "--dpi", "40", env=env)
        assert (report["indexed"], report["unchanged"], report["pages_embedded"]) == (1, 1, 1)
        assert {Path(f["path"]).name for f in report["files"]} == {"a.pdf", "b.pdf"}
        names = sorted(d["file_name"] for d in _json("documents", env=env))
        assert names == ["a.pdf", "b.pdf"]
        answer = _json("answer", "what is alpha?", "-k", "2", "--max-new-tokens", "4", env=env)
        assert len(answer["sources"]) == 2 and {"text", "timings", "warnings"} <= set(answer)
        streamed = _colsmol("answer", "what is alpha?", "-k", "2", "--stream", "--max-new-tokens", "4", env=env)
        assert streamed.returncode == 0 and "Sources:" in streamed.stdout
        out = tmp_path / "map.png"
        res = _colsmol("explain", "alpha", "--page", local_hits[0]["point_id"], "--out", str(out), env=env)
        assert res.returncode == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", res.stderr
        assert "query tokens: [" in res.stdout
        res = _colsmol("export", str(tmp_path / "backup"), env=env)
        assert res.returncode == 0 and "exported 4 pages" in res.stdout, res.stderr
        b_id = next(d["doc_id"] for d in _json("documents", env=env) if d["file_name"] == "b.pdf")
        res = _colsmol("delete", b_id, env=env)
        assert res.returncode == 0 and "(1 pages)" in res.stdout, res.stderr
        res = _colsmol("delete", b_id, env=env)  # errors keep the CLI's own wording: one line, exit 1
        assert res.returncode == 1 and res.stderr.count("\n") == 1 and "colsmol documents" in res.stderr
        # A usage error found by the server is still exit 2, one line.
        res = _colsmol("search", "alpha", "--filter", "metadata.flag=1", "-k", "200", env=env)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    finally:
        server.stop()
    assert advert.read(data, "colsmol") is None  # withdrawn at shutdown
    assert [d["file_name"] for d in _json("documents", env=env)] == ["a.pdf"]  # and the CLI works on its own


def test_a_stale_advertisement_is_ignored(tiny_models, tmp_path) -> None:
    """A server killed with -9 leaves its advertisement: a dead pid means the CLI opens the store itself."""
    data = tmp_path / "data"
    env = _cli_env(tiny_models, data)
    write_pdf(tmp_path / "a.pdf", [PageSpec(*LETTER, text="alpha")])
    assert _colsmol("ingest", str(tmp_path / "a.pdf"), "--dpi", "40", env=env).returncode == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = advert.advert_path(data, "colsmol")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"url": f"http://127.0.0.1:{_free_port()}", "pid": dead.pid, "collection": "colsmol", "auth": False,
             "token": "x", "started_at": ""}
        )
    )
    assert len(_json("search", "alpha", env=env)) == 1


def test_a_server_with_a_key(tiny_models, tmp_path) -> None:
    """The CLI uses COLSMOL_API_KEY; without it (or with a wrong one) the error is one line naming the setting."""
    data = tmp_path / "data"
    env = _cli_env(tiny_models, data)
    write_pdf(tmp_path / "a.pdf", [PageSpec(*LETTER, text="alpha")])
    assert _colsmol("ingest", str(tmp_path / "a.pdf"), "--dpi", "40", env=env).returncode == 0
    server = ServeProcess(dict(env, COLSMOL_API_KEY="s3cret"), data)
    try:
        res = _colsmol("search", "alpha", env=env)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "COLSMOL_API_KEY" in res.stderr, res.stderr
        res = _colsmol("search", "alpha", env=dict(env, COLSMOL_API_KEY="wrong"))
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "COLSMOL_API_KEY" in res.stderr, res.stderr
        assert len(_json("search", "alpha", env=dict(env, COLSMOL_API_KEY="s3cret"))) == 1
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_inherited_key(monkeypatch):
    monkeypatch.delenv("COLSMOL_API_KEY", raising=False)
    os.environ.pop("COLSMOL_API_KEY", None)
