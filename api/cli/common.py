"""What every ``colsmol`` command shares: the common options, settings from flags, errors, progress bars.

Lives apart from :mod:`api.cli.app` so command modules (``api.cli.eval_cmd``) import it without importing the app that
registers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from indexer.errors import ConfigError

if TYPE_CHECKING:
    from rich.progress import Progress

    from indexer.settings import Settings

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (env COLSMOL_DATA_DIR).")]
Collection = Annotated[str | None, typer.Option("--collection", "-c", help="Collection (env COLSMOL_COLLECTION).")]
Device = Annotated[str | None, typer.Option("--device", help="auto, cuda, cpu or mps (env COLSMOL_DEVICE).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def printable(text: str) -> str:
    r"""``text`` with control characters escaped, so a file name cannot fake extra output lines.

    >>> printable("a.pdf\nfailed: b.pdf"), printable("café.pdf")
    ('a.pdf\\nfailed: b.pdf', 'café.pdf')
    """
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def err(msg: str) -> None:
    """One error line on stderr (the exit code is the caller's)."""
    typer.echo(f"colsmol: error: {msg}", err=True)


def settings_from(**overrides: Any) -> Settings:
    """``COLSMOL_*`` settings with the flags that were given (not None) on top, then the settings the collection
    was created with (:mod:`rag.collections`); a bad value is a ConfigError."""
    from pydantic import ValidationError

    from indexer.settings import Settings
    from rag.collections import with_collection

    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    # A collection made with `colsmol collections create` runs with the settings it was created with.
    return with_collection(settings)


def progress_bar(*, rate: bool = False) -> Progress:
    """The progress display long commands share (on stderr): description, bar, done/total, [rate], elapsed."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

    columns: list[ProgressColumn] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if rate:
        columns.append(TextColumn("{task.fields[rate]}"))
    columns.append(TimeElapsedColumn())
    return Progress(*columns, console=Console(stderr=True), transient=False)
