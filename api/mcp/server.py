"""colsmol's tools for agents, over the Model Context Protocol (the official ``mcp`` SDK's ``MCPServer``).

Tools: ``search`` (ranked pages with their image links), ``answer`` (a cited answer), ``get_page`` (one page as
an image the model can look at) and ``list_documents``. The same server runs two ways:

- ``colsmol mcp``: over stdio, for a chat app that starts it (it opens the collection itself);
- ``/mcp`` on ``colsmol serve`` (streamable HTTP, :mod:`api.mcp.mount`), sharing the API's pipeline, search
  batcher and answer thread, behind the same ``COLSMOL_API_KEY``.

Every page also has a resource URI, ``colsmol://pages/{point_id}`` (the page image; a page of another collection
than the default one: ``colsmol://collections/{collection}/pages/{point_id}``), so clients without HTTP access
to the server can still fetch what ``search`` returns. Core errors come back as tool errors carrying colsmol's
one-line message.

The mcp SDK reads the tools' signatures at run time (``eval_str``), so this module keeps real annotations (no
``from __future__ import annotations``) and imports the SDK inside :func:`build_server`: importing it takes
over a second, which ``colsmol --help`` and the API's import do not pay.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field

from api.http.routes.common import COLLECTION_PAGE_URI, PAGE_URI, DocNames, shown_name, sources_text
from api.http.schemas import FilterValue, HitOut
from indexer.errors import ColsmolError, InvalidRequest, NotFound
from indexer.filters import Filter
from rag.pipeline import MAX_ANSWER_K, MAX_K

if TYPE_CHECKING:
    from mcp.server.mcpserver import Context, MCPServer

    from rag.pipeline import RAGPipeline
    from rag.types import Answer
    from retriever.search import Hit

INSTRUCTIONS = (
    "colsmol searches and answers questions over an indexed collection of document pages (PDFs, scans). "
    "Use `answer` for a question answered from the pages with citations, `search` to find pages, `get_page` to "
    "look at one page image, `list_documents` to see what is indexed."
)
T = TypeVar("T")
CollectionArg = Annotated[
    str | None,
    Field(description="Which collection (list_collections names them); leave out for the default one."),
]
FilterArg = Annotated[
    dict[str, FilterValue] | None,
    Field(description='Only pages matching, e.g. {"file_name": "report.pdf"} or {"metadata.lang": "en"}.'),
]


@dataclass(frozen=True)
class Parts:
    """What the tools use: the pipeline, the cached document names, a search function (the API's batcher on the
    HTTP server; the pipeline in a thread over stdio), an answer function (the API's bounded answer queue; a
    thread over stdio) and the answer length limit (``COLSMOL_MAX_NEW_TOKENS``)."""

    pipeline: "RAGPipeline"
    doc_names: DocNames
    search: Callable[[str, int, Filter, str | None], Awaitable[list["Hit"]]]
    answer: Callable[[str, int, Filter], Awaitable["Answer"]]
    max_new_tokens: int
    #: The collections the caller may name (``list_collections``).
    collections: list[str] = field(default_factory=list)


#: Builds the tools' parts for a collection and the calling request (None over stdio); may block (index load).
PartsFor = Callable[[str | None, Any], Parts]


class AnswerResult(BaseModel):
    text: str = Field(description="The answer, then the cited pages as [n] markers.")
    sources: list[HitOut] = Field(description="The pages the answer was generated from, in [n] order.")
    warnings: list[str]


class DocumentItem(BaseModel):
    doc_id: str
    file_name: str
    source: str
    pages: int
    ingested_at: str
    metadata: dict[str, Any]


def _request(ctx: "Context | None") -> Any:
    """The HTTP request a tool call came in (None over stdio)."""
    try:
        return ctx.request_context.request if ctx is not None else None
    except ValueError:
        return None


async def _parts(parts: PartsFor, collection: str | None, ctx: "Context | None") -> Parts:
    return await asyncio.to_thread(parts, collection, _request(ctx))


def _base_url(ctx: "Context | None") -> str | None:
    """The HTTP server's own address when the call came over HTTP, else None (stdio)."""
    base = getattr(_request(ctx), "base_url", None)
    return str(base).rstrip("/") if base is not None else None


