"""Keep llama.cpp's Hugging Face -> GGUF converter in the venv: ``python scripts/fetch_gguf_converter.py DEST``.

The openai generator backend is tested against llama.cpp's OpenAI-compatible server (llama-cpp-python, built
from its sdist by the test extra) serving the tiny test SmolVLM, which the test converts to GGUF with llama.cpp's
own ``convert_hf_to_gguf.py``. That script (with its ``conversion`` package and ``gguf-py``) ships only in the
sdist, so setup.sh asks pip for the sdist of the installed version and keeps those three entries in DEST.
Standard library only; run by the venv's Python (its pip, its installed llama-cpp-python).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def say(line: str) -> None:
    sys.stderr.write(f"colsmol: {line}\n")


def main(dest: Path) -> int:
    try:
        version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        say("llama-cpp-python is not installed; not fetching its GGUF converter")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, f"llama_cpp_python=={version}", "-d", tmp], check=True)
        [sdist] = Path(tmp).glob("*.tar.gz")
        staging = Path(tmp) / "out"
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                _, _, inner = m.name.partition("/vendor/llama.cpp/")
                if inner and inner.startswith(KEEP) and (m.isfile() or m.isdir()):
                    m.name = inner
                    members.append(m)
            tar.extractall(staging, members=members, filter="data")
        if not (staging / "convert_hf_to_gguf.py").is_file():
            say(f"{sdist.name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
            return 1
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, dest)
    say(f"llama.cpp {version} GGUF converter in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
