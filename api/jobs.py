"""Background ingest: one worker thread takes upload jobs off a queue and feeds them to the pipeline.

A job is one upload (one or more files). Its progress (``pages_done`` / ``pages_total``) comes from the
ingest progress callback; its per-file failures are collected in ``errors``. Uploaded files are removed
once ingested: the page images the pipeline stores are all that answering and display need.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.uploads import SavedFile
from indexer.errors import NotFound
from indexer.ingest import ProgressEvent
from indexer.store.base import UPLOAD_PREFIX

log = logging.getLogger(__name__)

MAX_KEPT_JOBS = 1000


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Job:
    id: str
    dir: Path
    files: list[SavedFile]
    metadata: dict[str, Any]
    state: str = "queued"  # queued -> running -> done | failed
    pages_done: int = 0
    pages_total: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    report: dict[str, Any] | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "files_total": len(self.files),
            "pages_done": self.pages_done,
            "pages_total": self.pages_total,
            "errors": list(self.errors),
            "report": self.report,
        }


class JobRunner:
    """Owns the job table and the single ingest worker thread."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="colsmol-ingest", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > MAX_KEPT_JOBS:
                oldest = next(iter(self._jobs.values()))
                if oldest.state not in ("done", "failed"):
                    break
                self._jobs.popitem(last=False)
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job with id {job_id!r}; POST /v1/documents returns job ids")
            return job.snapshot()

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._ingest(job)
            except Exception as exc:  # keep the worker alive whatever one job does
                log.exception("ingest job %s failed", job.id)
                with self._lock:
                    job.state = "failed"
                    job.errors.append({"file": "*", "error": f"{type(exc).__name__}: {exc}"})
            finally:
                shutil.rmtree(job.dir, ignore_errors=True)

    def _ingest(self, job: Job) -> None:
        with self._lock:
            job.state = "running"
        totals: dict[str, Any] = {"indexed": 0, "unchanged": 0, "failed": 0, "skipped": 0, "pages_embedded": 0}
        seconds = 0.0
        files: list[dict[str, Any]] = []
        for saved in job.files:
            current = saved.original_name

            def progress(ev: ProgressEvent, name: str = current) -> None:
                with self._lock:
                    if ev.kind == "file":
                        job.pages_total += ev.total
                    elif ev.kind == "pages":
                        job.pages_done += ev.n
                    elif ev.kind == "done" and ev.result is not None and ev.result.status == "failed":
                        job.errors.append({"file": name, "error": ev.result.error or "failed"})

            report = self.pipeline.ingest(
                [saved.path],
                metadata=job.metadata,
                progress=progress,
                source_names={saved.path: UPLOAD_PREFIX + saved.original_name},
            )
            seconds += report.seconds
            for key in totals:
                totals[key] += report.pages_embedded if key == "pages_embedded" else report.count(key)
            for f in report.files:
                files.append(
                    {
                        "file": saved.original_name,
                        "status": f.status,
                        "doc_id": f.doc_id,
                        "pages": f.pages,
                        "error": f.error,
                    }
                )
        with self._lock:
            job.report = {**totals, "seconds": round(seconds, 3), "files": files}
            # A job whose every file failed is "failed"; partial failures are listed in errors.
            job.state = "failed" if files and totals["failed"] == len(files) else "done"
