"""Browser-facing protections: cross-origin refusal on state-changing routes, and security headers.

**Cross-origin requests.** With no API key (the default), any web page a user visits could otherwise post a
no-cors multipart form to ``http://127.0.0.1:8000/v1/documents``: the browser sends it (only reading the
answer is blocked) and the file would be indexed. Uploads and deletes therefore check where a browser
request comes from, the way Go's ``net/http.CrossOriginProtection`` does:

1. an ``Origin`` in ``COLSMOL_ALLOWED_ORIGINS`` passes;
2. with ``Sec-Fetch-Site`` (every current browser sends it), ``same-origin`` and ``none`` (typed by the user)
   pass, anything else is refused;
3. without it, a request with no ``Origin`` passes (curl, SDKs, the CLI: not a browser), and one whose
   ``Origin`` names this server's ``Host`` passes; anything else is refused.

**Headers.** Every response says ``X-Content-Type-Options: nosniff`` and may not be framed
(``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``); HTML pages get a Content-Security-Policy
that allows only this server's own scripts, styles, images (and ``blob:``/``data:`` images the page makes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.http.deps import SettingsDep
from indexer.settings import normalize_origin

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def cross_origin_refusal(
    method: str, host: str | None, origin: str | None, fetch_site: str | None, allowed: Iterable[str]
) -> str | None:
    """Why a browser request must be refused, or None when it may go ahead (see the module docstring).

    >>> cross_origin_refusal("POST", "127.0.0.1:8000", None, None, []) is None  # curl
    True
    >>> cross_origin_refusal("POST", "127.0.0.1:8000", "http://127.0.0.1:8000", "same-origin", []) is None
    True
    >>> cross_origin_refusal("POST", "127.0.0.1:8000", "https://evil.example", "cross-site", []) is not None
    True
    >>> cross_origin_refusal("POST", "127.0.0.1:8000", "https://app.example", "cross-site", ["https://app.example"])
    """
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    if origin is not None:
        try:
            if normalize_origin(origin) in allowed:
                return None
        except ValueError:
            pass  # "null" (a sandboxed or file: page) or junk: never on the allow-list
    where = f"a page on {origin}" if origin else "a page on another site"
    if fetch_site is not None:
        if fetch_site.strip().lower() in ("same-origin", "none"):
            return None
        return where
    if origin is None:
        return None
    try:
        parts = urlsplit(normalize_origin(origin))
    except ValueError:
        return where
    if host is not None and parts.netloc == _host_netloc(host, parts.scheme):
        return None
    return where


def _host_netloc(host: str, scheme: str) -> str:
    host = host.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and host.endswith(f":{default}"):
        host = host[: -len(default) - 1]
    return host


def require_same_origin(request: Request, settings: SettingsDep) -> None:
    """Dependency of the state-changing routes (uploads, deletes): 403 for a cross-origin browser request."""
    where = cross_origin_refusal(
        request.method,
        request.headers.get("host"),
        request.headers.get("origin"),
        request.headers.get("sec-fetch-site"),
        settings.allowed_origins,
    )
    if where is not None:
        raise HTTPException(
            403,
            f"cross-origin request refused: this {request.method} came from {where}, not from colsmol's own page. "
            "If that page is yours, add its origin to COLSMOL_ALLOWED_ORIGINS (e.g. https://intranet.example.com).",
        )


SameOrigin = Annotated[None, Depends(require_same_origin)]

#: The web page (api/http/static) and its dialog: own scripts and styles only; images also as blob: (fetched with
#: the API key) and data: (the empty favicon).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Swagger UI at /docs (served from this server, see api.http.docs) sets inline styles on its elements.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Everything else (JSON, page images, event streams) is data, never a document that runs anything. (A page
#: image opened in its own tab shows in the browser's image viewer, which styles itself inline.)
DATA_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"


class SecurityHeaders:
    """ASGI middleware adding the security headers to every HTTP response (streams included)."""

    def __init__(self, app: ASGIApp, docs_paths: Iterable[str] = ("/docs",)) -> None:
        self.app = app
        self.docs_paths = tuple(docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if ctype.startswith(b"text/html"):
                    csp = DOCS_CSP if path.startswith(self.docs_paths) else PAGE_CSP
                else:
                    csp = DATA_CSP
                headers += [
                    (b"content-security-policy", csp.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
