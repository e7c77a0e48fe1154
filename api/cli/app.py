"""The ``colsmol`` command line: ingest, documents, delete, search, answer, serve, mcp, eval, doctor.

Settings come from ``COLSMOL_*`` environment variables; flags override them. Errors from the core
become one line on stderr and an exit code: 0 success, 1 a file or operation failed, 2 bad usage.
Heavy modules (torch, transformers, qdrant) are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import closing as _closing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from api.cli.common import Collection, DataDir, Device, JsonOut, err, printable, progress_bar, settings_from
from indexer.errors import ColsmolError, ConfigError, InvalidRequest, for_interface

if TYPE_CHECKING:
    from api.cli.backends import Backend
    from indexer.filters import Filter
    from indexer.settings import Settings

app = typer.Typer(
    name="colsmol",
    help="Visual document search and question answering: ColSmolVLM + Qdrant + MaxSim + SmolVLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _filter(items: list[str] | None) -> Filter:
    """``--filter doc_id=a,b --filter metadata.lang=en`` as a Filter (checked here: a bad key exits 2)."""
    from indexer.filters import Filter

    return Filter.from_pairs(items or [])


def _backend(s: Settings) -> Backend:
    from api.cli.backends import open_backend

    return open_backend(s)


def _hits_table(hits: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("rank", "score", "file", "page", "found by", "doc_id"):
        table.add_column(col, justify="right" if col in ("rank", "score", "page") else "left")
    for i, h in enumerate(hits, 1):
        by = "+".join(h.get("found_by") or [])
        table.add_row(
            str(i), f"{h['score']:.3f}", printable(str(h["file_name"])), str(h["page_number"]), by, str(h["doc_id"])
        )
    Console().print(table)


# ---------------------------------------------------------------------------------------------- ingest
@app.command(
    epilog="Exit codes: 0 every file was indexed or unchanged; 1 a file failed (the others were still "
    "indexed); 2 usage error. While `colsmol serve` runs on this data directory, the files are ingested by it."
)
def ingest(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="PDF, image, Office (docx doc odt rtf pptx ppt odp xlsx xls ods csv), web (html htm), Markdown, EPUB "
            "or text files, or folders (walked recursively). Non-PDF documents are converted by LibreOffice; "
            "`colsmol doctor` says whether it is installed."
        ),
    ],
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="key=value stored with every page (repeatable).")
    ] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Forget files under PATHS that are gone (a document goes with its last).")
    ] = False,
    renderer: Annotated[str | None, typer.Option("--renderer", help="pdfium (default) or poppler.")] = None,
    dpi: Annotated[int | None, typer.Option("--dpi", help="PDF rendering resolution (env COLSMOL_DPI).")] = None,
    password: Annotated[
        str | None, typer.Option("--password", help="Password for encrypted PDFs (tried only where needed).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Pages per encoder batch.")] = None,
    collection: Collection = None,
    data_dir: DataDir = None,
    device: Device = None,
    json_out: JsonOut = False,
) -> None:
    """Index documents and page images into Qdrant. Unchanged files are skipped; changed files re-indexed."""
    from indexer.ingest import parse_metadata

    s = settings_from(
        collection=collection, data_dir=data_dir, device=device, renderer=renderer, dpi=dpi, page_batch_size=batch_size
    )
    meta = parse_metadata(metadata or [])
    options: dict[str, Any] = {"metadata": meta, "prune": prune}
    if password is not None:
        options["password"] = password
    with _closing(_backend(s)) as backend:
        if json_out or not sys.stderr.isatty():
            d = backend.ingest(paths, options, None)
        else:
            with progress_bar(rate=True) as bar:
                files_t = bar.add_task("files", total=None, rate="")
                text_t = bar.add_task("text (searchable)", total=0, rate="")
                pages_t = bar.add_task("embedded", total=0, rate="")

                def on_event(kind: str, path: str, n: int, total: int, error: str | None) -> None:
                    if kind == "file":
                        bar.update(pages_t, total=(bar.tasks[pages_t].total or 0) + total)
                        bar.update(text_t, total=(bar.tasks[text_t].total or 0) + total)
                    elif kind == "text":
                        bar.advance(text_t, n)
                    elif kind == "pages":
                        bar.advance(pages_t, n)
                        speed = bar.tasks[pages_t].speed
                        bar.update(pages_t, rate=f"{speed:.1f} pages/s" if speed else "")
                    elif kind == "done":
                        bar.advance(files_t, 1)
                        if error is not None:
                            bar.console.print(
                                f"[red]failed[/] {printable(path)}: {printable(error)}", markup=True, highlight=False
                            )

                d = backend.ingest(paths, options, on_event)
    if json_out:
        typer.echo(json.dumps(d, indent=2))
    else:
        typer.echo(
            f"indexed {d['indexed']}, unchanged {d['unchanged']}, failed {d['failed']}, skipped {d['skipped']}; "
            f"{d['pages_embedded']} pages embedded in {d['seconds']:.1f} s"
            + (f" ({d['pages_per_second']:.1f} pages/s)" if d["pages_per_second"] else "")
            + (f"; pruned {len(d['pruned'])}" if d["pruned"] else "")
        )
        if d["pages_embedded"] and d.get("stages"):
            from indexer.stages import format_stages

            typer.echo(format_stages(d["stages"]))
        for f in d["files"]:
            if f["status"] in ("failed", "skipped"):
                typer.echo(f"  {f['status']}: {printable(f['path'])}: {printable(f['error'] or '')}", err=True)
    raise typer.Exit(1 if d["failed"] else 0)


# ---------------------------------------------------------------------------------------------- documents
@app.command()
def documents(collection: Collection = None, data_dir: DataDir = None, json_out: JsonOut = False) -> None:
    """List indexed documents with their page counts and state: text (searchable by text only so far), visual
    (embedding under way) or complete."""
    s = settings_from(collection=collection, data_dir=data_dir)
    with _closing(_backend(s)) as backend:
        docs = backend.documents()
    if json_out:
        typer.echo(json.dumps(docs, indent=2))
        return
    rows = [
        (
            d["doc_id"],
            str(d["pages"]),
            d.get("state", "complete")
            + ("" if d.get("state", "complete") == "complete" else f" {d['pages_visual']}/{d['pages']}"),
            printable(d["source"]) + (f" (+{len(d['sources']) - 1} more)" if len(d["sources"]) > 1 else ""),
            d["ingested_at"],
        )
        for d in docs
    ]
    title = f"{len(docs)} documents in {s.collection!r}"
    if not sys.stdout.isatty():
        # Piped or captured: plain columns, nothing ever shortened (ids are pasted into `colsmol delete`).
        typer.echo(title)
        for row in rows:
            typer.echo("  ".join(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("doc_id", no_wrap=True, min_width=max((len(r[0]) for r in rows), default=6))
    table.add_column("pages", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("file", overflow="fold")
    table.add_column("ingested", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@app.command()
def delete(
    doc_id: Annotated[str, typer.Argument(help="Document id, as `colsmol documents` lists it.")],
    collection: Collection = None,
    data_dir: DataDir = None,
) -> None:
    """Remove one document: its pages, vectors and page images."""
    s = settings_from(collection=collection, data_dir=data_dir)
    with _closing(_backend(s)) as backend:
        n = backend.delete(doc_id)
    typer.echo(f"deleted {doc_id} ({n} pages)")


# ---------------------------------------------------------------------------------------------- search
SearchModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="hybrid (page images and page text, fused), visual (images: MaxSim) or text (BM25: exact words, names, "
        "IDs). Default: COLSMOL_QUERY_MODE (hybrid).",
    ),
]


def _mode(mode: str | None) -> str | None:
    from retriever.hybrid import parse_mode

    return parse_mode(mode)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="Number of pages to return (1-100).")] = 10,
    filter: Annotated[
        list[str] | None,
        typer.Option("--filter", "-f", help="key=value, e.g. doc_id=ID or metadata.lang=en; a,b means any of."),
    ] = None,
    mode: SearchModeOpt = None,
    collection: Collection = None,
    data_dir: DataDir = None,
    device: Device = None,
    json_out: JsonOut = False,
) -> None:
    """Rank pages for QUERY: by their images (late-interaction MaxSim), their text (BM25), or both fused (--mode)."""
    s = settings_from(collection=collection, data_dir=data_dir, device=device)
    flt = _filter(filter)
    with _closing(_backend(s)) as backend:
        hits = backend.search(query, k, flt, _mode(mode))
    if json_out:
        typer.echo(json.dumps(hits, indent=2))
    elif not hits:
        typer.echo("no pages indexed yet (or none match the filter)")
    else:
        _hits_table(hits, f"top {len(hits)} for {printable(query)!r}")


# ---------------------------------------------------------------------------------------------- answer
@app.command()
def answer(
    question: Annotated[str, typer.Argument(help="The question to answer from your documents.")],
    k: Annotated[int, typer.Option("-k", help="Pages shown to the model (1-8).")] = 3,
    filter: Annotated[list[str] | None, typer.Option("--filter", "-f", help="As for `search`.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="Answer length limit.")] = None,
    mode: SearchModeOpt = None,
    collection: Collection = None,
    data_dir: DataDir = None,
    device: Device = None,
    json_out: JsonOut = False,
) -> None:
    """Answer QUESTION with the answer model (SmolVLM by default) over the top-k retrieved pages, and cite them."""
    s = settings_from(collection=collection, data_dir=data_dir, device=device, max_new_tokens=max_new_tokens)
    flt = _filter(filter)
    result: dict[str, Any] | None = None
    with _closing(_backend(s)) as backend:
        if stream and not json_out:
            for piece in backend.stream_answer(question, k, flt, s.max_new_tokens, _mode(mode)):
                if isinstance(piece, dict):
                    result = piece
                else:
                    typer.echo(piece, nl=False)
            typer.echo("")
        else:
            result = backend.answer(question, k, flt, s.max_new_tokens, _mode(mode))
    if result is None:
        raise ColsmolError("the answer stream ended without its sources")
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    if not stream:
        typer.echo(result["text"])
    if result["sources"]:
        typer.echo("\nSources:")
        for i, h in enumerate(result["sources"], 1):
            typer.echo(
                f"  [{i}] {printable(str(h['file_name']))}, page {h['page_number']} (score {h['score']:.3f}) "
                f"{printable(str(h['source']))}"
            )
    for w in result["warnings"]:
        typer.echo(f"warning: {w}", err=True)


# ---------------------------------------------------------------------------------------------- explain
@app.command()
def explain(
    query: Annotated[str, typer.Argument(help="The query whose matches to show.")],
    page: Annotated[str, typer.Option("--page", help="Point id of the page (from `search --json`).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the PNG heatmap overlay.")] = Path(
        "heatmap.png"
    ),
    token: Annotated[int | None, typer.Option("--token", help="Show one query token's map (index).")] = None,
    collection: Collection = None,
    data_dir: DataDir = None,
    device: Device = None,
) -> None:
    """Write a heatmap of which regions of a page matched QUERY (a similarity map)."""
    if out.suffix.lower() != ".png":
        raise InvalidRequest(f"--out {printable(str(out))!r}: the heatmap is a PNG image; give a path ending in .png")
    s = settings_from(collection=collection, data_dir=data_dir, device=device)
    with _closing(_backend(s)) as backend:
        png, query_tokens = backend.explain(query, page, token)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png)
    except OSError as exc:
        raise ColsmolError(f"cannot write {printable(str(out))}: {exc.strerror or exc}") from None
    width, height = _png_size(png)
    typer.echo(f"wrote {out} ({width}x{height}); query tokens: {query_tokens}")


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header (IHDR), without decoding it."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# ---------------------------------------------------------------------------------------------- backups
@app.command("export")
def export_cmd(
    path: Annotated[Path, typer.Argument(help="New (or empty) folder to write the export into.")],
    collection: Collection = None,
    data_dir: DataDir = None,
) -> None:
    """Write everything needed to rebuild the collection: points, vectors, payloads, page images."""
    s = settings_from(collection=collection, data_dir=data_dir)
    with _closing(_backend(s)) as backend:
        r = backend.export(path)
    typer.echo(
        f"exported {r['pages']} pages ({r['pooled_pages']} with pooled vectors), {r['documents']} documents, "
        f"{r['images']} page images from collection {r['collection']!r} to {r['path']} "
        f"({r['bytes'] / 1e6:.1f} MB, {r['seconds']:.1f} s)"
    )


@app.command("import")
def import_cmd(
    path: Annotated[Path, typer.Argument(help="A folder written by `colsmol export`.")],
    merge: Annotated[bool, typer.Option("--merge", help="Allow importing into a non-empty collection.")] = False,
    collection: Collection = None,
    data_dir: DataDir = None,
) -> None:
    """Restore an export into an empty collection (embedded or server: exports move between them)."""
    from indexer.backup import import_collection
    from indexer.images import PageImageStore
    from indexer.store import open_store

    s = settings_from(collection=collection, data_dir=data_dir)
    with open_store(s) as store:
        r = import_collection(store, PageImageStore(s.images_dir / s.collection), path, allow_merge=merge)
    typer.echo(
        f"imported {r.pages} pages ({r.pooled_pages} with pooled vectors), {r.documents} documents, "
        f"{r.images} page images into collection {r.collection!r} from {r.path} ({r.seconds:.1f} s)"
    )


# ---------------------------------------------------------------------------------------------- serve
@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", help="Processes (server backend only).")] = 1,
    collection: Collection = None,
    data_dir: DataDir = None,
    device: Device = None,
) -> None:
    """Run the HTTP API and web page (uvicorn)."""
    try:
        from api.http.app import serve as run_server
    except ImportError as exc:  # pragma: no cover - the API module ships with the package
        raise ColsmolError(f"the HTTP API is not available in this build: {exc}") from exc
    from api.cli.backends import build_progress

    s = settings_from(collection=collection, data_dir=data_dir, device=device)
    run_server(s, host, port, workers, progress=build_progress())


# ---------------------------------------------------------------------------------------------- mcp
@app.command()
def mcp(collection: Collection = None, data_dir: DataDir = None, device: Device = None) -> None:
    """Serve search, answer, get_page and list_documents to an MCP client (a chat app, an agent) over stdio."""
    from api.mcp.server import run_stdio
    from rag.pipeline import RAGPipeline

    s = settings_from(collection=collection, data_dir=data_dir, device=device)
    with RAGPipeline.from_settings(s) as rag:
        run_stdio(rag, s.max_new_tokens)


def _register_eval() -> None:
    from api.cli.eval_cmd import eval_command

    app.command("eval")(eval_command)
    from api.cli.doctor import doctor_command

    app.command("doctor")(doctor_command)


_register_eval()


def _register_collections() -> None:
    from api.cli.collections_cmd import collections_app, keys_app

    app.add_typer(collections_app)
    app.add_typer(keys_app)


_register_collections()


def main() -> None:
    """Console-script entry point: core errors become one line and an exit code, never a traceback."""
    import os

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Our own progress bars are enough; transformers' per-checkpoint "Loading weights" bars are noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        # Standalone mode: click prints usage errors itself (exit 2) and turns typer.Exit into the exit code.
        app()
    except (ConfigError, InvalidRequest) as exc:
        err(for_interface(exc, "cli"))
        sys.exit(2)
    except ColsmolError as exc:
        err(for_interface(exc, "cli"))
        sys.exit(1)


if __name__ == "__main__":
    main()
