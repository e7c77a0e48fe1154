"""Collections and their keys: ``/v1/collections`` and ``/v1/keys``.

Creating a collection needs the global admin key (``COLSMOL_API_KEY``; anyone on a server without keys). A
collection's own ``admin`` key may read, delete it and manage its keys. A key never learns that a collection
it cannot use exists: listing leaves it out, and naming it is a 404, as for a name nobody created.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from api.http.deps import PrincipalDep, visible_collection
from api.http.security import SameOrigin
from api.keys import KeyStore, Principal, Role
from indexer.errors import NotFound
from rag.collections import NAME_HELP, NAME_PATTERN, Collections, dir_bytes

router = APIRouter(tags=["collections"])
CollectionName = Annotated[str, Path(pattern=f"^{NAME_PATTERN}$", description=f"The collection: {NAME_HELP}.")]


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: StrictStr = Field(max_length=200, description=f"{NAME_HELP}.")
    encoder_model: StrictStr | None = Field(None, max_length=500, description="Default: the server's encoder.")
    page_longest_edge: StrictInt | None = Field(None, description="Page resolution in pixels (whole 512 px tiles).")
    index_dtype: StrictStr | None = Field(None, description="fp16 or int8.")
    pool_factor: StrictInt | None = Field(None, description="Token pooling of the search index (1 = exact).")
    search_mode: StrictStr | None = Field(None, description="exact, tiered, auto or two-stage.")
    language: StrictStr | None = Field(None, max_length=40, description="The documents' language, e.g. en.")
    qdrant_shard_number: StrictInt | None = Field(None, description="Qdrant server backend: shards.")
    qdrant_replication_factor: StrictInt | None = Field(None, description="Qdrant server backend: copies a shard.")


class CollectionOut(BaseModel):
    name: str
    default: bool = Field(description="Served at the unprefixed /v1 routes too.")
    url: str = Field(description="Where its routes are: /v1 (the default collection) or /v1/collections/{name}.")
    settings: dict[str, Any] = Field(description="Fixed at creation.")
    index: str = Field(description="Search index: cold (not in memory), loading, ready, or failed: <why>.")
    pages: int | None = None
    documents: int | None = None
    bytes: dict[str, int] | None = Field(None, description="index (in memory), images and store (on disk).")


class CollectionList(BaseModel):
    items: list[CollectionOut]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    collection: StrictStr = Field(max_length=200)
    role: Role


class KeyOut(BaseModel):
    id: str
    collection: str
    role: str
    created_at: str


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class KeyList(BaseModel):
    items: list[KeyOut]


def _registry(request: Request) -> Collections:
    from api.http.deps import _state

    registry: Collections = _state(request, "collections").registry
    return registry


def _keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


def _out(registry: Collections, name: str, detail: bool = False) -> CollectionOut:
    default = name == registry.default_name
    out = CollectionOut(
        name=name,
        default=default,
        url="/v1" if default else f"/v1/collections/{name}",
        settings=registry.spec(name).to_dict(),
        index=registry.state(name),
    )
    if detail:
        rag = registry.open(name)
        s = registry.settings
        out.pages = rag.store.count_pages()
        out.documents = len(rag.documents())
        out.bytes = {
            "index": registry.index_bytes(name),
            "images": dir_bytes(s.images_dir / name),
            "store": dir_bytes(s.qdrant_path / name) if not s.qdrant_url else 0,
        }
    return out


def _require(principal: Principal, role: Role, name: str | None) -> None:
    if not principal.may(role, name):
        where = f"collection {name!r}" if name else "the server"
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs an {role} key for {where}")


@router.get("/collections", response_model=CollectionList)
def list_collections(request: Request, principal: PrincipalDep) -> CollectionList:
    """The collections this key can use (all of them for the admin key), default first."""
    registry = _registry(request)
    return CollectionList(items=[_out(registry, n) for n in registry.names() if principal.sees(n)])


@router.post(
    "/collections", status_code=status.HTTP_201_CREATED, response_model=CollectionOut, responses={403: {}, 409: {}}
)
def create_collection(body: CollectionCreate, request: Request, principal: PrincipalDep, _: SameOrigin) -> Any:
    """A new, empty collection with its own settings (the server's for those left out), fixed from now on."""
    _require(principal, "admin", None)
    registry = _registry(request)
    overrides = body.model_dump(exclude={"name", "language"}, exclude_none=True)
    registry.create(body.name, language=body.language, **overrides)
    return _out(registry, body.name)


@router.get("/collections/{collection}", response_model=CollectionOut, responses={404: {}})
def get_collection(collection: CollectionName, request: Request, principal: PrincipalDep) -> CollectionOut:
    """Settings, index state, page and document counts, bytes in memory and on disk."""
    name = visible_collection(request, principal, collection)
    return _out(_registry(request), name, detail=True)


@router.delete("/collections/{collection}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {}, 422: {}})
def delete_collection(collection: CollectionName, request: Request, principal: PrincipalDep, _: SameOrigin) -> Response:
    """Delete the collection: its points, page images, index cache, jobs and keys. The default one cannot be."""
    name = visible_collection(request, principal, collection)
    _require(principal, "admin", name)
    request.app.state.collections.delete(name)
    _keys(request).revoke_collection(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------------------------------------- keys
@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated, responses={403: {}, 404: {}})
async def create_key(body: KeyCreate, request: Request, principal: PrincipalDep, _: SameOrigin) -> KeyCreated:
    """A key for one collection and role; the key is in this response only."""
    name = visible_collection(request, principal, body.collection)
    _require(principal, "admin", name)
    record, token = await run_in_threadpool(_keys(request).create, name, body.role)
    return KeyCreated(**record.public(), key=token)


@router.get("/keys", response_model=KeyList)
def list_keys(request: Request, principal: PrincipalDep) -> KeyList:
    """Keys (never the keys themselves): all for the admin key, a collection's own for its admin key."""
    _require(principal, "admin", principal.collection)
    return KeyList(items=[KeyOut(**k.public()) for k in _keys(request).list(principal.collection)])


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {}})
def revoke_key(key_id: str, request: Request, principal: PrincipalDep, _: SameOrigin) -> Response:
    """Revoke a key by id: it stops working at once."""
    keys = _keys(request)
    record = keys.get(key_id)
    if not principal.sees(record.collection):
        raise NotFound(f"no key with id {key_id[:40]!r}")  # as for an id that does not exist
    _require(principal, "admin", record.collection)
    keys.revoke(key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
