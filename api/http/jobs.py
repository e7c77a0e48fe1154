"""Background ingest: one worker thread takes upload jobs off a queue and feeds them to the pipeline.

A job is one upload (one or more files). Its progress (``pages_done`` / ``pages_total``) comes from the
ingest progress callback; its per-file failures are collected in ``errors``. Uploaded files are removed
once ingested: the page images the pipeline stores are all that answering and display need.

Job records outlive the process: every state change (and progress, at most once a second) is written to
``<data_dir>/jobs.sqlite`` (one row per job, each write atomic). A server that dies (``kill -9``, power loss)
leaves its queued and running jobs behind; the next start marks them ``interrupted`` and removes their
uploaded files, so ``GET /v1/jobs/{id}`` still answers and says what to do. Records and upload folders name
the process that owns them (:class:`api.cli.liveness.ProcessClaim`), so several workers sharing a data dir never
take each other's live work for leftovers. Never stored: the upload's password and metadata.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.cli.liveness import ProcessClaim
from api.http.uploads import SavedFile
from indexer.errors import NotFound, for_interface
from indexer.hashing import sha256_file
from indexer.ingest import IngestReport, ProgressEvent
from indexer.render.inputs import file_page_count
from indexer.render.office import needs_conversion
from indexer.store.base import UPLOAD_PREFIX

log = logging.getLogger(__name__)

MAX_KEPT_JOBS = 1000
PROGRESS_SAVE_S = 1.0  # progress is written at most this often; state changes always
OWNER_FILE = ".owner"  # in each upload folder: the process receiving or ingesting it
UNOWNED_GRACE_S = 3600  # an upload folder without an owner file is left alone this long
INTERRUPTED = (
    "the server stopped before this job finished, and its uploaded files are gone; upload them again "
    "(pages already stored are kept and not embedded again)"
)
STATES = ("queued", "running", "done", "failed", "interrupted")


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Job:
    """One ingest: an upload's saved ``files`` (in ``dir``, removed afterwards), or ``paths`` on this machine
    (``colsmol ingest`` going through the server that owns the data dir; its report is the CLI's own)."""

    id: str
    dir: Path | None
    files: list[SavedFile]
    metadata: dict[str, Any] = field(repr=False)
    password: str | None = field(default=None, repr=False)
    paths: list[Path] | None = None
    prune: bool = False
    files_done: int = 0
    state: str = "queued"  # queued -> running -> done | failed; queued | running -> interrupted (restart)
    pages_done: int = 0
    pages_total: int = 0
    #: Pages whose text is stored (searchable by text before they are embedded).
    pages_text: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    report: dict[str, Any] | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))

    @property
    def stage(self) -> str:
        """``text`` while pages' text is being read, ``visual`` while they are embedded, ``done`` at the end."""
        if self.state not in ("queued", "running"):
            return "done"
        return "text" if self.pages_text < self.pages_total or self.pages_total == 0 else "visual"

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "files_total": len(self.files),
            "files_done": self.files_done,
            "pages_done": self.pages_done,
            "pages_total": self.pages_total,
            "pages_text": self.pages_text,
            "stage": self.stage,
            "errors": list(self.errors),
            "report": self.report,
        }


