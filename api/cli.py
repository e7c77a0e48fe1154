"""The ``colsmol`` command line: ingest, documents, delete, search, answer, serve, mcp.

Settings come from ``COLSMOL_*`` environment variables; flags override them. Errors from the core
become one line on stderr and an exit code: 0 success, 1 a file or operation failed, 2 bad usage.
Heavy modules (torch, transformers, qdrant) are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from api.cli_common import Collection, DataDir, Device, JsonOut, err, printable, progress_bar, settings_from
from indexer.errors import ColsmolError, ConfigError, InvalidRequest

if TYPE_CHECKING:
    from indexer.filters import Filter
    from indexer.settings import Settings
    from rag.pipeline import RAGPipeline
    from retriever.search import Hit

app = typer.Typer(
    name="colsmol",
    help="Visual document search and question answering: ColSmolVLM + Qdrant + MaxSim + SmolVLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _pipeline(s: Settings) -> RAGPipeline:
    from rag.pipeline import RAGPipeline

    return RAGPipeline.from_settings(s)


def _filter(items: list[str] | None) -> Filter:
    """``--filter doc_id=a,b --filter metadata.lang=en`` as a Filter (checked here: a bad key exits 2)."""
    from indexer.filters import Filter

    return Filter.from_pairs(items or [])


def _hits_table(hits: list[Hit], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("rank", "score", "file", "page", "doc_id"):
        table.add_column(col, justify="right" if col in ("rank", "score", "page") else "left")
    for i, h in enumerate(hits, 1):
        table.add_row(str(i), f"{h.score:.3f}", str(h.file_name), str(h.page_number), str(h.doc_id))
    Console().print(table)


def _hit_dict(h: Hit) -> dict[str, Any]:
    return {
        "point_id": h.point_id,
        "doc_id": h.doc_id,
        "source": h.source,
        "file_name": h.file_name,
        "page_number": h.page_number,
        "score": round(float(h.score), 6),
    }


# ---------------------------------------------------------------------------------------------- ingest
@app.command(
    epilog="Exit codes: 0 every file was indexed or unchanged; 1 a file failed (the others were still "
    "indexed); 2 usage error."
)
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="PDF or image files, or folders (walked recursively).")],
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="key=value stored with every page (repeatable).")
    ] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Remove documents under PATHS whose files no longer exist.")
    ] = False,
    renderer: Annotated[str | None, typer.Option("--renderer", help="pdfium (default) or poppler.")] = None,
    dpi: Annotated[int | None, typer.Option("--dpi", help="PDF rendering resolution (env COLSMOL_DPI).")] = None,
    password: Annotated[str | None, typer.Option("--password", help="Password for encrypted PDFs.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Pages per encoder batch.")] = None,
    collection: Collection = None,
    data_dir: DataDir = None,
    device: Device = None,
    json_out: JsonOut = False,
) -> None:
    """Index PDFs and page images into Qdrant. Unchanged files are skipped; changed files re-indexed."""
    from indexer.ingest import ProgressEvent, parse_metadata

    s = settings_from(
        collection=collection, data_dir=data_dir, device=device, renderer=renderer, dpi=dpi, page_batch_size=batch_size
    )
    meta = parse_metadata(metadata or [])
    with _pipeline(s) as rag:
        if json_out or not sys.stderr.isatty():
            report = rag.ingest(paths, metadata=meta, prune=prune, password=password)
        else:
            with progress_bar(rate=True) as bar:
                files_t = bar.add_task("files", total=None, rate="")
                pages_t = bar.add_task("pages", total=0, rate="")

                def on_event(e: ProgressEvent) -> None:
                    if e.kind == "file":
                        bar.update(pages_t, total=(bar.tasks[pages_t].total or 0) + e.total)
                    elif e.kind == "pages":
                        bar.advance(pages_t, e.n)
                        speed = bar.tasks[pages_t].speed
                        bar.update(pages_t, rate=f"{speed:.1f} pages/s" if speed else "")
                    elif e.kind == "done":
                        bar.advance(files_t, 1)
                        if e.result is not None and e.result.status == "failed":
                            bar.console.print(
                                f"[red]failed[/] {printable(e.path)}: {printable(e.result.error or '')}",
                                markup=True,
                                highlight=False,
                            )

                report = rag.ingest(paths, metadata=meta, prune=prune, password=password, progress=on_event)
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        d = report.to_dict()
        typer.echo(
            f"indexed {d['indexed']}, unchanged {d['unchanged']}, failed {d['failed']}, skipped {d['skipped']}; "
            f"{d['pages_embedded']} pages embedded in {d['seconds']:.1f} s"
            + (f" ({d['pages_per_second']:.1f} pages/s)" if d["pages_per_second"] else "")
            + (f"; pruned {len(report.pruned)}" if report.pruned else "")
        )
        for f in report.files:
            if f.status in ("failed", "skipped"):
                typer.echo(f"  {f.status}: {printable(f.path)}: {printable(f.error or '')}", err=True)
    raise typer.Exit(report.exit_code)


# ---------------------------------------------------------------------------------------------- documents
@app.command()
def documents(collection: Collection = None, data_dir: DataDir = None, json_out: JsonOut = False) -> None:
    """List indexed documents with their page counts."""
    from indexer.store import open_store

    s = settings_from(collection=collection, data_dir=data_dir)
    with open_store(s) as store:
        docs = store.list_documents()
    if json_out:
        typer.echo(
            json.dumps(
                [
                    {
                        "doc_id": d.doc_id,
                        "source": d.source,
                        "sources": list(d.paths),
                        "file_name": d.file_name,
                        "pages": d.page_count,
                        "ingested_at": d.ingested_at,
                        "metadata": d.metadata,
                    }
                    for d in docs
                ],
                indent=2,
            )
        )
        return
    rows = [
        (
            d.doc_id,
            str(d.page_count),
            printable(d.source) + (f" (+{len(d.paths) - 1} more)" if len(d.paths) > 1 else ""),
            d.ingested_at,
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
    with _pipeline(s) as rag:
        n = rag.delete(doc_id)
    typer.echo(f"deleted {doc_id} ({n} pages)")


# ---------------------------------------------------------------------------------------------- search
@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="Number of pages to return (1-100).")] = 10,
    filter: Annotated[
        list[str] | None,
        typer.Option("--filter", "-f", help="key=value, e.g. doc_id=ID or metadata.lang=en; a,b means any of."),
    ] = None,
    collection: Collection = None,
    data_dir: DataDir = None,
    device: Device = None,
    json_out: JsonOut = False,
) -> None:
    """Rank pages by late-interaction (MaxSim) similarity to QUERY."""
    s = settings_from(collection=collection, data_dir=data_dir, device=device)
    flt = _filter(filter)
    with _pipeline(s) as rag:
        hits = rag.search(query, k=k, filter=flt)
    if json_out:
        typer.echo(json.dumps([_hit_dict(h) for h in hits], indent=2))
    elif not hits:
        typer.echo("no pages indexed yet (or none match the filter)")
    else:
        _hits_table(hits, f"top {len(hits)} for {query!r}")


# ---------------------------------------------------------------------------------------------- answer
@app.command()
def answer(
    question: Annotated[str, typer.Argument(help="The question to answer from your documents.")],
    k: Annotated[int, typer.Option("-k", help="Pages shown to the model (1-8).")] = 3,
    filter: Annotated[list[str] | None, typer.Option("--filter", "-f", help="As for `search`.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="Answer length limit.")] = None,
    collection: Collection = None,
    data_dir: DataDir = None,
    device: Device = None,
    json_out: JsonOut = False,
) -> None:
    """Answer QUESTION with the answer model (SmolVLM by default) over the top-k retrieved pages, and cite them."""
    from rag.types import Answer

    s = settings_from(collection=collection, data_dir=data_dir, device=device, max_new_tokens=max_new_tokens)
    flt = _filter(filter)
    with _pipeline(s) as rag:
        if stream and not json_out:
            result = None
            for piece in rag.stream_answer(question, k=k, filter=flt, max_new_tokens=s.max_new_tokens):
                if isinstance(piece, Answer):
                    result = piece
                else:
                    typer.echo(piece, nl=False)
            typer.echo("")
            assert result is not None
        else:
            result = rag.answer(question, k=k, filter=flt, max_new_tokens=s.max_new_tokens)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "text": result.text,
                    "sources": [_hit_dict(h) for h in result.sources],
                    "timings": result.timings,
                    "warnings": result.warnings,
                },
                indent=2,
            )
        )
        return
    if not stream:
        typer.echo(result.text)
    if result.sources:
        typer.echo("\nSources:")
        for i, h in enumerate(result.sources, 1):
            typer.echo(f"  [{i}] {h.file_name}, page {h.page_number} (score {h.score:.3f}) {h.source}")
    for w in result.warnings:
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
    with _pipeline(s) as rag:
        smap = rag.explain(query, page, token=token)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        smap.overlay().save(out, format="PNG")
    except OSError as exc:
        raise ColsmolError(f"cannot write {printable(str(out))}: {exc.strerror or exc}") from None
    typer.echo(f"wrote {out} ({smap.heatmap.shape[1]}x{smap.heatmap.shape[0]}); query tokens: {smap.query_tokens}")


# ---------------------------------------------------------------------------------------------- backups
@app.command("export")
def export_cmd(
    path: Annotated[Path, typer.Argument(help="New (or empty) folder to write the export into.")],
    collection: Collection = None,
    data_dir: DataDir = None,
) -> None:
    """Write everything needed to rebuild the collection: points, vectors, payloads, page images."""
    from indexer.backup import export_collection
    from indexer.images import PageImageStore
    from indexer.store import open_store

    s = settings_from(collection=collection, data_dir=data_dir)
    with open_store(s) as store:
        r = export_collection(store, PageImageStore(s.images_dir / s.collection), path)
    typer.echo(
        f"exported {r.pages} pages ({r.pooled_pages} with pooled vectors), {r.documents} documents, "
        f"{r.images} page images from collection {r.collection!r} to {r.path} "
        f"({r.bytes / 1e6:.1f} MB, {r.seconds:.1f} s)"
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
        from api.app import serve as run_server
    except ImportError as exc:  # pragma: no cover - the API module ships with the package
        raise ColsmolError(f"the HTTP API is not available in this build: {exc}") from exc
    run_server(settings_from(collection=collection, data_dir=data_dir, device=device), host, port, workers)


# ---------------------------------------------------------------------------------------------- mcp
@app.command()
def mcp(collection: Collection = None, data_dir: DataDir = None, device: Device = None) -> None:
    """Serve search, answer, get_page and list_documents to an MCP client (a chat app, an agent) over stdio."""
    from api.mcp_server import run_stdio

    s = settings_from(collection=collection, data_dir=data_dir, device=device)
    with _pipeline(s) as rag:
        run_stdio(rag, s.max_new_tokens)


def _register_eval() -> None:
    from api.eval_cmd import eval_command

    app.command("eval")(eval_command)


_register_eval()


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
        err(str(exc))
        sys.exit(2)
    except ColsmolError as exc:
        err(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
