"""docker-compose.yml and Dockerfile, checked structurally.

No Docker engine runs here, so nothing is built or started: these tests parse the files and hold
them to what the deployment needs (images that exist and are pinned, healthchecks, volumes for Qdrant
storage, page images and models, a GPU reservation, no literal secrets, ports on 127.0.0.1), and
cross-check them against the code they start (settings names, CLI options, the health route).
"""

from __future__ import annotations

import json
import re
import shlex
from importlib.metadata import version
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def defaults(value: str) -> str:
    """What Compose makes of ``${VAR:-default}`` / ``${VAR-default}`` with nothing set."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def instructions(df: list[tuple[str, str]], name: str) -> list[str]:
    return [args for instr, args in df if instr == name]


# ---------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------


def test_interpolation_syntax_is_valid():
    text = (ROOT / "docker-compose.yml").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    # Compose only knows $$, $VAR and ${...}: "$(" would be an "invalid interpolation format" error.
    for m in re.finditer(r"\$(?!\$|\{|[A-Za-z_])", body):
        pytest.fail(f"invalid interpolation at {body[m.start() : m.start() + 20]!r}")


def test_qdrant_image_is_pinned_and_matches_the_client(compose):
    image = compose["services"]["qdrant"]["image"]
    m = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.(\d+)", image)
    assert m, f"pin the official image to a release tag, not {image!r}"
    # qdrant-client warns unless the server is within one minor version (common/version_check.py).
    client_major, client_minor = (int(x) for x in version("qdrant-client").split(".")[:2])
    assert int(m.group(1)) == client_major and abs(int(m.group(2)) - client_minor) <= 1, (image, client_minor)


def test_both_services_have_healthchecks(compose):
    for name in ("qdrant", "api"):
        hc = compose["services"][name].get("healthcheck")
        assert hc and not hc.get("disable"), name
        test = hc["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), name
        assert hc.get("interval") and hc.get("retries"), name
    qdrant_test = " ".join(compose["services"]["qdrant"]["healthcheck"]["test"])
    assert "curl" not in qdrant_test and "wget" not in qdrant_test, "the qdrant image has neither"
    assert "/dev/tcp/127.0.0.1/6333" in qdrant_test
    api_test = " ".join(compose["services"]["api"]["healthcheck"]["test"])
    assert "/healthz" in api_test and "curl" not in api_test


def test_storage_is_on_named_volumes(compose):
    volumes = compose.get("volumes") or {}

    def mounts(service: str) -> dict[str, str]:
        out = {}
        for v in compose["services"][service].get("volumes", []):
            src, _, rest = v.partition(":")
            out[rest.split(":")[0]] = src
        return out

    q = mounts("qdrant")
    assert q.get("/qdrant/storage") in volumes
    api = mounts("api")
    assert api.get("/data") in volumes, "page images and state need a volume"
    assert api.get("/models") in volumes, "downloaded models need a volume"


def gpu_reserved(service: dict) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in d.get("capabilities", []) for d in devices
    )


def test_api_reserves_a_gpu_and_waits_for_qdrant(compose):
    api = compose["services"]["api"]
    assert gpu_reserved(api)
    assert api["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert api["build"] in (".", {"context": "."})
    env = api["environment"]
    assert env["COLSMOL_QDRANT_URL"] == "http://qdrant:6333"
    assert env["COLSMOL_DATA_DIR"] == "/data" and env["HF_HOME"] == "/models"


def test_no_literal_secrets(compose):
    api_key = compose["services"]["api"]["environment"]["COLSMOL_API_KEY"]
    assert re.fullmatch(r"\$\{COLSMOL_API_KEY:\?[^}]+\}", api_key), api_key
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        for key, value in env.items():
            if any(w in key for w in SECRET_WORDS) and value not in (None, ""):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}", str(value)), (
                    f"{name}.{key} must come from the environment, not the file"
                )
                assert defaults(str(value)) in ("", str(value)), f"{name}.{key} has a default secret"


def test_ports_bind_to_localhost_by_default(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            resolved = defaults(str(port))
            assert resolved.startswith("127.0.0.1:"), f"{name}: {port} publishes on every interface"


def test_colsmol_env_names_are_real_settings(compose):
    from indexer.settings import Settings

    fields = {f"COLSMOL_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("COLSMOL_"):
                assert key in fields, f"{name}.{key} is not a colsmol setting"


def test_ingest_is_an_optional_one_shot(compose):
    ingest = compose["services"]["ingest"]
    assert ingest["profiles"] == ["ingest"]
    assert ingest["command"] == ["colsmol", "ingest", "/input"]
    assert any(defaults(v).split(":")[1:] == ["/input", "ro"] for v in ingest["volumes"])
    assert ingest["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert ingest["environment"]["COLSMOL_QDRANT_URL"] == "http://qdrant:6333"
    assert gpu_reserved(ingest)
    assert ingest.get("restart") == "no"


def test_prometheus_is_an_optional_profile_scraping_the_metrics_port(compose):
    """Off by default (a profile); pinned; its config names the api's metrics port, which is set on the api
    and never published on the host."""
    prom = compose["services"]["prometheus"]
    assert prom["profiles"] == ["metrics"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prom["image"]), prom["image"]
    assert prom["healthcheck"]["test"][0] == "CMD" and "/-/ready" in " ".join(prom["healthcheck"]["test"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    assert mounts["/prometheus"] in (compose.get("volumes") or {}), "its data needs a named volume"
    config_file = ROOT / mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_file.read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    port = defaults(compose["services"]["api"]["environment"]["COLSMOL_METRICS_PORT"])
    assert targets == [f"api:{port}"]
    assert all(f":{port}" not in defaults(p) for p in compose["services"]["api"].get("ports", []))
    assert "prometheus" not in [n for n, svc in compose["services"].items() if not svc.get("profiles")]


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------


def test_base_image_is_a_pinned_build_arg(dockerfile):
    args = dict(a.split("=", 1) for a in instructions(dockerfile, "ARG") if a.startswith("BASE_IMAGE="))
    base = args["BASE_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-[a-z-]+-ubuntu\d+\.\d+", base), base
    assert instructions(dockerfile, "FROM") == ["${BASE_IMAGE}"]
    text = (ROOT / "Dockerfile").read_text()
    assert "BASE_IMAGE=python:3.11-slim" in text, "document the CPU variant"


def test_runs_as_a_non_root_user(dockerfile):
    users = instructions(dockerfile, "USER")
    assert users, "no USER"
    assert users[-1] not in ("root", "0", "0:0")
    runs = " ".join(instructions(dockerfile, "RUN"))
    assert "useradd" in runs and users[-1] in runs


def test_healthcheck_hits_healthz_without_curl(dockerfile):
    (hc,) = instructions(dockerfile, "HEALTHCHECK")
    assert "CMD" in hc and "/healthz" in hc and "curl" not in hc
    assert "127.0.0.1:8000" in hc
    assert '"/healthz"' in (ROOT / "api/http/routes/health.py").read_text(), "the route the healthcheck calls"


def test_volumes_env_port_and_command(dockerfile):
    volumes = [v for args in instructions(dockerfile, "VOLUME") for v in json.loads(args)]
    assert "/data" in volumes and "/models" in volumes
    env = " ".join(instructions(dockerfile, "ENV"))
    assert "COLSMOL_DATA_DIR=/data" in env and "HF_HOME=/models" in env
    assert instructions(dockerfile, "EXPOSE") == ["8000"]
    (cmd,) = instructions(dockerfile, "CMD")
    assert json.loads(cmd) == ["colsmol", "serve", "--host", "0.0.0.0", "--port", "8000"]
    cli = (ROOT / "api/cli/app.py").read_text()
    assert '"--host"' in cli and '"--port"' in cli


def test_installs_the_project_with_its_constraints(dockerfile):
    runs = instructions(dockerfile, "RUN")
    assert any("pip install -c constraints.txt ." in r for r in runs)
    copied = {src for args in instructions(dockerfile, "COPY") for src in shlex.split(args)[:-1]}
    packages = {"indexer", "retriever", "rag", "api"}
    assert packages <= copied, f"copy every package pyproject installs: {packages - copied}"
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repo"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not copied & ignored, "a COPY source is excluded by .dockerignore"
    assert {".git", ".venv", "colsmol_data", ".env"} <= ignored


def _final_stage(df: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (instr, _) in enumerate(df) if instr == "FROM"]
    return df[starts[-1] :]


COMPILER_PACKAGES = ("gcc", "g++", "build-essential", "python3-dev", "libc6-dev")


def test_the_gpu_image_keeps_a_c_compiler(dockerfile):
    """Triton builds its kernel launcher and torch.compile its code with a C compiler at run time: the final stage
    installs one, never purges it, and checks that the image's Python finds it (and Python's headers)."""
    runs = instructions(_final_stage(dockerfile), "RUN")
    installs = [r for r in runs if "apt-get install" in r]
    assert any(re.search(r"\bgcc\b", r) for r in installs), "install gcc in the final stage"
    for r in runs:
        for m in re.finditer(r"apt-get\s+(?:-y\s+)?(?:purge|remove|autoremove)[^;&|]*", r):
            removed = set(m.group(0).split())
            assert not removed & set(COMPILER_PACKAGES), f"the compiler is removed: {m.group(0)}"
            assert "--auto-remove" not in removed and "autoremove" not in removed, m.group(0)
    checks = [i for i, r in enumerate(runs) if "shutil.which('gcc')" in r and "Python.h" in r]
    assert checks, "a RUN line that fails the build when Python cannot find gcc and its headers"
    assert checks[-1] > max(i for i, r in enumerate(runs) if "apt-get" in r), "the check runs after every apt-get"


def test_the_compiler_check_line_fails_without_a_compiler(dockerfile, tmp_path):
    """The Dockerfile's check, run with this Python: it passes where gcc is on PATH and fails where it is not."""
    import os
    import shutil
    import subprocess
    import sys

    (check,) = [r for r in instructions(dockerfile, "RUN") if "shutil.which('gcc')" in r]
    argv = shlex.split(check)
    assert argv[:2] == ["python", "-c"], check
    if shutil.which("gcc") is None:
        pytest.skip("no gcc here to show the check passing")
    ok = subprocess.run([sys.executable, "-c", argv[2]], env={**os.environ}, check=False)
    headers = Path(__import__("sysconfig").get_paths()["include"], "Python.h").exists()
    assert ok.returncode == (0 if headers else 1)
    empty = tmp_path / "bin"
    empty.mkdir()
    missing = subprocess.run([sys.executable, "-c", argv[2]], env={**os.environ, "PATH": str(empty)}, check=False)
    assert missing.returncode == 1
