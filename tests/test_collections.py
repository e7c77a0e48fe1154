"""Many collections in one server, and keys that reach only their own: through real HTTP (a live uvicorn), with
tiny random checkpoints and Qdrant Edge in a tmp dir.

One server holds the default collection and two created ones at different page resolutions; keys scoped to
``alpha`` are tried against everything in ``beta`` (and the default), by every route and protocol.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.http.app import create_app
from api.keys import KeyStore
from indexer.settings import Settings
from rag.pipeline import RAGPipeline
from testkit.pdfs import LETTER, PageSpec, build_pdf
from testkit.servers import LiveServer
from tests.conftest import tiny_settings

pytestmark = pytest.mark.slow

ROOT = "root-key"
ADMIN = {"Authorization": f"Bearer {ROOT}"}


def _pdf(*texts: str) -> bytes:
    return build_pdf([PageSpec(LETTER[0] * 0.5, LETTER[1] * 0.5, text=t) for t in texts])


@pytest.fixture(scope="module")
def settings(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return tiny_settings(
        tiny_models, tmp_path_factory.mktemp("collections-data"), max_new_tokens=4, dpi=50, api_key=ROOT
    )


@pytest.fixture(scope="module")
def live(settings: Settings):
    rag = RAGPipeline.from_settings(settings)
    app = create_app(settings, rag)
    try:
        with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=120, headers=ADMIN) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client
    finally:
        rag.close()


def wait_job(client: httpx.Client, url: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(url)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["state"] in ("done", "failed", "interrupted"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def ingest(client: httpx.Client, prefix: str, name: str, *texts: str) -> dict[str, Any]:
    r = client.post(f"{prefix}/documents", files=[("files", (name, _pdf(*texts), "application/pdf"))])
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = wait_job(client, f"{prefix}/jobs/{job_id}")
    assert job["state"] == "done" and not job["errors"], job
    return {"job_id": job_id, "doc_id": job["report"]["files"][0]["doc_id"]}


@pytest.fixture(scope="module")
def corpus(live: httpx.Client) -> dict[str, Any]:
    """The default collection and two created ones at different resolutions, one document each."""
    for name, edge in (("alpha", 32), ("beta", 96)):  # tiny model: 32 px tiles
        r = live.post("/v1/collections", json={"name": name, "page_longest_edge": edge, "language": "en"})
        assert r.status_code == 201, r.text
        assert r.json()["settings"]["page_longest_edge"] == edge and r.json()["url"] == f"/v1/collections/{name}"
    out = {
        "default": ingest(live, "/v1", "home.pdf", "home page"),
        "alpha": ingest(live, "/v1/collections/alpha", "a.pdf", "alpha revenue", "alpha costs"),
        "beta": ingest(live, "/v1/collections/beta", "b.pdf", "beta secret plans"),
    }
    hit = live.post("/v1/collections/beta/search", json={"query": "plans", "k": 1}).json()["hits"][0]
    out["beta"]["point_id"] = hit["point_id"]
    return out


def test_collections_live_side_by_side(live: httpx.Client, corpus: dict[str, Any]) -> None:
    listing = live.get("/v1/collections").json()["items"]
    assert [c["name"] for c in listing] == ["colsmol", "alpha", "beta"] and listing[0]["default"]

    for name, pages in (("alpha", 2), ("beta", 1)):
        hits = live.post(f"/v1/collections/{name}/search", json={"query": "revenue", "k": 5}).json()["hits"]
        assert [h["file_name"] for h in hits] == [f"{name[0]}.pdf"] * pages  # nothing of the other collections
        assert hits[0]["image_url"].startswith(f"/v1/collections/{name}/pages/")
        img = live.get(hits[0]["image_url"])
        assert img.status_code == 200 and img.content[8:12] == b"WEBP"
        info = live.get(f"/v1/collections/{name}").json()
        assert info["pages"] == pages and info["documents"] == 1 and info["index"] == "ready"
        assert info["bytes"]["images"] > 0 and info["bytes"]["store"] > 0 and info["bytes"]["index"] > 0
        docs = live.get(f"/v1/collections/{name}/documents").json()
        assert docs["total"] == 1 and docs["items"][0]["thumb_url"].startswith(f"/v1/collections/{name}/pages/")
        facets = live.get(f"/v1/collections/{name}/facets").json()
        assert facets["pages"] == pages

    # Two resolutions, one model: every collection's encoder runs the same weights.
    registry = live.app.state.collections.registry  # type: ignore[attr-defined]
    alpha, beta = registry.open("alpha"), registry.open("beta")
    assert alpha.encoder.page_longest_edge == 32 and beta.encoder.page_longest_edge == 96
    assert alpha.encoder.model is beta.encoder.model is registry.open("colsmol").encoder.model
    assert alpha.generator is beta.generator is registry.open("colsmol").generator

    ready = live.get("/readyz").json()
    assert ready["collections"] == {"colsmol": "ready", "alpha": "ready", "beta": "ready"}


def test_the_unprefixed_routes_still_serve_the_default_collection(live: httpx.Client, corpus: dict[str, Any]) -> None:
    hits = live.post("/v1/search", json={"query": "home", "k": 10}).json()["hits"]
    assert {h["file_name"] for h in hits} == {"home.pdf"} and hits[0]["image_url"].startswith("/v1/pages/")
    assert live.get(hits[0]["image_url"]).status_code == 200
    assert live.get("/v1/documents").json()["total"] == 1
    assert live.get(f"/v1/jobs/{corpus['default']['job_id']}").json()["state"] == "done"
    ans = live.post("/v1/answer", json={"question": "home?", "k": 1}).json()
    assert [s["file_name"] for s in ans["sources"]] == ["home.pdf"]
    same = live.post("/v1/collections/colsmol/search", json={"query": "home", "k": 10}).json()["hits"]
    assert [h["point_id"] for h in same] == [h["point_id"] for h in hits]
    models = [m["id"] for m in live.get("/v1/models").json()["data"]]
    assert models == ["colsmol", "colsmol/alpha", "colsmol/beta"]


def test_names_are_checked(live: httpx.Client, corpus: dict[str, Any]) -> None:
    for bad in ("Alpha", "../etc", "-x", "a" * 64, "a/b", "", "é"):
        r = live.post("/v1/collections", json={"name": bad})
        assert r.status_code == 422 and "collection name" in r.text, (bad, r.text)
    assert live.post("/v1/collections/..%2Fqdrant/search", json={"query": "x"}).status_code in (404, 422)
    assert live.post("/v1/collections/UPPER/search", json={"query": "x"}).status_code == 422
    assert live.post("/v1/collections/nope/search", json={"query": "x"}).status_code == 404
    r = live.post("/v1/collections", json={"name": "alpha"})
    assert r.status_code == 409 and "exists already" in r.json()["detail"]
    r = live.post("/v1/collections", json={"name": "gamma", "index_dtype": "fp8"})
    assert r.status_code == 422 and "index_dtype" in r.text
    r = live.post("/v1/collections", json={"name": "gamma", "language": "<script>"})
    assert r.status_code == 422 and "language" in r.text
    assert live.delete("/v1/collections/colsmol").status_code == 422
    assert not (Path(live.app.state.settings.data_dir) / "collections" / "gamma").exists()  # type: ignore[attr-defined]


def _key(live: httpx.Client, collection: str, role: str) -> dict[str, str]:
    r = live.post("/v1/keys", json={"collection": collection, "role": role})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def test_a_key_for_alpha_finds_nothing_of_beta(live: httpx.Client, corpus: dict[str, Any]) -> None:
    """Every route of beta (and of the default collection), by every role of an alpha key: 404, as for a name
    nobody created. Never 403: that would tell beta exists."""
    beta, point = corpus["beta"], corpus["beta"]["point_id"]
    for role in ("read", "write", "admin"):
        key = _key(live, "alpha", role)
        for prefix in ("/v1/collections/beta", "/v1"):  # "/v1": the default collection
            doc_id = beta["doc_id"] if prefix.endswith("beta") else corpus["default"]["doc_id"]
            job_id = beta["job_id"] if prefix.endswith("beta") else corpus["default"]["job_id"]
            calls = [
                ("POST", f"{prefix}/search", {"json": {"query": "plans"}}),
                ("POST", f"{prefix}/answer", {"json": {"question": "plans?"}}),
                ("GET", f"{prefix}/documents", {}),
                ("GET", f"{prefix}/documents/{doc_id}", {}),
                ("DELETE", f"{prefix}/documents/{doc_id}", {}),
                ("POST", f"{prefix}/documents", {"files": [("files", ("x.pdf", _pdf("x"), "application/pdf"))]}),
                ("GET", f"{prefix}/jobs/{job_id}", {}),
                ("GET", f"{prefix}/pages/{point}/image", {}),
                ("GET", f"{prefix}/pages/{point}/explain", {"params": {"query": "plans"}}),
                ("GET", f"{prefix}/facets", {}),
                ("POST", f"{prefix}/local/export", {"json": {"path": "/tmp/x"}}),
            ]
            if prefix.endswith("beta"):
                calls += [("GET", prefix, {}), ("DELETE", prefix, {})]
            for method, url, kw in calls:
                r = live.request(method, url, headers=key, **kw)
                assert r.status_code == 404, (role, method, url, r.status_code, r.text)
                assert "beta" not in r.text or "no collection named 'beta'" in r.text
        chat = {"model": "colsmol/beta", "messages": [{"role": "user", "content": "plans?"}]}
        r = live.post("/v1/chat/completions", json=chat, headers=key)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
        r = live.post("/v1/chat/completions", json={**chat, "model": "colsmol"}, headers=key)
        assert r.status_code == 404
        assert live.get("/v1/models/colsmol/beta", headers=key).status_code == 404
        assert [m["id"] for m in live.get("/v1/models", headers=key).json()["data"]] == ["colsmol/alpha"]
        assert [c["name"] for c in live.get("/v1/collections", headers=key).json()["items"]] == ["alpha"]
        r = live.post("/v1/keys", json={"collection": "beta", "role": "read"}, headers=key)
        assert r.status_code == 404
        # Its own collection works, by every route and protocol.
        hits = live.post("/v1/collections/alpha/search", json={"query": "revenue"}, headers=key).json()["hits"]
        assert hits and live.get(hits[0]["image_url"], headers=key).status_code == 200
        r = live.post("/v1/chat/completions", json={**chat, "model": "colsmol/alpha"}, headers=key)
        assert r.status_code == 200 and r.json()["model"] == "colsmol/alpha", r.text
        assert r.json()["citations"][0]["image_url"].split("/v1/")[1].startswith("collections/alpha/pages/")


def test_roles(live: httpx.Client, corpus: dict[str, Any]) -> None:
    upload = {"files": [("files", ("r.pdf", _pdf("role test"), "application/pdf"))]}
    read, write, admin = (_key(live, "alpha", role) for role in ("read", "write", "admin"))
    a = "/v1/collections/alpha"
    assert live.post(f"{a}/search", json={"query": "x"}, headers=read).status_code == 200
    assert live.get(f"{a}/documents", headers=read).status_code == 200
    assert live.get(f"{a}/jobs/{corpus['alpha']['job_id']}", headers=read).status_code == 200
    assert live.post(f"{a}/documents", headers=read, **upload).status_code == 403
    assert live.delete(f"{a}/documents/{corpus['alpha']['doc_id']}", headers=read).status_code == 403
    r = live.post(f"{a}/documents", headers=write, **upload)
    assert r.status_code == 202
    job = wait_job(live, f"{a}/jobs/{r.json()['job_id']}")
    doc_id = job["report"]["files"][0]["doc_id"]
    assert live.delete(f"{a}/documents/{doc_id}", headers=write).status_code == 200
    for key in (read, write):
        assert live.post("/v1/keys", json={"collection": "alpha", "role": "read"}, headers=key).status_code == 403
        assert live.delete(a, headers=key).status_code == 403
        assert live.get("/v1/keys", headers=key).status_code == 403
    # A collection's admin manages its keys, but creates no collection (that is the server admin's).
    assert live.post("/v1/collections", json={"name": "mine"}, headers=admin).status_code == 403
    listed = live.get("/v1/keys", headers=admin).json()["items"]
    assert listed and {k["collection"] for k in listed} == {"alpha"} and all("key" not in k for k in listed)
    made = live.post("/v1/keys", json={"collection": "alpha", "role": "read"}, headers=admin).json()
    fresh = {"Authorization": f"Bearer {made['key']}"}
    assert live.post(f"{a}/search", json={"query": "x"}, headers=fresh).status_code == 200
    assert live.delete(f"/v1/keys/{made['id']}", headers=admin).status_code == 204
    assert live.post(f"{a}/search", json={"query": "x"}, headers=fresh).status_code == 401  # revoked at once
    bad = {"Authorization": "Bearer " + made["key"][:-1] + ("A" if made["key"][-1] != "A" else "B")}
    assert live.post(f"{a}/search", json={"query": "x"}, headers=bad).status_code == 401
    assert httpx.get(f"{str(live.base_url).rstrip('/')}/v1/collections", timeout=30).status_code == 401  # no key at all


def test_keys_are_stored_as_hashes(live: httpx.Client) -> None:
    made = live.post("/v1/keys", json={"collection": "alpha", "role": "read"}).json()
    data_dir = Path(live.app.state.settings.data_dir)  # type: ignore[attr-defined]
    stored = (data_dir / "keys.json").read_text()
    assert made["id"] in stored and made["key"] not in stored and made["key"].split("_")[-1] not in stored
    for name in ("keys.json", "keys.secret"):
        assert stat.S_IMODE(os.stat(data_dir / name).st_mode) == 0o600
    assert KeyStore(data_dir).verify(made["key"]) is not None
    assert KeyStore(data_dir).verify(made["key"] + "x") is None


def test_mcp_takes_a_collection_and_hides_the_others(live: httpx.Client, corpus: dict[str, Any]) -> None:
    from tests.test_chat_api import _mcp_http

    key = _key(live, "alpha", "read")
    url = str(live.base_url).rstrip("/")

    async def work(c: Any) -> dict[str, Any]:
        return {
            "collections": await c.call_tool("list_collections", {}),
            "alpha": await c.call_tool("search", {"query": "revenue", "k": 2, "collection": "alpha"}),
            "beta": await c.call_tool("search", {"query": "plans", "collection": "beta"}),
            "default": await c.call_tool("list_documents", {}),
            "page": await c.call_tool("get_page", {"point_id": corpus["beta"]["point_id"], "collection": "beta"}),
            "resource": await _read(c, f"colsmol://collections/beta/pages/{corpus['beta']['point_id']}"),
        }

    async def _read(c: Any, uri: str) -> Any:
        try:
            return await c.read_resource(uri)
        except Exception as exc:  # noqa: BLE001 - the SDK raises the server's resource error
            return exc

    out = asyncio.run(_mcp_http(url, key, work))
    assert out["collections"].structured_content["result"] == ["alpha"]
    hits = out["alpha"].structured_content["result"]
    assert [h["file_name"] for h in hits] == ["a.pdf", "a.pdf"]
    assert "/v1/collections/alpha/pages/" in hits[0]["image_url"]
    assert hits[0]["page_uri"].startswith("colsmol://collections/alpha/pages/")
    assert isinstance(out["resource"], Exception) and "no collection named" in str(out["resource"])
    for name in ("beta", "default", "page"):
        assert out[name].is_error and "no collection named" in json.dumps(out[name].model_dump(mode="json")), name
    admin = asyncio.run(_mcp_http(url, ADMIN, work))
    assert admin["collections"].structured_content["result"] == ["colsmol", "alpha", "beta"]
    assert not admin["beta"].is_error and not admin["page"].is_error
    assert not isinstance(admin["resource"], Exception) and admin["resource"].contents[0].mime_type == "image/webp"


def test_cold_collections_load_on_first_use_under_the_budget(live: httpx.Client, corpus: dict[str, Any]) -> None:
    registry = live.app.state.collections.registry  # type: ignore[attr-defined]
    sizes = {n: registry.index_bytes(n) for n in ("colsmol", "alpha", "beta")}
    registry._budget = sizes["beta"]  # room for one index at a time
    try:
        assert live.post("/v1/collections/beta/search", json={"query": "plans"}).status_code == 200
        states = live.get("/readyz").json()["collections"]
        assert states["beta"] == "ready" and states["alpha"] == "cold" and states["colsmol"] == "cold", states
        # A cold collection's query waits for its index, then answers as before.
        hits = live.post("/v1/collections/alpha/search", json={"query": "revenue"}).json()["hits"]
        assert [h["file_name"] for h in hits] == ["a.pdf", "a.pdf"]
        states = live.get("/readyz").json()["collections"]
        assert states["alpha"] == "ready" and states["beta"] == "cold", states
    finally:
        registry._budget = None
    assert [name for name, _ in registry.loads][-1] == "alpha"


def test_deleting_a_collection_removes_it_and_nothing_else(live: httpx.Client, corpus: dict[str, Any]) -> None:
    data_dir = Path(live.app.state.settings.data_dir)  # type: ignore[attr-defined]
    r = live.post("/v1/collections", json={"name": "doomed", "page_longest_edge": 32})
    assert r.status_code == 201
    ingest(live, "/v1/collections/doomed", "d.pdf", "doomed page")
    key = _key(live, "doomed", "admin")
    paths = [data_dir / "qdrant" / "doomed", data_dir / "pages" / "doomed", data_dir / "collections" / "doomed"]
    assert all(p.exists() for p in paths)
    assert live.delete("/v1/collections/doomed", headers=key).status_code == 204
    assert not any(p.exists() for p in paths) and not (data_dir / "index-cache" / "doomed").exists()
    assert live.post("/v1/collections/doomed/search", json={"query": "x"}).status_code == 404
    gone = httpx.get(f"{str(live.base_url).rstrip('/')}/v1/collections/alpha/documents", headers=key, timeout=30)
    assert gone.status_code == 401  # its keys went with it
    assert all(k["collection"] != "doomed" for k in live.get("/v1/keys").json()["items"])
    for name in ("alpha", "beta"):
        assert live.get(f"/v1/collections/{name}").json()["pages"] >= 1
    assert live.post("/v1/search", json={"query": "home"}).json()["hits"]


def test_pipeline_opens_a_created_collection(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """``RAGPipeline.from_settings(collection=...)``: the collection's own settings, outside any server."""
    from rag.collections import Collections

    s = tiny_settings(tiny_models, tmp_path, dpi=50)
    Collections(s).create("small", page_longest_edge=32)
    with RAGPipeline.from_settings(s, collection="small") as rag:
        assert rag.store.collection == "small" and rag.encoder.requested_longest_edge == 32
        assert rag.images.root == s.images_dir / "small"
    from indexer.errors import NotFound

    with pytest.raises(NotFound, match="no collection named 'other'"):
        RAGPipeline.from_settings(s, collection="other")