class JobLog:
    """Job records in one SQLite table (shared by every worker process serving the same data dir)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, files_total INTEGER NOT NULL,"
            " pages_done INTEGER NOT NULL, pages_total INTEGER NOT NULL, errors TEXT NOT NULL, report TEXT,"
            " owner TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "pages_text" not in columns:  # a job log written before the text stage existed
            self._db.execute("ALTER TABLE jobs ADD COLUMN pages_text INTEGER NOT NULL DEFAULT 0")
            self._db.execute("ALTER TABLE jobs ADD COLUMN stage TEXT NOT NULL DEFAULT 'done'")

    def save(self, job: Job, owner: str) -> None:
        snap = job.snapshot()
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO jobs (id, state, files_total, pages_done, pages_total, errors, report, owner,"
                " created_at, updated_at, pages_text, stage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    snap["state"],
                    snap["files_total"],
                    snap["pages_done"],
                    snap["pages_total"],
                    json.dumps(snap["errors"]),
                    None if snap["report"] is None else json.dumps(snap["report"]),
                    owner,
                    job.created_at,
                    now,
                    snap["pages_text"],
                    snap["stage"],
                ),
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, state, files_total, pages_done, pages_total, errors, report, pages_text, stage FROM jobs"
                " WHERE id = ?",
                (job_id,),
            ).fetchone()
        if row is None:
            return None
        return {
            "id": row[0],
            "state": row[1],
            "files_total": row[2],
            "pages_done": row[3],
            "pages_total": row[4],
            "errors": json.loads(row[5]),
            "report": None if row[6] is None else json.loads(row[6]),
            "pages_text": row[7],
            "stage": row[8],
        }

    def interrupt_orphans(self, claim: ProcessClaim) -> list[str]:
        """Mark queued and running jobs whose owner process is gone ``interrupted``; their ids."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, owner, errors FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchall()
            gone = [(job_id, errors) for job_id, owner, errors in rows if not claim.alive(owner)]
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            for job_id, errors in gone:
                listed = json.loads(errors) + [{"file": "*", "error": INTERRUPTED}]
                self._db.execute(
                    "UPDATE jobs SET state = 'interrupted', errors = ?, updated_at = ? WHERE id = ?",
                    (json.dumps(listed), now, job_id),
                )
        return [job_id for job_id, _ in gone]

    def prune(self, keep: int = MAX_KEPT_JOBS) -> None:
        """Forget the oldest finished jobs beyond the newest ``keep``."""
        with self._lock:
            self._db.execute(
                "DELETE FROM jobs WHERE state IN ('done', 'failed', 'interrupted') AND id NOT IN "
                "(SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?)",
                (keep,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def clean_upload_dirs(uploads: Path, claim: ProcessClaim) -> list[str]:
    """Remove upload folders left by processes that died (their jobs are interrupted); their names."""
    removed: list[str] = []
    if not uploads.is_dir():
        return removed
    for folder in uploads.iterdir():
        if not folder.is_dir():
            continue
        try:
            owner = (folder / OWNER_FILE).read_text().strip()
        except OSError:
            owner = ""
        if owner:
            stale = not claim.alive(owner)
        else:  # from an older version, or created a moment ago and not claimed yet
            try:
                stale = time.time() - folder.stat().st_mtime > UNOWNED_GRACE_S
            except OSError:
                stale = False
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


class JobRunner:
    """Owns the live jobs, their records (:class:`JobLog`) and the single ingest worker thread."""

    def __init__(
        self, pipeline: Any, data_dir: Path, on_report: Callable[[IngestReport], None] | None = None
    ) -> None:
        self.pipeline = pipeline
        #: Told of every ingest run's report (the metrics count pages and stage seconds from it).
        self.on_report = on_report
        self.claim_ = ProcessClaim(data_dir / "jobs.owners")
        self.uploads_dir = data_dir / "uploads"
        self.log = JobLog(data_dir / "jobs.sqlite")
        interrupted = self.log.interrupt_orphans(self.claim_)
        removed = clean_upload_dirs(self.uploads_dir, self.claim_)
        if interrupted or removed:
            log.warning(
                "%d job(s) were interrupted by the last shutdown; removed %d leftover upload folder(s)",
                len(interrupted),
                len(removed),
            )
        self._jobs: dict[str, Job] = {}  # this process's unfinished jobs
        self._lock = threading.Lock()
        self._saved_at: dict[str, float] = {}
        self._closing = False
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="colsmol-ingest", daemon=True)
        self._thread.start()

    def upload_dir(self, job_id: str) -> Path:
        return self.uploads_dir / job_id

    def claim(self, target: Path) -> None:
        """Mark a new upload folder as this process's (called right after creating it)."""
        (target / OWNER_FILE).write_text(self.claim_.id)

    def submit(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
            self._save(job)
        self.log.prune()
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                return job.snapshot()
        record = self.log.get(job_id)
        if record is None:
            raise NotFound(f"no job with id {job_id[:64]!r}; POST /v1/documents returns job ids")
        return record

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs: the running one gets ``timeout`` seconds, those still queued are interrupted."""
        self._closing = True
        self._queue.put(None)
        self._thread.join(timeout=timeout)
        with self._lock:
            for job in self._jobs.values():  # never started, or still running past the timeout
                job.state = "interrupted"
                job.errors.append({"file": "*", "error": INTERRUPTED})
                job.password = None
                self._save(job)
                if job.dir is not None:
                    shutil.rmtree(job.dir, ignore_errors=True)
            self._jobs.clear()
        self.log.close()
        self.claim_.release()

    def _save(self, job: Job, progress_only: bool = False) -> None:
        """Write the record (caller holds ``_lock``); progress-only updates at most every PROGRESS_SAVE_S."""
        now = time.monotonic()
        if progress_only and now - self._saved_at.get(job.id, 0.0) < PROGRESS_SAVE_S:
            return
        self._saved_at[job.id] = now
        try:
            self.log.save(job, self.claim_.id)
        except sqlite3.Error:  # a full disk must not stop ingesting: the live record is in memory
            log.exception("could not record job %s", job.id)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._closing:
                continue  # close() records it as interrupted
            try:
                self._ingest(job)
            except Exception as exc:  # keep the worker alive whatever one job does
                log.exception("ingest job %s failed", job.id)
                with self._lock:
                    job.state = "failed"
                    job.errors.append({"file": "*", "error": f"{type(exc).__name__}: {exc}"})
            finally:
                if job.dir is not None:
                    shutil.rmtree(job.dir, ignore_errors=True)
                with self._lock:
                    job.password = None
                    self._save(job)
                    self._jobs.pop(job.id, None)
                    self._saved_at.pop(job.id, None)

    def _count_pages(self, path: Path, password: str | None) -> int:
        """A file's pages without rendering them; 0 for one that cannot be opened (its ingest reports why). An
        Office or web file is counted from its converted PDF (converted now, or already started by
        :meth:`_convert_ahead`; the ingest then finds it in the converter's cache)."""
        try:
            converter = getattr(self.pipeline, "converter", None)
            if converter is not None and needs_conversion(path):
                path = converter.result(path, sha256_file(path))
            return file_page_count(path, password=password)
        except Exception:  # noqa: BLE001 - the ingest of this file fails with its reason; the count is a forecast
            return 0

    def _convert_ahead(self, paths: list[Path]) -> None:
        """Start converting an upload's Office and web files together (the converter's workers at a time)."""
        converter = getattr(self.pipeline, "converter", None)
        for path in paths:
            try:
                if converter is not None and needs_conversion(path):
                    converter.submit(path, sha256_file(path))
            except Exception as exc:  # noqa: BLE001 - the ingest of this file reports its problem
                log.debug("not converting %s ahead: %s", path, exc)

    def _ingest(self, job: Job) -> None:
        with self._lock:
            job.state = "running"
            self._save(job)
        if job.paths is not None:
            self._ingest_paths(job, job.paths)
            return
        totals: dict[str, Any] = {"indexed": 0, "unchanged": 0, "failed": 0, "skipped": 0, "pages_embedded": 0}
        seconds = 0.0
        files: list[dict[str, Any]] = []
        # Every file's pages are counted before the first is embedded, so the job's total is known before its
        # progress moves (no 36/36 then 36/39 as the second file starts).
        self._convert_ahead([saved.path for saved in job.files])
        expected = [self._count_pages(saved.path, job.password) for saved in job.files]
        with self._lock:
            job.pages_total = sum(expected)
            self._save(job, progress_only=True)
        for saved, guess in zip(job.files, expected, strict=True):
            counted = {"done": 0, "total": guess, "text": 0}  # this file's pages in the job's progress so far

            def progress(ev: ProgressEvent, name: str = saved.original_name, counted: dict[str, int] = counted) -> None:
                with self._lock:
                    if ev.kind == "file":
                        job.pages_total += ev.total - counted["total"]
                        counted["total"] = ev.total
                    elif ev.kind == "text":
                        job.pages_text += ev.n
                        counted["text"] += ev.n
                    elif ev.kind == "pages":
                        job.pages_done += ev.n
                        counted["done"] += ev.n
                    elif ev.kind == "done" and ev.result is not None:
                        result = ev.result
                        if result.status == "failed":
                            job.errors.append({"file": name, "error": for_interface(result.error or "failed", "http")})
                            job.pages_total -= counted["total"] - counted["done"]  # pages that will never come
                            job.pages_text -= counted["text"] - counted["done"]
                        elif result.status in ("indexed", "unchanged"):
                            # Pages a crashed earlier run stored (resumed) or an unchanged file's pages are
                            # never reported as "pages" events: count them now, so done == total.
                            job.pages_total += max(0, result.pages - counted["total"])
                            job.pages_done += max(0, result.pages - counted["done"])
                            job.pages_text += max(0, result.pages - counted["text"])
                        self._save(job)
                        return
                    self._save(job, progress_only=True)

            report = self.pipeline.ingest(
                [saved.path],
                metadata=job.metadata,
                password=job.password,
                progress=progress,
                source_names={saved.path: UPLOAD_PREFIX + saved.original_name},
            )
            if self.on_report is not None:
                self.on_report(report)
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
                        "error": for_interface(f.error, "http") if f.error else None,
                    }
                )
        with self._lock:
            job.report = {**totals, "seconds": round(seconds, 3), "files": files}
            # A job whose every file failed is "failed"; partial failures are listed in errors.
            job.state = "failed" if files and totals["failed"] == len(files) else "done"

    def _ingest_paths(self, job: Job, paths: list[Path]) -> None:
        """A ``colsmol ingest`` run by this server: the pipeline's own report, with the command line's hints."""

        def progress(ev: ProgressEvent) -> None:
            with self._lock:
                if ev.kind == "file":
                    job.pages_total += ev.total
                elif ev.kind == "text":
                    job.pages_text += ev.n
                elif ev.kind == "pages":
                    job.pages_done += ev.n
                elif ev.kind == "done" and ev.result is not None:
                    job.files_done += ev.result.status != "failed"
                    if ev.result.status == "failed":
                        job.errors.append({"file": ev.path, "error": for_interface(ev.result.error, "cli")})
                    self._save(job)
                    return
                self._save(job, progress_only=True)

        report = self.pipeline.ingest(
            paths, metadata=job.metadata, prune=job.prune, password=job.password, progress=progress
        )
        if self.on_report is not None:
            self.on_report(report)
        result = report.to_dict()
        for f in result["files"]:
            f["error"] = for_interface(f["error"], "cli") if f["error"] else None
        with self._lock:
            job.report = result
            job.state = "failed" if report.files and report.count("failed") == len(report.files) else "done"
