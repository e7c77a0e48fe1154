"""``/v1/local``: work on paths of the server's own machine, for the ``colsmol`` CLI of the same user.

While ``colsmol serve`` owns an embedded store, ``colsmol ingest DIR`` and ``colsmol export DIR`` cannot open it;
they ask the server instead, with the paths as they are (so ingest keeps its path semantics: incremental by
path, renames, ``--prune``). These routes read and write arbitrary paths with the server's rights, so they need
the random token the server wrote into its advertisement (:mod:`api.cli.advert`, a 0600 file in the data dir):
only a process that can read that file gets in. Without an advertisement (a server started by other means)
they do not exist (404). They are left out of the OpenAPI schema: no client but the CLI calls them.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from api.cli.advert import TOKEN_HEADER
from api.http.deps import JobsDep, PipelineDep, WriteAccess
from api.http.jobs import Job, new_job_id
from api.http.schemas import JobCreated

router = APIRouter(prefix="/local", tags=["local"], include_in_schema=False)


def require_local_token(
    request: Request, token: Annotated[str | None, Header(alias=TOKEN_HEADER)] = None
) -> None:
    expected = getattr(request.app.state, "local_token", None)
    if not expected:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    if token is None or not secrets.compare_digest(token.encode(), str(expected).encode()):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"local routes need the {TOKEN_HEADER} header from the server's advertisement in its data dir",
        )


LocalToken = Annotated[None, Depends(require_local_token)]


class LocalIngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    paths: list[StrictStr] = Field(min_length=1, max_length=10_000)
    metadata: dict[StrictStr, StrictStr | StrictInt | StrictFloat | StrictBool] = Field(default_factory=dict)
    prune: StrictBool = False
    password: StrictStr | None = None


class LocalExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    path: StrictStr = Field(min_length=1)


@router.post("/ingest", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def ingest(body: LocalIngestRequest, jobs: JobsDep, _: LocalToken, __: WriteAccess) -> JobCreated:
    """Ingest files and folders of this machine; poll ``GET /v1/jobs/{id}``: its ``report`` is ``colsmol ingest``'s."""
    paths = [Path(p) for p in body.paths]
    job = Job(
        new_job_id(), None, [], dict(body.metadata), body.password, paths=paths, prune=body.prune
    )
    jobs.submit(job)
    return JobCreated(job_id=job.id)


@router.post("/export")
async def export(body: LocalExportRequest, pipeline: PipelineDep, _: LocalToken) -> dict[str, Any]:
    """Write an export of the collection to a folder of this machine (``colsmol export``)."""
    from indexer.backup import export_collection

    summary = await run_in_threadpool(export_collection, pipeline.store, pipeline.images, Path(body.path))
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(summary).items()}
