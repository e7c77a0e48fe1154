"""FastAPI dependencies: who the request is (its key), which collection it addresses, and that collection's
pipeline and workers. Routes under ``/v1/collections/{collection}/`` and the unprefixed ``/v1/`` ones (the default
collection) are the same functions: only :func:`collection_of` tells them apart."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.http.batcher import SearchBatcher
from api.http.collections import CollectionServices, Services
from api.http.jobs import JobRunner
from api.http.limits import WorkQueue
from api.http.routes.common import DocNames
from api.keys import GLOBAL_ADMIN, KeyStore, Principal, Role
from indexer.errors import ModelUnavailable, NotFound
from indexer.settings import Settings
from rag.collections import check_name
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


def get_principal(request: Request) -> Principal:
    """Who the request's key makes it (set by :func:`require_api_key`, which every /v1 route depends on)."""
    principal: Principal = getattr(request.state, "principal", None) or GLOBAL_ADMIN
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def collection_of(request: Request) -> str:
    """The collection a request addresses: ``/v1/collections/{collection}/...``, else the default one."""
    name = request.path_params.get("collection")
    settings: Settings = request.app.state.settings
    return str(name) if name is not None else settings.collection


def visible_collection(request: Request, principal: Principal, name: str | None = None) -> str:
    """``name`` (default: the request's collection) when this principal may see it and it exists; else 404,
    the same answer for a collection that exists and one that does not."""
    name = name if name is not None else collection_of(request)
    if name != request.app.state.settings.collection:
        check_name(name)  # a 422 saying what a name may be, before anything looks it up
    registry: CollectionServices | None = getattr(request.app.state, "collections", None)
    if not principal.sees(name) or (registry is not None and not registry.registry.exists(name)):
        raise NotFound(
            f"no collection named {name[:64]!r}",
            hints={"http": "GET /v1/collections lists the ones this key can use", "cli": "`colsmol collections`"},
        )
    return name


def services_for(request: Request, principal: Principal, name: str | None = None) -> Services:
    """The collection's pipeline and workers, its search index loaded (a cold collection waits for its load)."""
    name = visible_collection(request, principal, name)
    registry: CollectionServices = _state(request, "collections")
    return registry.get(name)


def get_services(request: Request, principal: PrincipalDep) -> Services:
    # Sync on purpose: FastAPI runs it on a worker thread, where waiting for an index load blocks nothing else.
    return services_for(request, principal)


ServicesDep = Annotated[Services, Depends(get_services)]


def require_role(role: Role) -> Callable[[Request, Principal], None]:
    def check(request: Request, principal: PrincipalDep) -> None:
        name = visible_collection(request, principal)
        if not principal.may(role, name):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this key may {principal.role} collection {name!r}; this needs a {role} key",
            )

    return check


#: Route dependencies: ingest and delete need ``write`` on the request's collection.
WriteAccess = Annotated[None, Depends(require_role("write"))]


def get_pipeline(services: ServicesDep) -> RAGPipeline:
    return services.pipeline


def get_batcher(services: ServicesDep) -> SearchBatcher:
    return services.batcher


def get_jobs(services: ServicesDep) -> JobRunner:
    return services.jobs


def get_doc_names(services: ServicesDep) -> DocNames:
    return services.doc_names


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


def principal_for(settings: Settings, keys: KeyStore | None, token: str | None) -> Principal:
    """Who ``token`` (the Bearer key, or None) makes a request: everyone is the global admin on a server with no
    ``COLSMOL_API_KEY`` and no scoped key; ``COLSMOL_API_KEY`` is; a scoped key is its role on its collection.
    401 for anything else."""
    scoped = keys is not None and keys.any()
    if settings.api_key is None and not scoped:
        return GLOBAL_ADMIN
    given = token or ""
    if settings.api_key is not None and secrets.compare_digest(given.encode(), settings.api_key.encode()):
        return GLOBAL_ADMIN
    record = keys.verify(given) if keys is not None and given else None
    if record is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API key; send 'Authorization: Bearer <key>' (COLSMOL_API_KEY or a key from "
            "`colsmol keys create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Principal(record.role, record.collection, record.id)


def require_api_key(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Every /v1 route depends on this: it sets the request's :class:`Principal` (or answers 401)."""
    keys: KeyStore | None = getattr(request.app.state, "keys", None)
    token = credentials.credentials if credentials is not None else None
    request.state.principal = principal_for(settings, keys, token)
