"""Where a CLI command runs: in this process (:class:`LocalBackend`), or in a running ``colsmol serve``
(:class:`RemoteBackend`) that owns the data directory. Both return the same plain data, so every command
prints the same table or JSON either way.

:func:`open_backend` picks: a live server advertised for this data dir and collection (:mod:`api.cli.advert`)
wins, since embedded Qdrant Edge would refuse a second process and the server has its models loaded.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from indexer.errors import ColsmolError, InvalidRequest, for_interface

if TYPE_CHECKING:
    from api.cli.advert import Advert
    from indexer.filters import Filter
    from indexer.ingest import ProgressEvent
    from indexer.settings import Settings
    from rag.pipeline import RAGPipeline
    from retriever.search import Hit

#: Ingest progress as the CLI draws it: ``(kind, path, n, total, error)`` with kind "file", "pages" or "done".
OnProgress = Callable[[str, str, int, int, str | None], None]


class Backend(Protocol):
    remote: bool

    def search(self, query: str, k: int, flt: Filter, mode: str | None = None) -> list[dict[str, Any]]: ...

    def answer(
        self, question: str, k: int, flt: Filter, max_new_tokens: int, mode: str | None = None
    ) -> dict[str, Any]: ...

    def stream_answer(
        self, question: str, k: int, flt: Filter, max_new_tokens: int, mode: str | None = None
    ) -> Iterator[str | dict[str, Any]]: ...

    def documents(self) -> list[dict[str, Any]]: ...

    def delete(self, doc_id: str) -> int: ...

    def explain(self, query: str, point_id: str, token: int | None) -> tuple[bytes, list[str]]: ...

    def ingest(
        self, paths: Sequence[Path], options: Mapping[str, Any], progress: OnProgress | None
    ) -> dict[str, Any]: ...

    def export(self, path: Path) -> dict[str, Any]: ...

    def close(self) -> None: ...


def build_progress() -> Callable[[int, int], None]:
    """How a first search shows the search index being built from the store (no cache yet): a bar on a
    terminal, a line every tenth otherwise. Silent when there is nothing to build."""
    import sys

    from rich.progress import Progress, TaskID

    bars: list[tuple[Progress, TaskID]] = []
    shown = [-1]

    def show(done: int, total: int) -> None:
        if total <= 0:
            return
        if sys.stderr.isatty():
            from api.cli.common import progress_bar

            if not bars:
                bar = progress_bar()
                bar.start()
                bars.append((bar, bar.add_task("building the search index (once)", total=total)))
            bar, task = bars[0]
            bar.update(task, completed=done)
            if done >= total:
                bar.stop()
            return
        tenth = 10 * done // total
        if tenth > shown[0]:
            shown[0] = tenth
            sys.stderr.write(f"colsmol: building the search index (once): {done}/{total} pages\n")

    return show


def hit_dict(h: Hit) -> dict[str, Any]:
    return {
        "point_id": h.point_id,
        "doc_id": h.doc_id,
        "source": h.source,
        "file_name": h.file_name,
        "page_number": h.page_number,
        "score": round(float(h.score), 6),
        "regions": [r.to_dict() for r in h.regions],
        "found_by": list(h.found_by),
    }


def _remote_hit(h: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "point_id": h["point_id"],
        "doc_id": h.get("doc_id"),
        "source": h.get("source"),
        "file_name": h.get("file_name"),
        "page_number": h.get("page_number"),
        "score": round(float(h["score"]), 6),
        "regions": [_remote_region(r) for r in h.get("regions") or []],
        "found_by": list(h.get("found_by") or []),
    }


def _remote_region(r: Mapping[str, Any]) -> dict[str, float]:
    """A server's region as :meth:`retriever.regions.Region.to_dict` writes it (the server already rounded)."""
    return {k: round(float(r[k]), 6 if k == "score" else 4) for k in ("x0", "y0", "x1", "y1", "score")}


