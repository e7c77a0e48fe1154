"""The colsmol command line as a user runs it: separate processes, real files, tiny real models."""

from __future__ import annotations

import json

import pytest
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


def test_missing_inputs_and_special_files(tiny_models, tmp_path) -> None:
    """A named path that does not exist is a failure (exit 1); a FIFO is skipped for what it is."""
    import os

    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "good.pdf", [PageSpec(*LETTER)])
    os.mkfifo(docs / "pipe.pdf")
    env = _cli_env(tiny_models, tmp_path / "data")
    res = _colsmol("ingest", str(docs), str(tmp_path / "does-not-exist"), "--dpi", "40", "--json", env=env)
    assert res.returncode == 1, res.stderr
    files = {f["path"].rsplit("/", 1)[-1]: f for f in json.loads(res.stdout)["files"]}
    assert files["does-not-exist"]["status"] == "failed" and files["does-not-exist"]["error"] == "not found"
    assert files["pipe.pdf"] == {**files["pipe.pdf"], "status": "skipped", "error": "not a regular file (FIFO)"}
    assert files["good.pdf"]["status"] == "indexed"


def test_file_names_cannot_fake_output_lines(tiny_models, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "evil\nfailed: x.pdf").write_bytes(b"not a pdf at all")
    env = _cli_env(tiny_models, tmp_path / "data")
    res = _colsmol("ingest", str(docs), env=env)
    assert res.returncode == 1
    failed_lines = [line for line in res.stderr.splitlines() if "failed:" in line]
    assert len(failed_lines) == 1 and "evil\\nfailed: x.pdf" in failed_lines[0], res.stderr


def test_usage_errors_exit_2_in_one_line(tiny_models, tmp_path) -> None:
    env = _cli_env(tiny_models, tmp_path / "data")
    write_pdf(tmp_path / "a.pdf", [PageSpec(*LETTER)])
    bad = (["ingest", str(tmp_path / "a.pdf"), "-m", "badpair"], ["explain", "q", "--page", "x", "--out", "m.txt"])
    for args in bad:
        res = _colsmol(*args, env=env)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, (args, res.stderr)


def test_explain_creates_the_output_folder_and_documents_never_truncate_ids(tiny_models, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / ("a-very-long-file-name-" * 4 + ".pdf"), [PageSpec(*LETTER, text="alpha")])
    env = _cli_env(tiny_models, tmp_path / "data")
    assert _colsmol("ingest", str(docs), "--dpi", "40", env=env).returncode == 0
    listing = _colsmol("documents", env=dict(env, COLUMNS="60"))  # piped, and a narrow terminal width
    doc_id = json.loads(_colsmol("documents", "--json", env=env).stdout)[0]["doc_id"]
    assert doc_id in listing.stdout.split(), listing.stdout
    hit = json.loads(_colsmol("search", "alpha", "--json", env=env).stdout)[0]
    out = tmp_path / "maps" / "today" / "map.png"
    res = _colsmol("explain", "alpha", "--page", hit["point_id"], "--out", str(out), env=env)
    assert res.returncode == 0 and out.is_file(), res.stderr
    assert _colsmol("delete", doc_id, env=env).returncode == 0


def test_an_unreachable_hub_fails_fast_with_the_adapter_hint(tmp_path) -> None:
    """Offline without HF_HUB_OFFLINE: one probe, then one line (not minutes of retries), naming the base model."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(COLSMOL_DATA_DIR=str(tmp_path / "data"), HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("COLSMOL_ENCODER_MODEL", None)
    write_pdf(tmp_path / "a.pdf", [PageSpec(*LETTER)])
    res = _colsmol("ingest", str(tmp_path / "a.pdf"), env=env, timeout=90)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert "cannot be reached" in lines[0] and "vidore/ColSmolVLM-Instruct-256M-base" in lines[0]


@pytest.fixture
def small_disk(tmp_path):
    """A real, small ext4 file system (a loop-mounted image): the only way to fill a disk for real here.

    Needs root and loop devices; skipped, saying so, where the test machine has neither.
    """
    import shutil
    import subprocess

    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (e2fsprogs)")
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "256M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    res = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a loop file system here ({res.stderr.strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_loses_nothing(tiny_models, tmp_path, small_disk) -> None:
    import shutil

    first = write_pdf(tmp_path / "first.pdf", [PageSpec(*LETTER, text="first")] * 2)
    second = write_pdf(tmp_path / "second.pdf", [PageSpec(*LETTER, text=f"second {i}") for i in range(3)])
    env = _cli_env(tiny_models, small_disk / "data")
    assert _colsmol("ingest", str(first), "--dpi", "40", env=env).returncode == 0
    filler = small_disk / "filler"
    with filler.open("wb") as fh:  # leave 40 MB: below the margin colsmol keeps free for its store
        fh.truncate(0)
        block = b"\0" * (1 << 20)
        for _ in range(max(0, (shutil.disk_usage(small_disk).free - (40 << 20)) >> 20)):
            fh.write(block)
    res = _colsmol("ingest", str(second), "--dpi", "40", env=env)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1 and "is full" in lines[0], res.stderr
    assert str(small_disk / "data") in lines[0]
    listing = _colsmol("documents", "--json", env=env)  # reading still works on the full disk
    assert listing.returncode == 0 and [d["file_name"] for d in json.loads(listing.stdout)] == ["first.pdf"]
    filler.unlink()
    assert _colsmol("ingest", str(tmp_path), "--dpi", "40", env=env).returncode == 0  # tmp_path holds the data dir
    names = sorted(d["file_name"] for d in json.loads(_colsmol("documents", "--json", env=env).stdout))
    assert names == ["first.pdf", "second.pdf"]
    hits = json.loads(_colsmol("search", "second", "-k", "10", "--json", env=env).stdout)
    assert len(hits) == 5
