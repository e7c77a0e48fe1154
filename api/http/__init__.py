"""The HTTP API (FastAPI, :func:`api.http.app.create_app`): routes, request and response schemas, upload jobs,
the search batcher, security headers and limits, the web page (``static/``) and OpenAI's chat completions."""
