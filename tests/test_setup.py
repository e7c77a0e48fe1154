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
