"""FastAPI dependencies: the app's long-lived objects, and the optional API key check."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.http.batcher import SearchBatcher
from api.http.jobs import JobRunner
from api.http.limits import WorkQueue
from api.http.routes.common import DocNames
from indexer.errors import ModelUnavailable
from indexer.settings import Settings
from rag.pipeline import RAGPipeline

_bearer = HTTPBearer(auto_error=False, description="Needed only when COLSMOL_API_KEY is set.")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _state(request: Request, name: str) -> Any:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise ModelUnavailable("the server is still starting: models are loading; retry shortly (GET /readyz)")
    return value


def get_pipeline(request: Request) -> RAGPipeline:
    pipeline: RAGPipeline = _state(request, "pipeline")
    return pipeline


def get_batcher(request: Request) -> SearchBatcher:
    batcher: SearchBatcher = _state(request, "batcher")
    return batcher


def get_jobs(request: Request) -> JobRunner:
    jobs: JobRunner = _state(request, "jobs")
    return jobs


def get_doc_names(request: Request) -> DocNames:
    names: DocNames = _state(request, "doc_names")
    return names


def get_answers(request: Request) -> WorkQueue:
    """Where answers are generated: one thread (the model is not shared between generations), a short line."""
    answers: WorkQueue = _state(request, "answers")
    return answers


def get_explains(request: Request) -> WorkQueue:
    """Where heatmaps are computed: one thread, a short line."""
    explains: WorkQueue = _state(request, "explains")
    return explains


SettingsDep = Annotated[Settings, Depends(get_settings)]
PipelineDep = Annotated[RAGPipeline, Depends(get_pipeline)]
BatcherDep = Annotated[SearchBatcher, Depends(get_batcher)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
DocNamesDep = Annotated[DocNames, Depends(get_doc_names)]
AnswersDep = Annotated[WorkQueue, Depends(get_answers)]
ExplainsDep = Annotated[WorkQueue, Depends(get_explains)]


def require_api_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Every /v1 route depends on this; it passes when no key is configured."""
    if settings.api_key is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API key; send 'Authorization: Bearer <COLSMOL_API_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
