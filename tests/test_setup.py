"""scripts/install_plan.py: what scripts/setup.sh installs (the venv stamp, extras, CPU-only torch wheels)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from install_plan import CPU_INDEX, plan, read_stamp, write_stamp  # noqa: E402


def test_a_superset_of_extras_is_current(tmp_path):
    write_stamp(tmp_path / "stamp", "abc", {"test"})
    stamp = read_stamp(tmp_path / "stamp")
    assert plan(stamp, "abc", set(), venv_exists=True)["INSTALL"] == "0"  # demo.sh after test.sh
    assert plan(stamp, "abc", {"test"}, venv_exists=True)["INSTALL"] == "0"
    more = plan(stamp, "abc", {"gpu"}, venv_exists=True, nvidia=True)
    assert more["INSTALL"] == "1" and more["EXTRAS"] == "gpu,test"  # keeps what was installed
    changed = plan(stamp, "new", set(), venv_exists=True, nvidia=True)
    assert changed["INSTALL"] == "1" and changed["EXTRAS"] == ""  # new dependency set: start from the request
    assert plan(stamp, "abc", set(), venv_exists=False, nvidia=True)["INSTALL"] == "1"


def test_old_stamp_format_is_read(tmp_path):
    (tmp_path / "stamp").write_text("9ba9bb1bc35e5cea-test\n")
    assert read_stamp(tmp_path / "stamp") == ("9ba9bb1bc35e5cea", {"test"})
    assert read_stamp(tmp_path / "missing") == ("", set())


@pytest.mark.parametrize(
    ("override", "nvidia", "index_ok", "index", "noted"),
    [
        ("", False, True, CPU_INDEX, False),  # a laptop: the small CPU wheels
        ("", False, False, "", True),  # no GPU, index unreachable (these machines): default wheels and a note
        ("", True, True, "", False),  # a GPU box: PyPI's CUDA wheels
        ("cpu", True, True, CPU_INDEX, False),
        ("default", False, True, "", False),
        ("https://mirror.example/whl", False, True, "https://mirror.example/whl", False),
    ],
)
def test_torch_wheels_choice(override, nvidia, index_ok, index, noted):
    got = plan(("", set()), "abc", set(), venv_exists=False, override=override, nvidia=nvidia, cpu_index_ok=index_ok)
    assert got["TORCH_INDEX"] == index and bool(got["NOTE"]) == noted


def test_the_script_prints_shell_assignments(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "install_plan.py"), "--venv", str(tmp_path), "--digest", "x"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLSMOL_TORCH_INDEX": "default", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert out.splitlines() == ["INSTALL=1", "EXTRAS=''", "TORCH_INDEX=''", "NOTE=''"]


def test_the_demo_script_ingests_the_samples_and_answers(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """README's first command after its setup step: scripts/demo.sh's own lines, run by bash on the tiny models.

    Its ``scripts/setup.sh`` is replaced by a no-op in a copy of the script's folder: the real one relinks this
    venv and rebuilds the CPU kernel in place, under the running tests (its decisions are tested above). The demo's
    default question has an apostrophe, which once broke bash's parsing of the answer line.
    """
    import os
    import shutil

    tree = tmp_path / "checkout"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "demo.sh", tree / "scripts" / "demo.sh")
    shutil.copy(REPO / "scripts" / "libreoffice.sh", tree / "scripts" / "libreoffice.sh")  # installed here: a check
    (tree / "scripts" / "setup.sh").write_text("#!/usr/bin/env bash\ntrue\n")
    (tree / "samples").symlink_to(REPO / "samples")
    env = {
        **os.environ,
        "COLSMOL_VENV": sys.prefix,
        "COLSMOL_ENCODER_MODEL": str(tiny_models["encoder"]),
        "COLSMOL_GENERATOR_MODEL": str(tiny_models["generator"]),
        "COLSMOL_DATA_DIR": str(tmp_path / "data"),
        "COLSMOL_DEVICE": "cpu",
        "COLSMOL_MAX_NEW_TOKENS": "8",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        ["bash", str(tree / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "indexed 2, unchanged 0, failed 0, skipped 0" in proc.stdout, proc.stdout
    assert "Sources:" in proc.stdout and "northwind-annual-report-2023.pdf" in proc.stdout, proc.stdout
    assert "unexpected EOF" not in proc.stderr