async def _tool_call(work: Awaitable[T]) -> T:
    """Run a tool body; a colsmol error becomes a tool error with its one-line message (the SDK would hide it)."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        return await work
    except ColsmolError as exc:
        raise ToolError(str(exc)) from None


def build_server(parts: PartsFor, collections: Callable[[Any], list[str]] | None = None) -> "MCPServer":
    """The MCP server; ``parts(collection, request)`` is called per tool call (on the HTTP server the pipeline
    exists only once the app has started, and which collections a caller may use depends on its key).
    ``collections(request)`` names the collections the caller may use (default: the default one's parts say)."""
    from mcp.server.mcpserver import Context, Image, MCPServer
    from mcp.server.mcpserver.exceptions import ResourceNotFoundError

    server: MCPServer = MCPServer("colsmol", instructions=INSTRUCTIONS, version="0.1.0", log_level="WARNING")

    @server.tool(description="Find the document pages that best match a query (late-interaction MaxSim), best first.")
    async def search(
        query: str,
        k: Annotated[int, Field(ge=1, le=MAX_K, description="How many pages.")] = 5,
        filter: FilterArg = None,
        mode: Annotated[
            Literal["visual", "text", "hybrid"] | None,
            Field(description="visual (page images), text (exact words: names, IDs, numbers) or hybrid (both); "
                  "unset: hybrid."),
        ] = None,
        collection: CollectionArg = None,
        ctx: Context | None = None,
    ) -> list[HitOut]:
        async def run() -> list[HitOut]:
            p = await _parts(parts, collection, ctx)
            if not query.strip():
                raise InvalidRequest("the query is empty")
            hits = await p.search(query, k, Filter.parse(filter), mode)
            return await p.doc_names.hits_out(hits, _base_url(ctx))

        return await _tool_call(run())

    @server.tool(description="Answer a question from the indexed pages, citing the pages it used as [n].")
    async def answer(
        question: str,
        k: Annotated[int, Field(ge=1, le=MAX_ANSWER_K, description="Pages shown to the answer model.")] = 3,
        filter: FilterArg = None,
        collection: CollectionArg = None,
        ctx: Context | None = None,
    ) -> AnswerResult:
        async def run() -> AnswerResult:
            p = await _parts(parts, collection, ctx)
            result = await p.answer(question, k, Filter.parse(filter))
            sources = await p.doc_names.hits_out(result.sources, _base_url(ctx))
            return AnswerResult(text=result.text + sources_text(sources), sources=sources, warnings=result.warnings)

        return await _tool_call(run())

    @server.tool(description="One page as an image (WebP), by the point_id that search or answer returned.")
    async def get_page(
        point_id: str,
        size: Literal["full", "thumb"] = "full",
        collection: CollectionArg = None,
        ctx: Context | None = None,
    ) -> Image:
        async def run() -> Image:
            p = await _parts(parts, collection, ctx)
            return Image(data=await asyncio.to_thread(_page_bytes, p.pipeline, point_id, size), format="webp")

        return await _tool_call(run())

    @server.tool(description="The indexed documents (newest first) with their page counts and metadata.")
    async def list_documents(
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
        collection: CollectionArg = None,
        ctx: Context | None = None,
    ) -> list[DocumentItem]:
        async def run() -> list[DocumentItem]:
            p = await _parts(parts, collection, ctx)
            docs = await asyncio.to_thread(p.pipeline.documents)
            docs = sorted(docs, key=lambda d: (d.ingested_at, d.doc_id), reverse=True)[:limit]
            return [
                DocumentItem(
                    doc_id=d.doc_id,
                    file_name=shown_name(d.file_name, d.metadata) or d.file_name,
                    source=d.source,
                    pages=d.page_count,
                    ingested_at=d.ingested_at,
                    metadata=d.metadata,
                )
                for d in docs
            ]

        return await _tool_call(run())

    @server.tool(description="The collections (document sets) you can search; pass one as `collection` to the others.")
    async def list_collections(ctx: Context | None = None) -> list[str]:
        async def run() -> list[str]:
            if collections is not None:
                return await asyncio.to_thread(collections, _request(ctx))
            return (await _parts(parts, None, ctx)).collections

        return await _tool_call(run())

    @server.resource(PAGE_URI, name="page", description="A stored page image (WebP).", mime_type="image/webp")
    async def page(point_id: str, ctx: Context) -> bytes:
        try:
            p = await _parts(parts, None, ctx)
            return await asyncio.to_thread(_page_bytes, p.pipeline, point_id, "full")
        except NotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None

    @server.resource(
        COLLECTION_PAGE_URI,
        name="collection page",
        description="A stored page image (WebP) of a collection other than the default one.",
        mime_type="image/webp",
    )
    async def collection_page(collection: str, point_id: str, ctx: Context) -> bytes:
        try:
            p = await _parts(parts, collection, ctx)
            return await asyncio.to_thread(_page_bytes, p.pipeline, point_id, "full")
        except NotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None

    return server


def _page_bytes(pipeline: "RAGPipeline", point_id: str, size: Literal["full", "thumb"]) -> bytes:
    try:
        path = pipeline.images.path(point_id, size)
        return path.read_bytes()
    except (ValueError, OSError):
        raise NotFound(f"no page with id {point_id!r}; search or answer return page ids") from None


def standalone_parts(pipeline: "RAGPipeline", max_new_tokens: int) -> Parts:
    """Parts for ``colsmol mcp`` (stdio): the pipeline in this process, one thread for answers and searches."""
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(1, thread_name_prefix="colsmol-mcp")

    async def search(query: str, k: int, flt: Filter, mode: str | None = None) -> list["Hit"]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, lambda: pipeline.search(query, k, flt, mode=mode))

    async def answer(question: str, k: int, flt: Filter) -> "Answer":
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, lambda: pipeline.answer(question, k, flt, max_new_tokens))

    return Parts(pipeline, DocNames(pipeline.store), search, answer, max_new_tokens, [pipeline.store.collection])


def run_stdio(pipeline: "RAGPipeline", max_new_tokens: int = 256) -> None:
    """Serve the tools over stdin/stdout until the client closes them: one collection, the pipeline's."""
    parts = standalone_parts(pipeline, max_new_tokens)

    def parts_for(collection: str | None, request: Any) -> Parts:
        if collection is not None and collection != pipeline.store.collection:
            raise NotFound(
                f"no collection named {collection[:64]!r} here: this server serves {pipeline.store.collection!r} "
                "(start another with colsmol mcp --collection NAME)"
            )
        return parts

    build_server(parts_for).run("stdio")
