"""Print a short hash of what decides the installed packages: pyproject's build requirements, dependencies and
extras, and constraints.txt. Edits elsewhere in pyproject.toml (package lists, tool settings) leave it unchanged,
so they do not rebuild a cached virtual environment. Standard library only: it runs before the venv exists."""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path


def digest(root: Path) -> str:
    project = tomllib.loads((root / "pyproject.toml").read_text())
    deps = {
        "build": project.get("build-system", {}).get("requires", []),
        "dependencies": project.get("project", {}).get("dependencies", []),
        "extras": project.get("project", {}).get("optional-dependencies", {}),
        "python": project.get("project", {}).get("requires-python", ""),
    }
    text = json.dumps(deps, sort_keys=True) + "\n" + (root / "constraints.txt").read_text()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


if __name__ == "__main__":
    sys.stdout.write(digest(Path(sys.argv[1] if len(sys.argv) > 1 else ".")) + "\n")