def test_the_command_line(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """``colsmol collections``, ``--collection NAME`` (with the settings it was created with) and ``colsmol keys``,
    as separate processes."""
    from tests.test_ingest import _cli_env, _colsmol

    env = _cli_env(tiny_models, tmp_path / "data")
    res = _colsmol("collections", "create", "small", "--page-longest-edge", "32", "--language", "de", env=env)
    assert res.returncode == 0, res.stderr
    assert _colsmol("collections", "create", "../x", env=env).returncode == 2
    listed = json.loads(_colsmol("collections", "--json", env=env).stdout)
    assert [(c["name"], c["page_longest_edge"], c["language"]) for c in listed] == [
        ("colsmol", None, None),
        ("small", 32, "de"),
    ]
    # Every command builds its settings this way: the collection's own on top of the environment's.
    from api.cli.common import settings_from

    small = settings_from(collection="small", data_dir=tmp_path / "data")
    assert small.page_longest_edge == 32 and small.collection == "small"
    assert settings_from(collection="never-made", data_dir=tmp_path / "data").page_longest_edge is None

    made = _colsmol("keys", "create", "--collection", "small", "--role", "read", env=env)
    key = made.stdout.strip()
    assert made.returncode == 0 and key.startswith("csk_") and "shown only now" in made.stderr
    assert key not in (tmp_path / "data" / "keys.json").read_text()
    keys = json.loads(_colsmol("keys", "list", "--json", env=env).stdout)
    assert [(k["collection"], k["role"]) for k in keys] == [("small", "read")] and "key" not in keys[0]
    assert _colsmol("keys", "revoke", keys[0]["id"], env=env).returncode == 0
    assert _colsmol("collections", "delete", "small", "--yes", env=env).returncode == 0
    assert not (tmp_path / "data" / "collections" / "small").exists()
    assert _colsmol("collections", "delete", "small", "--yes", env=env).returncode == 1  # "no collection named"


def _sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            got = ",".join(sorted(head[len(name) :].strip("{}").split(","))) if "{" in head else ""
            if all(part in got.split(",") for part in want.split(",") if part):
                return float(value)
    return 0.0


def test_metrics_move_and_requests_carry_an_id(live: httpx.Client, corpus: dict[str, Any]) -> None:
    import logging

    from api.http.logs import JsonFormatter, RequestIdFilter

    route = "/v1/collections/{collection}/search"
    before = live.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    count = _sample(before.text, "colsmol_http_request_duration_seconds_count", route=route, status="200")
    for q in ("revenue", "costs", "plans"):
        assert live.post("/v1/collections/alpha/search", json={"query": q}).status_code == 200
    text = live.get("/metrics").text
    assert _sample(text, "colsmol_http_request_duration_seconds_count", route=route, status="200") == count + 3
    assert _sample(text, "colsmol_http_requests_total", method="POST", route=route, status="200") >= 3
    assert _sample(text, "colsmol_search_batch_size_count") >= 3
    assert _sample(text, "colsmol_search_queue_wait_seconds_count") >= 3
    assert _sample(text, "colsmol_ingest_pages_total", collection="alpha") >= 2
    assert _sample(text, "colsmol_ingest_stage_seconds_total", collection="alpha", stage="encode") > 0
    assert _sample(text, "colsmol_index_bytes", collection="alpha") > 0
    assert _sample(text, "colsmol_index_pages", collection="beta") == 1
    assert "process_resident_memory_bytes" in text and "/pages/b8" not in text  # templates, never raw paths
    answers = _sample(text, "colsmol_answer_seconds_count")
    assert live.post("/v1/collections/alpha/answer", json={"question": "revenue?", "k": 1}).status_code == 200
    streamed = live.post("/v1/collections/alpha/answer", json={"question": "revenue?", "k": 1, "stream": True})
    assert streamed.status_code == 200 and "event: done" in streamed.text
    deadline = time.monotonic() + 30  # a stream is observed when its worker finishes, just after the last event
    while _sample(live.get("/metrics").text, "colsmol_answer_seconds_count") < answers + 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert live.get("/metrics", headers=_key(live, "alpha", "admin")).status_code == 403  # the server's admin only

    lines: list[str] = []
    handler = logging.Handler()
    handler.addFilter(RequestIdFilter())
    handler.emit = lambda record: lines.append(JsonFormatter().format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("colsmol.access")
    logger.addHandler(handler)
    level, disabled = logger.level, logger.disabled
    logger.setLevel(logging.INFO)
    logger.disabled = False  # a text-format server in this process would have turned the access lines off
    try:
        r = live.get("/v1/collections", headers={"X-Request-ID": "trace-42"})
        fresh = live.get("/healthz")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
    assert r.headers["x-request-id"] == "trace-42" and len(fresh.headers["x-request-id"]) == 32
    records = [json.loads(line) for line in lines]
    mine = [rec for rec in records if rec["request_id"] == "trace-42"]
    assert mine and mine[0]["route"] == "/v1/collections" and mine[0]["status"] == 200
    bad = live.get("/healthz", headers={"X-Request-ID": "x" * 500 + " <script>"}).headers["x-request-id"]
    assert len(bad) == 32  # an id that cannot be logged safely is replaced


def test_the_cli_reaches_a_created_collection_through_the_server(live: httpx.Client, corpus: dict[str, Any]) -> None:
    """``colsmol search -c alpha`` while a server owns the data dir: the server's /v1/collections/alpha routes."""
    from api.cli.advert import Advert
    from api.cli.backends import RemoteBackend
    from indexer.filters import Filter

    settings = live.app.state.settings.model_copy(update={"collection": "alpha"})  # type: ignore[attr-defined]
    advert = Advert(str(live.base_url).rstrip("/"), os.getpid(), "colsmol", True, "token", "")
    backend = RemoteBackend(advert, settings)
    try:
        assert [h["file_name"] for h in backend.search("revenue", 5, Filter())] == ["a.pdf", "a.pdf"]
        assert [d["file_name"] for d in backend.documents()] == ["a.pdf"]
    finally:
        backend.close()


def test_fuzz_collection_and_key_routes_never_5xx(live: httpx.Client, corpus: dict[str, Any]) -> None:
    """schemathesis over /v1/collections and /v1/keys (last in this module: it creates and deletes at random)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hyp_settings

    url = str(live.base_url).rstrip("/")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=ADMIN).include(tag="collections")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 7
    for op in operations:

        @given(op.as_strategy())
        @hyp_settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            response = case.call(base_url=url, headers=ADMIN, timeout=60)
            assert response.status_code < 500, (case.method, case.path, case.path_parameters, case.body, response.text)

        run()
