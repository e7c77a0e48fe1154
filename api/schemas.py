"""HTTP request and response bodies, named by role. Pydantic lives here, at the edge only."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from rag.pipeline import MAX_ANSWER_K, MAX_K, MAX_QUESTION_CHARS

# The JSON shape of a filter; routes parse it into indexer.filters.Filter, which checks keys and types.
FilterValue = StrictStr | StrictInt | StrictBool | StrictFloat | list[StrictStr] | list[StrictInt]
FilterBody = dict[str, FilterValue]
FILTER_HELP = (
    'Page filter, e.g. {"doc_id": ["..."], "metadata.lang": "en"}. Keys: doc_id, source, file_name, page_number, '
    "metadata.<key>; a list means any of."
)


def _not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"the {what} is empty")
    return value


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    k: int = Field(10, ge=1, le=MAX_K)
    filter: FilterBody | None = Field(None, description=FILTER_HELP)

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        return _not_blank(v, "query")


class HitOut(BaseModel):
    point_id: str
    doc_id: str | None
    file_name: str | None
    page_number: int | None
    score: float
    image_url: str
    thumb_url: str


class SearchResponse(BaseModel):
    hits: list[HitOut]


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    k: int = Field(3, ge=1, le=MAX_ANSWER_K)
    filter: FilterBody | None = Field(None, description=FILTER_HELP)
    stream: bool = Field(False, description="Answer as Server-Sent Events: token*, sources, done.")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="Defaults to the server setting.")

    @field_validator("question")
    @classmethod
    def _question(cls, v: str) -> str:
        return _not_blank(v, "question")


class AnswerResponse(BaseModel):
    text: str
    sources: list[HitOut]
    timings: dict[str, float]
    warnings: list[str]


class DocumentOut(BaseModel):
    doc_id: str
    file_name: str
    source: str
    page_count: int
    pages_stored: int
    content_hash: str
    ingested_at: str
    complete: bool
    metadata: dict[str, Any]
    thumb_url: str


class DocumentList(BaseModel):
    items: list[DocumentOut]
    total: int
    offset: int
    limit: int


class DeleteResponse(BaseModel):
    doc_id: str
    pages_deleted: int


class JobCreated(BaseModel):
    job_id: str


class JobError(BaseModel):
    file: str
    error: str


class JobOut(BaseModel):
    id: str
    state: str = Field(description="queued, running, done or failed")
    files_total: int
    pages_done: int
    pages_total: int
    errors: list[JobError]
    report: dict[str, Any] | None


class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    detail: str | None = None
