"""Documents: upload (an ingest job), list, get, delete; and the job status an upload returns."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from starlette.concurrency import run_in_threadpool

from api.http import uploads
from api.http.deps import DocNamesDep, JobsDep, PipelineDep, SettingsDep, WriteAccess
from api.http.jobs import Job, new_job_id
from api.http.routes.common import page_urls, shown_name
from api.http.schemas import DeleteResponse, DocumentList, DocumentOut, JobCreated, JobOut
from api.http.security import SameOrigin
from indexer.errors import NotFound
from indexer.store.base import page_point_id

router = APIRouter(tags=["documents"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "metadata": {"type": "string", "description": uploads.METADATA_HELP},
                        "password": {
                            "type": "string",
                            "format": "password",
                            "description": "Password of the upload's encrypted PDFs (never stored or reported).",
                        },
                    },
                }
            }
        },
    }
}


def _document_out(info: Any, prefix: str = "/v1") -> DocumentOut:
    return DocumentOut(
        doc_id=info.doc_id,
        file_name=shown_name(info.file_name, info.metadata) or info.file_name,
        source=info.source,
        sources=list(info.paths),
        page_count=info.page_count,
        pages_stored=info.pages_stored,
        content_hash=info.content_hash,
        ingested_at=info.ingested_at,
        complete=info.complete,
        state=info.state,
        pages_visual=info.pages_visual if info.pages_visual is not None else info.pages_stored,
        metadata=info.metadata,
        thumb_url=page_urls(page_point_id(info.doc_id, 1), prefix)[1],
    )


@router.post(
    "/documents",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobCreated,
    openapi_extra=UPLOAD_BODY,
    responses={400: {}, 403: {"description": "A cross-origin browser request"}, 413: {}, 415: {}, 422: {}},
)
async def upload(
    request: Request, settings: SettingsDep, jobs: JobsDep, _: SameOrigin, __: WriteAccess
) -> JobCreated:
    """Upload PDFs or page images (multipart field ``files``) with optional JSON ``metadata`` and ``password``;
    poll the job."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > settings.max_upload_bytes * settings.max_upload_files + (1 << 20):
        raise HTTPException(413, f"the upload is {declared} bytes; the limit is {settings.max_upload_bytes} a file")
    job_id = new_job_id()
    target = jobs.upload_dir(job_id)
    try:
        upload = await uploads.receive(
            request.headers.get("content-type", ""),
            request.stream(),
            target,
            settings.max_upload_bytes,
            settings.max_upload_files,
            claim=jobs.claim,
        )
    except uploads.UploadError as exc:
        raise HTTPException(exc.status, exc.detail) from None
    jobs.submit(Job(job_id, target, upload.files, upload.metadata, password=upload.password))
    return JobCreated(job_id=job_id)


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: {}})
def get_job(job_id: str, jobs: JobsDep) -> JobOut:
    """An ingest job's state and progress; ``report`` is set once it is done."""
    return JobOut(**jobs.get(job_id))


@router.get("/documents", response_model=DocumentList)
async def list_documents(
    pipeline: PipelineDep,
    names: DocNamesDep,
    offset: int = Query(0, ge=0, le=10**9),
    limit: int = Query(50, ge=1, le=500),
    state: Literal["all", "complete", "incomplete"] = Query(
        "all",
        description="complete: every page stored; incomplete: an ingest still running or cut short (its pages are "
        "already searchable; uploading the file again finishes it).",
    ),
) -> DocumentList:
    """Documents with stored pages, newest first, a page at a time: the same documents search can return and
    ``GET /v1/documents/{id}`` describes, each with ``complete`` and ``pages_stored`` of ``page_count``."""
    docs = await run_in_threadpool(pipeline.documents, True)
    if state != "all":
        docs = [d for d in docs if d.complete == (state == "complete")]
    docs = sorted(docs, key=lambda d: (d.ingested_at, d.doc_id), reverse=True)
    items = [_document_out(d, names.prefix) for d in docs[offset : offset + limit]]
    return DocumentList(items=items, total=len(docs), offset=offset, limit=limit)


@router.get("/documents/{doc_id}", response_model=DocumentOut, responses={404: {}})
async def get_document(doc_id: str, pipeline: PipelineDep, names: DocNamesDep) -> DocumentOut:
    info = await run_in_threadpool(pipeline.store.get_document, doc_id)
    if info is None:
        raise NotFound(f"no document with id {doc_id[:64]!r}; GET /v1/documents lists them")
    return _document_out(info, names.prefix)


@router.delete(
    "/documents/{doc_id}",
    response_model=DeleteResponse,
    responses={403: {"description": "A cross-origin browser request"}, 404: {}},
)
async def delete_document(
    doc_id: str, pipeline: PipelineDep, names: DocNamesDep, _: SameOrigin, __: WriteAccess
) -> DeleteResponse:
    """Remove a document's pages, page images and record."""
    n = await run_in_threadpool(pipeline.delete, doc_id)
    names.forget(doc_id)
    return DeleteResponse(doc_id=doc_id, pages_deleted=n)
