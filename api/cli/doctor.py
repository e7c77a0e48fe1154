"""``colsmol doctor``: which inputs this installation can read, and what to install for the rest.

Registered in :mod:`api.cli.app`. Looks only at the system (renderers, LibreOffice, the network sandbox); it opens no
collection and loads no model, so it answers in about a second.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import typer

from api.cli.common import JsonOut


def checks() -> dict[str, Any]:
    """What ``colsmol doctor`` reports, as data."""
    from indexer.render.base import SUPPORTED_SUFFIXES
    from indexer.render.containers import CONVERTIBLE_SUFFIXES
    from indexer.render.soffice import INSTALL_HINT, find_soffice, network_sandbox

    soffice = find_soffice()
    version = None
    if soffice is not None:
        try:
            out = subprocess.run([str(soffice), "--version"], capture_output=True, text=True, timeout=30).stdout
            version = out.strip().splitlines()[0] if out.strip() else None
        except (OSError, subprocess.SubprocessError):
            version = None
    sandbox = network_sandbox() if soffice is not None else ()
    return {
        "pdf_renderers": {"pdfium": True, "poppler": shutil.which("pdftoppm") is not None},
        "native_formats": sorted(SUPPORTED_SUFFIXES),
        "conversion": {
            "available": soffice is not None,
            "soffice": str(soffice) if soffice else None,
            "version": version,
            "network_sandbox": " ".join(sandbox) if sandbox else None,
            "formats": sorted(CONVERTIBLE_SUFFIXES),
            "install": None if soffice else INSTALL_HINT,
        },
    }


def doctor_command(json_out: JsonOut = False) -> None:
    """Say which file types this installation can ingest, and what to install for the others."""
    d = checks()
    if json_out:
        typer.echo(json.dumps(d, indent=2))
        return
    c = d["conversion"]
    poppler = "available" if d["pdf_renderers"]["poppler"] else "not found (apt-get install poppler-utils)"
    typer.echo(f"PDF and images:    {' '.join(d['native_formats'])} (pdfium built in; poppler {poppler})")
    if c["available"]:
        net = f"no network ({c['network_sandbox']})" if c["network_sandbox"] else "host network (unshare unavailable)"
        typer.echo(f"Office conversion: available: {c['version'] or c['soffice']}; {net}")
        typer.echo(f"  formats:         {' '.join(c['formats'])}")
    else:
        typer.echo("Office conversion: NOT available: these files fail with one line each: " + " ".join(c["formats"]))
        typer.echo(f"  install:         {c['install']}")