class LocalBackend:
    """Runs the command in this process: the pipeline (models loaded on first use) or just the store."""

    remote = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._rag: RAGPipeline | None = None

    @property
    def rag(self) -> RAGPipeline:
        if self._rag is None:
            from rag.pipeline import RAGPipeline

            self._rag = RAGPipeline.from_settings(self.settings)
            if self._rag.live_index is not None:
                self._rag.live_index.progress = build_progress()
        return self._rag

    def close(self) -> None:
        if self._rag is not None:
            self._rag.close()
            self._rag = None

    def search(self, query: str, k: int, flt: Filter, mode: str | None = None) -> list[dict[str, Any]]:
        return [hit_dict(h) for h in self.rag.search(query, k=k, filter=flt, mode=mode)]

    def answer(
        self, question: str, k: int, flt: Filter, max_new_tokens: int, mode: str | None = None
    ) -> dict[str, Any]:
        result = self.rag.answer(question, k=k, filter=flt, max_new_tokens=max_new_tokens, mode=mode)
        return {
            "text": for_interface(result.text, "cli"),
            "sources": [hit_dict(h) for h in result.sources],
            "timings": result.timings,
            "warnings": result.warnings,
        }

    def stream_answer(
        self, question: str, k: int, flt: Filter, max_new_tokens: int, mode: str | None = None
    ) -> Iterator[str | dict[str, Any]]:
        from rag.types import Answer

        for piece in self.rag.stream_answer(question, k=k, filter=flt, max_new_tokens=max_new_tokens, mode=mode):
            if isinstance(piece, Answer):
                yield {
                    "text": for_interface(piece.text, "cli"),
                    "sources": [hit_dict(h) for h in piece.sources],
                    "timings": piece.timings,
                    "warnings": piece.warnings,
                }
            else:
                yield for_interface(piece, "cli")

    def documents(self) -> list[dict[str, Any]]:
        from indexer.store import open_store

        with open_store(self.settings) as store:
            docs = store.list_documents(include_incomplete=True)
        return [
            {
                "doc_id": d.doc_id,
                "source": d.source,
                "sources": list(d.paths),
                "file_name": d.file_name,
                "pages": d.page_count,
                "ingested_at": d.ingested_at,
                "metadata": d.metadata,
                "state": d.state,
                "pages_stored": d.pages_stored,
                "pages_visual": d.pages_visual if d.pages_visual is not None else d.pages_stored,
            }
            for d in docs
        ]

    def delete(self, doc_id: str) -> int:
        return self.rag.delete(doc_id)

    def explain(self, query: str, point_id: str, token: int | None) -> tuple[bytes, list[str]]:
        smap = self.rag.explain(query, point_id, token=token)
        buf = io.BytesIO()
        smap.overlay().save(buf, format="PNG")
        return buf.getvalue(), list(smap.query_tokens)

    def ingest(self, paths: Sequence[Path], options: Mapping[str, Any], progress: OnProgress | None) -> dict[str, Any]:
        def on_event(e: ProgressEvent) -> None:
            if progress is not None:
                error = e.result.error if e.result is not None and e.result.status == "failed" else None
                progress(e.kind, e.path, e.n, e.total, for_interface(error, "cli") if error is not None else None)

        opts = dict(options)
        report = self.rag.ingest(
            list(paths),
            metadata=opts.pop("metadata", None),
            prune=bool(opts.pop("prune", False)),
            password=opts.pop("password", None),
            progress=on_event if progress is not None else None,
        )
        result = report.to_dict()
        for f in result["files"]:
            f["error"] = for_interface(f["error"], "cli") if f["error"] else None
        return result

    def export(self, path: Path) -> dict[str, Any]:
        from dataclasses import asdict

        from indexer.backup import export_collection
        from indexer.images import PageImageStore
        from indexer.store import open_store

        s = self.settings
        with open_store(s) as store:
            summary = export_collection(store, PageImageStore(s.images_dir / s.collection), path)
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(summary).items()}


