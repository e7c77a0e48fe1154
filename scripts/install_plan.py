"""Decide what ``scripts/setup.sh`` installs: whether the venv is current, which extras, which torch wheels.

Standard library only (it runs before the venv exists). Prints shell assignments for ``eval``::

    INSTALL=1
    EXTRAS=test
    TORCH_INDEX=https://download.pytorch.org/whl/cpu
    NOTE='...'

- The venv is current when its stamp records the same dependency hash and at least the extras asked for
  (running ``demo.sh`` after ``test.sh`` reinstalls nothing); otherwise the install covers both the extras
  asked for and those already installed.
- torch: on a machine without an NVIDIA GPU the CPU-only wheels from the PyTorch project's own index are
  about 1 GB in the venv instead of 7.5 GB with the CUDA ones from PyPI. They are used when that index
  answers; otherwise the default wheels, with a one-line note. ``COLSMOL_TORCH_INDEX`` overrides:
  ``cpu``, ``default`` (PyPI's), or an index URL. The pinned versions are the same either way.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import urllib.request
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def read_stamp(path: Path) -> tuple[str, set[str]]:
    """``(dependency hash, installed extras)`` from a stamp file; empty when there is none.

    Reads the old one-line form ``HASH-EXTRAS`` too.
    """
    try:
        text = path.read_text().strip()
    except OSError:
        return "", set()
    if "\n" in text:
        digest, extras = text.split("\n", 1)
    else:
        digest, _, extras = text.partition("-")
    return digest.strip(), {e for e in extras.replace(" ", "").split(",") if e}


def write_stamp(path: Path, digest: str, extras: set[str]) -> None:
    path.write_text(f"{digest}\n{','.join(sorted(extras))}\n")


def has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()


def reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:  # noqa: BLE001 - any failure means "not usable from here"
        return False


def plan(
    stamp: tuple[str, set[str]],
    digest: str,
    want: set[str],
    *,
    venv_exists: bool,
    override: str = "",
    nvidia: bool = False,
    cpu_index_ok: bool | None = None,
) -> dict[str, str]:
    """The decision, as the variables setup.sh reads. ``cpu_index_ok=None`` means "not probed yet" (a probe is
    only needed when CPU wheels would be chosen)."""
    have_digest, have_extras = stamp
    current = venv_exists and have_digest == digest and want <= have_extras
    extras = want | (have_extras if have_digest == digest else set())
    out = {"INSTALL": "0" if current else "1", "EXTRAS": ",".join(sorted(extras)), "TORCH_INDEX": "", "NOTE": ""}
    if current:
        return out
    choice = override.strip()
    if choice in ("", "auto"):
        if nvidia:
            return out
        if cpu_index_ok is None:
            cpu_index_ok = reachable(CPU_INDEX + "/")
        if cpu_index_ok:
            out["TORCH_INDEX"] = CPU_INDEX
        else:
            out["NOTE"] = (
                f"no NVIDIA GPU here, but the CPU-only torch index ({CPU_INDEX}) cannot be reached: "
                "installing the default (larger) torch wheels"
            )
    elif choice == "cpu":
        out["TORCH_INDEX"] = CPU_INDEX
    elif choice != "default":
        out["TORCH_INDEX"] = choice
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, required=True)
    ap.add_argument("--digest", required=True)
    ap.add_argument("--extras", default="")
    ap.add_argument("--write-stamp", action="store_true", help="record a finished install of --extras")
    args = ap.parse_args(argv)
    stamp_path = args.venv / ".colsmol-deps"
    want = {e for e in args.extras.replace(" ", "").split(",") if e}
    if args.write_stamp:
        write_stamp(stamp_path, args.digest, want)
        return 0
    decided = plan(
        read_stamp(stamp_path),
        args.digest,
        want,
        venv_exists=(args.venv / "bin" / "python").exists(),
        override=os.environ.get("COLSMOL_TORCH_INDEX", ""),
        nvidia=has_nvidia_gpu(),
    )
    sys.stdout.write("".join(f"{key}={shlex.quote(value)}\n" for key, value in decided.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
