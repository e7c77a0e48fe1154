"""``colsmol collections`` (list, create, delete) and ``colsmol keys`` (create, list, revoke).

Both work on the data directory's files (``collections/<name>/collection.json``, ``keys.json``), which a running
``colsmol serve`` reads on its next request: creating a collection or a key needs no restart. Deleting a collection
removes its points too, so while a server owns the data dir it goes through that server (``DELETE
/v1/collections/<name>``, with ``COLSMOL_API_KEY``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from api.cli.common import DataDir, JsonOut, printable, settings_from
from indexer.errors import InvalidRequest

collections_app = typer.Typer(
    name="collections",
    help="Document collections, each with its own settings, index and page images. Without a command: list them.",
    no_args_is_help=False,
    invoke_without_command=True,
)
keys_app = typer.Typer(name="keys", help="API keys scoped to one collection and a role.", no_args_is_help=True)


def _settings(data_dir: Any) -> Any:
    return settings_from(data_dir=data_dir)


def _rows(s: Any) -> list[dict[str, Any]]:
    from rag.collections import Collections

    registry = Collections(s)
    return [{"name": n, "default": n == registry.default_name, **registry.spec(n).to_dict()} for n in registry.names()]


@collections_app.callback()
def list_collections(ctx: typer.Context, data_dir: DataDir = None, json_out: JsonOut = False) -> None:
    """List the collections: the default one (COLSMOL_COLLECTION) and those created here."""
    if ctx.invoked_subcommand is not None:
        return
    rows = _rows(_settings(data_dir))
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        edge = r["page_longest_edge"] or "model's"
        typer.echo(
            f"{printable(r['name'])}{' (default)' if r['default'] else ''}: page edge {edge}, index {r['index_dtype']}"
            f", pool {r['pool_factor']}, {r['search_mode']}"
            + (f", language {r['language']}" if r["language"] else "")
        )


@collections_app.command("create")
def create_collection(
    name: Annotated[str, typer.Argument(help="1-63 of a-z, 0-9, '-', '_' (starting with a letter or digit).")],
    page_longest_edge: Annotated[
        int | None, typer.Option("--page-longest-edge", help="Page resolution in pixels (default: the server's).")
    ] = None,
    index_dtype: Annotated[str | None, typer.Option("--index-dtype", help="fp16 or int8.")] = None,
    pool_factor: Annotated[int | None, typer.Option("--pool-factor", help="Token pooling (1 = exact).")] = None,
    search_mode: Annotated[str | None, typer.Option("--search-mode", help="exact, tiered, auto or two-stage.")] = None,
    encoder_model: Annotated[str | None, typer.Option("--encoder-model", help="Encoder checkpoint.")] = None,
    language: Annotated[str | None, typer.Option("--language", help="The documents' language, e.g. en.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create an empty collection; its settings (the current ones for those not given) are fixed from now on."""
    from rag.collections import Collections

    spec = Collections(_settings(data_dir)).create(
        name,
        language=language,
        page_longest_edge=page_longest_edge,
        index_dtype=index_dtype,
        pool_factor=pool_factor,
        search_mode=search_mode,
        encoder_model=encoder_model,
    )
    typer.echo(
        f"created collection {spec.name!r}; use it with --collection {spec.name} (or /v1/collections/{spec.name})"
    )


@collections_app.command("delete")
def delete_collection(
    name: Annotated[str, typer.Argument(help="The collection to delete.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: its pages, images and keys go for good.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Delete a collection: its points, page images, index cache and keys (never another collection's)."""
    from api.cli.advert import find_serving
    from api.keys import KeyStore
    from rag.collections import Collections

    if not yes:
        raise InvalidRequest(f"deleting {name!r} removes its pages, images and keys for good; add --yes to confirm")
    s = _settings(data_dir)
    advert = find_serving(s.data_dir, name)
    if advert is not None:
        from api.cli.client import ColsmolClient

        with ColsmolClient(advert.url, api_key=s.api_key) as client:
            client.delete_collection(name)
    else:
        Collections(s).delete(name)
        KeyStore(s.data_dir).revoke_collection(name)
    typer.echo(f"deleted collection {name!r}")


@keys_app.command("create")
def create_key(
    collection: Annotated[str, typer.Option("--collection", "-c", help="The collection the key opens.")],
    role: Annotated[str, typer.Option("--role", help="read, write (also ingest and delete) or admin.")] = "read",
    data_dir: DataDir = None,
) -> None:
    """Make a key and print it, once: only its hash is kept."""
    from api.keys import KeyStore
    from rag.collections import Collections

    s = _settings(data_dir)
    if not Collections(s).exists(collection):
        raise InvalidRequest(f"no collection named {collection!r}; `colsmol collections` lists them")
    record, token = KeyStore(s.data_dir).create(collection, role)
    typer.echo(token)
    # The note goes to stderr: `KEY=$(colsmol keys create ...)` captures the key alone.
    typer.echo(f"key {record.id}: {record.role} on {record.collection!r}; it is shown only now", err=True)
    if not s.api_key:
        typer.echo(
            "note: with a scoped key in the data dir the server needs a key on every request; set COLSMOL_API_KEY "
            "too, for an admin key that opens everything",
            err=True,
        )


@keys_app.command("list")
def list_keys(
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Only this collection's.")] = None,
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """The keys (ids, collections, roles; never the keys themselves)."""
    from api.keys import KeyStore

    keys = [k.public() for k in KeyStore(_settings(data_dir).data_dir).list(collection)]
    if json_out:
        typer.echo(json.dumps(keys, indent=2))
        return
    for k in keys:
        typer.echo(f"{k['id']}  {k['role']:<5}  {printable(k['collection'])}  {k['created_at']}")


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (`colsmol keys list`).")], data_dir: DataDir = None
) -> None:
    """Revoke a key: it stops working at once, on a running server too."""
    from api.keys import KeyStore

    record = KeyStore(_settings(data_dir).data_dir).revoke(key_id)
    typer.echo(f"revoked key {record.id} ({record.role} on {record.collection!r})")
