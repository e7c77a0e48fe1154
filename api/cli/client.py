"""A small HTTP client for a running colsmol server: what the CLI uses when ``colsmol serve`` owns the data dir.

Every method returns plain data (the JSON the API answers) and turns HTTP errors back into colsmol's own
errors (401 -> :class:`ConfigError` naming ``COLSMOL_API_KEY``, 404 -> :class:`NotFound`, 422 ->
:class:`InvalidRequest`, 503 -> :class:`StoreUnavailable`), so the CLI prints the same one line as when it
runs the pipeline itself. httpx is imported here only: this module keeps ``colsmol search`` free of torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from api.cli.advert import CLIENT_HEADER, TOKEN_HEADER
from indexer.errors import ColsmolError, ConfigError, InvalidRequest, NotFound, StoreUnavailable

ANSWER_TIMEOUT_S = 600.0


class ColsmolClient:
    """The HTTP API of one colsmol server. ``local_token`` (from the server's advertisement) opens the
    ``/v1/local`` routes that read and write paths on the server's machine."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        local_token: str | None = None,
        timeout: float = 60.0,
        collection: str | None = None,
    ) -> None:
        headers = {CLIENT_HEADER: "cli"}  # messages come with the command line's hints
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if local_token:
            headers[TOKEN_HEADER] = local_token
        self.base_url = base_url.rstrip("/")
        #: Another collection than the server's default: every /v1/... route goes to /v1/collections/<name>/...
        self.collection = collection
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ColsmolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self.collection is not None and path.startswith("/v1/"):
            path = f"/v1/collections/{self.collection}/{path[4:]}"
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise StoreUnavailable(f"the colsmol server at {self.base_url} did not answer in time ({exc})") from None
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"cannot reach the colsmol server at {self.base_url}: {exc}") from None
        _raise_for(response, self.base_url)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # ------------------------------------------------------------------ the public API
    def delete_collection(self, name: str) -> None:
        self._request("DELETE", f"/v1/collections/{name}")

    def search(
        self, query: str, k: int, filter: Mapping[str, Any] | None = None, mode: str | None = None
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"query": query, "k": k}
        if filter:
            body["filter"] = dict(filter)
        if mode:
            body["mode"] = mode
        hits: list[dict[str, Any]] = self._json("POST", "/v1/search", json=body)["hits"]
        return hits

    def answer(
        self,
        question: str,
        k: int,
        filter: Mapping[str, Any] | None = None,
        max_new_tokens: int | None = None,
        mode: str | None = None,
    ) -> dict[str, Any]:
        body = _answer_body(question, k, filter, max_new_tokens, stream=False, mode=mode)
        result: dict[str, Any] = self._json("POST", "/v1/answer", json=body, timeout=ANSWER_TIMEOUT_S)
        return result

    def stream_answer(
        self,
        question: str,
        k: int,
        filter: Mapping[str, Any] | None = None,
        max_new_tokens: int | None = None,
        mode: str | None = None,
    ) -> Iterator[str | dict[str, Any]]:
        """Text pieces as the server sends them, then one dict ``{text, sources, timings, warnings}``."""
        body = _answer_body(question, k, filter, max_new_tokens, stream=True, mode=mode)
        parts: list[str] = []
        try:
            with self._http.stream("POST", "/v1/answer", json=body, timeout=ANSWER_TIMEOUT_S) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response, self.base_url)
                for event, data in _sse(response.iter_lines()):
                    if event == "token":
                        parts.append(data)
                        yield str(data)
                    elif event == "sources":
                        yield {"text": "".join(parts).strip(), **data}
                    elif event == "error":
                        raise ColsmolError(str(data.get("detail", data)))
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"the colsmol server at {self.base_url} stopped answering: {exc}") from None

    def documents(self, page_size: int = 500) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self._json("GET", "/v1/documents", params={"offset": len(items), "limit": page_size})
            items.extend(page["items"])
            if not page["items"] or len(items) >= page["total"]:
                return items

    def delete(self, doc_id: str) -> int:
        return int(self._json("DELETE", f"/v1/documents/{doc_id}")["pages_deleted"])

    def explain(self, query: str, point_id: str, token: int | None = None) -> httpx.Response:
        params: dict[str, Any] = {"query": query}
        if token is not None:
            params["token"] = token
        return self._request("GET", f"/v1/pages/{point_id}/explain", params=params, timeout=ANSWER_TIMEOUT_S)

    # ------------------------------------------------------------------ local routes (same machine)
    def ingest_paths(self, paths: Sequence[Path], **options: Any) -> str:
        """Start an ingest of paths on the server's machine; returns the job id (poll :meth:`job`)."""
        body = {"paths": [str(Path(p).expanduser().absolute()) for p in paths], **options}
        return str(self._json("POST", "/v1/local/ingest", json=body)["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._json("GET", f"/v1/jobs/{job_id}")
        return job

    def export(self, path: Path) -> dict[str, Any]:
        body = {"path": str(Path(path).expanduser().absolute())}
        result: dict[str, Any] = self._json("POST", "/v1/local/export", json=body, timeout=None)
        return result


def _answer_body(
    question: str,
    k: int,
    filter: Mapping[str, Any] | None,
    max_new_tokens: int | None,
    *,
    stream: bool,
    mode: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"question": question, "k": k, "stream": stream}
    if mode:
        body["mode"] = mode
    if filter:
        body["filter"] = dict(filter)
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    return body


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """``(event, decoded data)`` from a Server-Sent Events stream."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield event, json.loads("\n".join(data))


def _raise_for(response: httpx.Response, base_url: str) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail = body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str):
            detail = json.dumps(detail) if detail is not None else response.text
    except ValueError:
        detail = response.text.strip() or response.reason_phrase
    status = response.status_code
    if status == 401:
        raise ConfigError(
            f"the colsmol server at {base_url} needs an API key: set COLSMOL_API_KEY to its key ({detail})"
        )
    if status == 404:
        raise NotFound(detail)
    if status in (400, 413, 415, 422):
        raise InvalidRequest(detail)
    if status in (503, 429):
        raise StoreUnavailable(f"the colsmol server at {base_url} is busy or starting: {detail}")
    raise ColsmolError(f"the colsmol server at {base_url} answered {status}: {detail}")
