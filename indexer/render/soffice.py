"""Running LibreOffice headless, contained: one conversion, one private profile, one process group.

``run_soffice`` starts ``soffice.bin`` itself (not the ``soffice`` shell script, whose ``oosplash`` launcher
would put a process between us and the converter) with:

- a fresh profile directory (``-env:UserInstallation``), so parallel conversions never share a profile lock, and
  seeded with :data:`REGISTRY`: macros disabled, links and external references never updated on load, formulas
  never recalculated on load (``WEBSERVICE()`` keeps its cached value), Java off;
- a new session (``start_new_session``): the whole process group is killed on a timeout, an exception or Ctrl-C;
- ``PR_SET_PDEATHSIG`` = SIGKILL on Linux, so the converter dies with the thread that started it, even when
  colsmol itself is killed with SIGKILL;
- an empty network namespace (``unshare -n``, or ``unshare -rn`` where only user namespaces are allowed) when the
  platform lets us create one: no network at all, loopback included.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

#: What to install when LibreOffice is missing (Debian/Ubuntu).
INSTALL_HINT = (
    "apt-get install libreoffice-core-nogui libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui"
)

#: soffice.bin asks its launcher for a restart (exit code 81) after it has set up a new profile.
_RESTART = 81

_PR_SET_PDEATHSIG = 1

# LibreOffice's own settings (officecfg), written into each conversion's fresh profile.
# Writer's link update mode: 0 = never; Calc's: 1 = never; recalculation on load: 1 = never.
REGISTRY = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
{items}
</oor:items>
"""
_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("/org.openoffice.Office.Common/Security/Scripting", "DisableMacrosExecution", "true"),
    ("/org.openoffice.Office.Common/Security/Scripting", "MacroSecurityLevel", "3"),
    ("/org.openoffice.Office.Common/Security/Scripting", "BlockUntrustedRefererLinks", "true"),
    ("/org.openoffice.Office.Common/Security/Scripting", "CheckDocumentEvents", "true"),
    ("/org.openoffice.Office.Writer/Content/Update", "Link", "0"),
    ("/org.openoffice.Office.Calc/Content/Update", "Link", "1"),
    ("/org.openoffice.Office.Calc/Formula/Load", "OOXMLRecalcMode", "1"),
    ("/org.openoffice.Office.Calc/Formula/Load", "ODFRecalcMode", "1"),
    ("/org.openoffice.Office.Java/VirtualMachine", "Enable", "false"),
)


def registry_xml() -> str:
    """The ``registrymodifications.xcu`` every conversion's profile starts with."""
    items = "\n".join(
        f'<item oor:path="{path}"><prop oor:name="{name}" oor:op="fuse"><value>{value}</value></prop></item>'
        for path, name, value in _SETTINGS
    )
    return REGISTRY.format(items=items)


class ConverterMissing(RuntimeError):
    """LibreOffice is not installed (or not where we look)."""


class ConversionTimeout(RuntimeError):
    """The converter ran past its time limit and was killed."""


@dataclass(frozen=True)
class SofficeResult:
    returncode: int
    stderr: str
    seconds: float


def find_soffice() -> Path | None:
    """The ``soffice.bin`` executable, or None: the one behind ``soffice`` on PATH, or in the usual install folders."""
    candidates: list[Path] = []
    on_path = shutil.which("soffice") or shutil.which("libreoffice")
    if on_path:
        candidates.append(Path(on_path))
    candidates += [Path("/usr/lib/libreoffice/program"), Path("/opt/libreoffice/program")]
    for c in candidates:
        c = c.resolve() if c.exists() else c
        binary = c if c.name == "soffice.bin" else (c if c.is_dir() else c.parent) / "soffice.bin"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


@lru_cache(maxsize=1)
def network_sandbox() -> tuple[str, ...]:
    """The command prefix that runs a program without any network (``unshare -n`` as root, ``unshare -rn`` with
    user namespaces), or ``()`` where neither works. Probed once per process."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return ()
    for prefix in ((unshare, "-n"), (unshare, "-rn")):
        try:
            ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return prefix
    log.info("no network namespace available (unshare -n and -rn failed): LibreOffice runs with the host network")
    return ()


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


# Loaded here, in the parent: the child of a multi-threaded process must not dlopen between fork and exec.
_LIBC = _load_libc()


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that forked it ends (colsmol killed, even by SIGKILL)."""
    parent = os.getppid()
    if _LIBC is None:
        return
    try:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except AttributeError:
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


# Process groups of conversions running now, killed by kill_all() (Ctrl-C, interpreter exit).
_LIVE: set[int] = set()
_LIVE_LOCK = threading.Lock()


def kill_all() -> int:
    """Kill every converter process group this process started and that is still running; returns how many."""
    with _LIVE_LOCK:
        groups = list(_LIVE)
    for pgid in groups:
        _kill_group(pgid)
    return len(groups)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_soffice(args: list[str], profile: Path, timeout_s: float, cwd: Path, sandbox: bool = True) -> SofficeResult:
    """Run ``soffice.bin <args>`` headless with the fresh ``profile`` folder, killed after ``timeout_s`` seconds.

    Raises :class:`ConverterMissing` or :class:`ConversionTimeout`. Whatever happens (timeout, exception,
    KeyboardInterrupt), the whole process group is killed and reaped before this returns or raises.
    """
    binary = find_soffice()
    if binary is None:
        raise ConverterMissing(f"LibreOffice is not installed; {INSTALL_HINT}")
    user = profile / "user"
    user.mkdir(parents=True, exist_ok=True)
    (user / "registrymodifications.xcu").write_text(registry_xml(), encoding="utf-8")
    command = [
        *(network_sandbox() if sandbox else ()),
        str(binary),
        f"-env:UserInstallation={profile.resolve().as_uri()}",
        "--headless",
        "--invisible",
        "--norestore",
        "--nologo",
        "--nodefault",
        "--nolockcheck",
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    env.update(HOME=str(profile), TMPDIR=str(profile), SAL_USE_VCLPLUGIN="svp")
    deadline = time.monotonic() + timeout_s
    started = time.perf_counter()
    for _attempt in range(3):  # a fresh profile makes soffice.bin ask for one restart (exit code 81)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConversionTimeout(f"timed out after {timeout_s:g} s")
        code, stderr = _run_group(command, env, cwd, remaining, timeout_s)
        if code != _RESTART:
            return SofficeResult(code, stderr, time.perf_counter() - started)
    return SofficeResult(code, stderr, time.perf_counter() - started)


def _run_group(
    command: list[str], env: dict[str, str], cwd: Path, remaining: float, timeout_s: float
) -> tuple[int, str]:
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_die_with_parent if _LIBC is not None else None,  # noqa: PLW1509 - no threads run in the child
    )
    pgid = proc.pid  # a new session: its leader's pid is the group id
    with _LIVE_LOCK:
        _LIVE.add(pgid)
    try:
        try:
            _, err = proc.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            raise ConversionTimeout(f"timed out after {timeout_s:g} s (LibreOffice was killed)") from None
        return proc.returncode, err.decode("utf-8", "replace")[-2000:]
    finally:
        # Always, even after a clean exit: a helper process LibreOffice left behind dies with the group.
        _kill_group(pgid)
        with contextlib.suppress(Exception):
            proc.kill()
        proc.wait()
        with _LIVE_LOCK:
            _LIVE.discard(pgid)
