"""The OpenAPI page at ``/docs``: Swagger UI served by colsmol itself, so it works offline.

FastAPI's default page loads Swagger UI from a CDN (blank without the internet) and starts it with an inline
script (which the Content-Security-Policy forbids). Here the script and stylesheet come from the
``fastapi-offline`` package under ``/docs/assets/``, and the start-up code from ``/static/docs.js``.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="stylesheet" href="{root}{assets}/swagger-ui.css">
  <link rel="icon" href="{root}{assets}/favicon.png">
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{root}{openapi}"></div>
  <script src="{root}{assets}/swagger-ui-bundle.js"></script>
  <script src="{root}/static/docs.js"></script>
</body>
</html>
"""

MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body><p>Swagger UI's files are not installed (<code>pip install fastapi-offline</code>).
The API's schema is at <a href="{root}{openapi}">{openapi}</a>.</p></body></html>
"""


def swagger_assets() -> Path | None:
    """The folder holding ``swagger-ui-bundle.js`` and ``swagger-ui.css``, or None when the package is missing."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def add_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (create the app with ``docs_url=None, redoc_url=None``)."""
    assets = swagger_assets()
    if assets is not None:
        app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")
    else:
        log.warning("fastapi-offline is not installed: /docs cannot show Swagger UI")
    template = PAGE if assets is not None else MISSING

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        page = template.format(
            title=html.escape(f"{app.title}: API"),
            root=html.escape(str(request.scope.get("root_path", "")).rstrip("/")),
            assets=ASSETS_URL,
            openapi=html.escape(app.openapi_url or "/openapi.json"),
        )
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
