"""The colsmol command line as a user runs it: separate processes, real files, tiny real models."""

from __future__ import annotations

import json

from PIL import Image

from testkit.pdfs import A4, LETTER, PageSpec, write_pdf
from tests.test_ingest import _cli_env, _colsmol


def test_search_explain_export_import_round_trip(tiny_models, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text=f"alpha {i}") for i in range(3)])
    write_pdf(docs / "b.pdf", [PageSpec(*A4, text="", scan=True)])
    env = _cli_env(tiny_models, tmp_path / "data")
    assert _colsmol("ingest", str(docs), "--dpi", "50", env=env).returncode == 0

    res = _colsmol("search", "alpha one", "-k", "3", "--json", env=env)
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)
    assert len(hits) == 3 and {"point_id", "score", "file_name", "page_number"} <= set(hits[0])

    heatmap = tmp_path / "map.png"
    res = _colsmol("explain", "alpha one", "--page", hits[0]["point_id"], "--out", str(heatmap), env=env)
    assert res.returncode == 0, res.stderr
    with Image.open(heatmap) as im:
        assert im.mode == "RGB" and im.width > 0

    res = _colsmol("answer", "what is alpha?", "-k", "2", "--json", "--max-new-tokens", "4", env=env)
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    assert [s["point_id"] for s in answer["sources"]] == [h["point_id"] for h in hits[:2]]

    backup = tmp_path / "backup"
    res = _colsmol("export", str(backup), env=env)
    assert res.returncode == 0 and "exported 4 pages" in res.stdout, res.stderr

    restored = _cli_env(tiny_models, tmp_path / "restored")
    res = _colsmol("import", str(backup), env=restored)
    assert res.returncode == 0 and "imported 4 pages" in res.stdout, res.stderr
    res = _colsmol("search", "alpha one", "-k", "3", "--json", env=restored)
    assert [(h["point_id"], round(h["score"], 3)) for h in json.loads(res.stdout)] == [
        (h["point_id"], round(h["score"], 3)) for h in hits
    ]
    # Importing twice into a non-empty collection is refused with one clear line.
    res = _colsmol("import", str(backup), env=restored)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "--merge" in res.stderr


def test_filters_on_the_command_line(tiny_models, tmp_path) -> None:
    """--filter is parsed once: an unknown key is a usage error (exit 2, one line); page_number is an integer."""
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text=f"alpha {i}") for i in range(3)])
    env = _cli_env(tiny_models, tmp_path / "data")
    assert _colsmol("ingest", str(docs), "--dpi", "50", "-m", "lang=en", env=env).returncode == 0
    res = _colsmol("search", "alpha", "--filter", "lang=en", env=env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown field 'lang'" in res.stderr, res.stderr
    res = _colsmol("search", "alpha", "--filter", "page_number=2", "--filter", "metadata.lang=en", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert [h["page_number"] for h in json.loads(res.stdout)] == [2]
    res = _colsmol("answer", "alpha?", "--filter", "page_number=two", env=env)
    assert res.returncode == 2 and "not an integer" in res.stderr and res.stderr.count("\n") == 1