class RemoteBackend:
    """Runs the command in the ``colsmol serve`` that owns the data directory, over its HTTP API."""

    remote = True

    def __init__(self, advert: Advert, settings: Settings) -> None:
        from api.cli.client import ColsmolClient

        if advert.auth and not settings.api_key:
            raise InvalidRequest(
                f"the colsmol server running at {advert.url} (process {advert.pid}) needs an API key: "
                "set COLSMOL_API_KEY to its key"
            )
        self.advert = advert
        other = settings.collection if settings.collection != advert.collection else None
        self.client = ColsmolClient(advert.url, api_key=settings.api_key, local_token=advert.token, collection=other)

    def close(self) -> None:
        self.client.close()

    def search(self, query: str, k: int, flt: Filter, mode: str | None = None) -> list[dict[str, Any]]:
        return [_remote_hit(h) for h in self.client.search(query, k, flt.to_dict(), mode)]

    def answer(
        self, question: str, k: int, flt: Filter, max_new_tokens: int, mode: str | None = None
    ) -> dict[str, Any]:
        result = self.client.answer(question, k, flt.to_dict(), max_new_tokens, mode)
        return {**result, "sources": [_remote_hit(h) for h in result["sources"]]}

    def stream_answer(
        self, question: str, k: int, flt: Filter, max_new_tokens: int, mode: str | None = None
    ) -> Iterator[str | dict[str, Any]]:
        for piece in self.client.stream_answer(question, k, flt.to_dict(), max_new_tokens, mode):
            if isinstance(piece, dict):
                yield {**piece, "sources": [_remote_hit(h) for h in piece["sources"]]}
            else:
                yield piece

    def documents(self) -> list[dict[str, Any]]:
        docs = [
            {
                "doc_id": d["doc_id"],
                "source": d["source"],
                "sources": d.get("sources") or [d["source"]],
                "file_name": d["file_name"],
                "pages": d["page_count"],
                "ingested_at": d["ingested_at"],
                "metadata": d.get("metadata") or {},
                "state": d.get("state") or ("complete" if d.get("complete", True) else "visual"),
                "pages_stored": d.get("pages_stored", d["page_count"]),
                "pages_visual": d.get("pages_visual", d.get("pages_stored", d["page_count"])),
            }
            for d in self.client.documents()
        ]
        return sorted(docs, key=lambda d: (d["source"], d["doc_id"]))  # the store's order

    def delete(self, doc_id: str) -> int:
        return self.client.delete(doc_id)

    def explain(self, query: str, point_id: str, token: int | None) -> tuple[bytes, list[str]]:
        import json

        response = self.client.explain(query, point_id, token)
        tokens = json.loads(response.headers.get("x-query-tokens", "[]"))
        return response.content, [str(t) for t in tokens]

    def ingest(self, paths: Sequence[Path], options: Mapping[str, Any], progress: OnProgress | None) -> dict[str, Any]:
        job_id = self.client.ingest_paths(paths, **options)
        seen_errors = 0
        pages_done = files_done = pages_total = 0
        while True:
            job = self.client.job(job_id)
            if progress is not None:
                if job["pages_total"] > pages_total:
                    progress("file", "", 0, job["pages_total"] - pages_total, None)
                    pages_total = job["pages_total"]
                if job["pages_done"] > pages_done:
                    progress("pages", "", job["pages_done"] - pages_done, 0, None)
                    pages_done = job["pages_done"]
                for error in job["errors"][seen_errors:]:
                    progress("done", error["file"], 0, 0, error["error"])
                    files_done += 1
                seen_errors = len(job["errors"])
                for _ in range(max(0, job.get("files_done", files_done) - files_done)):
                    progress("done", "", 0, 0, None)
                    files_done += 1
            if job["state"] in ("done", "failed", "interrupted"):
                report = job.get("report")
                if not isinstance(report, dict):
                    raise ColsmolError(f"the server's ingest job {job_id} ended {job['state']} without a report")
                return report
            time.sleep(0.25)

    def export(self, path: Path) -> dict[str, Any]:
        return self.client.export(path)


def open_backend(settings: Settings) -> Backend:
    """The server that owns this data directory if one runs, else this process."""
    from api.cli.advert import find, find_serving
    from rag.collections import read_spec

    created = read_spec(settings.data_dir, settings.collection) is not None
    # A created collection is served by whichever server owns the data dir; any other only by its own.
    advert = (find_serving if created else find)(settings.data_dir, settings.collection)
    return RemoteBackend(advert, settings) if advert is not None else LocalBackend(settings)
