"""``colsmol search`` as a user runs it: a new process each time, alone and through a running ``colsmol serve``.

Fills a data directory with ``--pages`` synthetic pages (unit vectors, ~1,000 tokens, real payloads; written
through the live index, as ingest does, so the index cache is current), then times the whole command, wall
clock from ``exec`` to exit, ``--reps`` times each way:

- **alone**: ``colsmol search`` opens the store, loads the encoder and the index itself;
- **through the server**: ``colsmol serve`` owns the data dir (models and index loaded once), and the command
  finds its advertisement and asks it over HTTP;
- the command's own start-up (``colsmol --help``) and the import of ``api.cli.app``, for scale.

Use the full-size random encoder for the real query-encoding cost::

    python bench/make_checkpoints.py /tmp/ckpt
    python bench/cli_search.py --model /tmp/ckpt --pages 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM = 128


def fill(data: Path, pages: int) -> None:
    import numpy as np

    from indexer.settings import Settings
    from indexer.store import open_store
    from indexer.store.base import page_point_id
    from indexer.types import PageRecord
    from retriever.live_index import LiveIndex

    settings = Settings(data_dir=data)
    rng = np.random.default_rng(0)
    with open_store(settings) as store:
        live = LiveIndex(store, device="cpu", cache_dir=data / "index-cache" / settings.collection)
        for lo in range(0, pages, 8):
            recs = []
            for i in range(lo, min(pages, lo + 8)):
                n = int(rng.integers(870, 1146))
                v = rng.standard_normal((n, DIM)).astype(np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                doc = f"doc{i // 10:05d}"
                payload = {"doc_id": doc, "source": f"/corpus/{doc}.pdf", "file_name": f"{doc}.pdf",
                           "page_number": i % 10 + 1, "page_count": 10, "content_hash": doc,
                           "ingested_at": "2026-11-23T00:00:00+00:00", "metadata": {}}
                recs.append(PageRecord(page_point_id(doc, i % 10 + 1), v, payload))
            live.apply(lambda r=recs: store.upsert_pages(r), upserted=recs)
        live.load()
        live.close()


def timed(cmd: list[str], env: dict[str, str], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        out.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="folder with encoder/ and generator/ checkpoints")
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="colsmol-cli-bench-"))
    data = tmp / "data"
    env = dict(os.environ, COLSMOL_DATA_DIR=str(data), COLSMOL_ENCODER_MODEL=str(args.model / "encoder"),
               COLSMOL_GENERATOR_MODEL=str(args.model / "generator"), COLSMOL_DEVICE="cpu", HF_HUB_OFFLINE="1")
    env.pop("COLSMOL_API_KEY", None)
    cli = [sys.executable, "-m", "api.cli"]
    search = [*cli, "search", "quarterly revenue by region", "-k", "5", "--json"]
    server = None
    try:
        fill(data, args.pages)
        results: dict[str, list[float]] = {}
        results["python -c 'import api.cli.app'"] = timed([sys.executable, "-c", "import api.cli.app"], env, args.reps)
        results["colsmol --help"] = timed([*cli, "--help"], env, args.reps)
        results["colsmol search (alone)"] = timed(search, env, args.reps)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        import httpx

        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("colsmol serve did not start")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        timed(search, env, 1)  # the server's first query (batcher, caches) is not the user's steady state
        results["colsmol search (through colsmol serve)"] = timed(search, env, args.reps)
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    when = datetime.now(UTC).isoformat(timespec="seconds")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"# colsmol search wall time, {args.pages} pages, encoder {args.model / 'encoder'} ({machine}, {when})\n")
    print("| command | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, xs in results.items():
        print(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} |")
    report = {"pages": args.pages, "machine": machine, "date": when, "seconds": results}
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
