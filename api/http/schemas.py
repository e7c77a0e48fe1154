"""HTTP request and response bodies, named by role. Pydantic lives here, at the edge only.

Request bodies are strict: ``k: "3"``, ``k: true``, ``k: 2.0`` or ``stream: "yes"`` are 422s, not guesses; every
string must be valid Unicode (JSON can spell a lone surrogate, ``"\\ud800"``, which nothing downstream can encode).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from rag.pipeline import MAX_ANSWER_K, MAX_K, MAX_QUESTION_CHARS


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode: it holds a lone surrogate (such as \\ud800)") from None
    return value


#: A string that UTF-8 can encode (what every request string must be).
Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]

# The JSON shape of a filter; routes parse it into indexer.filters.Filter, which checks keys and types.
FilterValue = Text | StrictInt | StrictBool | StrictFloat | list[Text] | list[StrictInt]
FilterBody = dict[Text, FilterValue]
FILTER_HELP = (
    'Page filter, e.g. {"doc_id": ["..."], "metadata.lang": "en"}. Keys: doc_id, source, file_name, page_number, '
    "metadata.<key>; a list means any of."
)
STRICT = ConfigDict(extra="forbid", strict=True)
SearchMode = Literal["visual", "text", "hybrid"]
MODE_HELP = (
    "visual (MaxSim over page images), text (BM25 over page text) or hybrid (both, fused by RRF); "
    "unset: the server's default (COLSMOL_QUERY_MODE, hybrid)."
)


def _not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"the {what} is empty")
    return value


class SearchRequest(BaseModel):
    model_config = STRICT

    query: Text = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    k: int = Field(10, ge=1, le=MAX_K)
    filter: FilterBody | None = Field(None, description=FILTER_HELP)
    mode: SearchMode | None = Field(None, description=MODE_HELP)

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        return _not_blank(v, "query")


class RegionOut(BaseModel):
    """A page rectangle where the query matched, page-relative (0 to 1, y down), with the MaxSim terms won there."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float


REGIONS_HELP = (
    "Where on the page the query matched best, best first (at most 3): the page tokens that won MaxSim's maximum "
    "for the query's tokens, merged into boxes; each box's score is the sum of the terms it won."
)


class HitOut(BaseModel):
    """One ranked page, the same shape in search results, answer sources, OpenAI citations and MCP tool results."""

    rank: int = Field(description="1 for the best page; the [n] marker in an answer's text.")
    point_id: str = Field(description="The page's id (image, explain and MCP get_page take it).")
    doc_id: str | None
    source: str | None = Field(None, description="Where the page's document is: a path, or upload:<name>.")
    file_name: str | None
    page_number: int | None
    score: float
    image_url: str | None = Field(
        description="The page image over HTTP: relative on /v1 routes, absolute in OpenAI citations and MCP over "
        "HTTP, null over MCP's stdio."
    )
    thumb_url: str | None = Field(description="A small version of the page image (same rules as image_url).")
    page_uri: str = Field(description="The page image as an MCP resource (colsmol://pages/<point_id>).")
    regions: list[RegionOut] = Field(default_factory=list, description=REGIONS_HELP)
    found_by: list[str] = Field(default_factory=list, description="Which side(s) found the page: visual, text.")


class SearchResponse(BaseModel):
    hits: list[HitOut]


class AnswerRequest(BaseModel):
    model_config = STRICT

    question: Text = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    k: int = Field(3, ge=1, le=MAX_ANSWER_K)
    filter: FilterBody | None = Field(None, description=FILTER_HELP)
    mode: SearchMode | None = Field(None, description=MODE_HELP)
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
    sources: list[str] = Field(default_factory=list, description="Every known path of this content, source first.")
    page_count: int
    pages_stored: int
    content_hash: str
    ingested_at: str
    complete: bool
    state: Literal["text", "visual", "complete"] = Field(
        "complete",
        description="text: only the pages' text is stored (searchable by text); visual: embedding under way; "
        "complete: every page embedded.",
    )
    pages_visual: int = Field(0, description="Pages with their visual embedding stored.")
    metadata: dict[str, Any]
    thumb_url: str


class DocumentList(BaseModel):
    items: list[DocumentOut]
    total: int
    offset: int
    limit: int


class FacetValue(BaseModel):
    value: str | int | float
    documents: int = Field(description="Documents with this value.")


class MetadataFacet(BaseModel):
    key: str = Field(description="Filter on it as metadata.<key>.")
    values: list[FacetValue] = Field(description="Most common first (at most `values` of them).")
    values_total: int = Field(description="Distinct filterable values of this key.")


class DocumentFacet(BaseModel):
    doc_id: str
    file_name: str
    page_count: int
    complete: bool


class Facets(BaseModel):
    """What a search can be narrowed to: documents (filter ``doc_id``) and user metadata (``metadata.<key>``)."""

    documents: list[DocumentFacet] = Field(description="By name (at most `limit` of them).")
    documents_total: int
    pages: int = Field(description="Pages stored, over every document.")
    metadata: list[MetadataFacet] = Field(description="Keys by name; booleans are left out (not filterable).")


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
    state: Literal["queued", "running", "done", "failed", "interrupted"] = Field(
        description="queued, running, done, failed, or interrupted (the server stopped before the job finished: "
        "upload the files again)"
    )
    files_total: int
    pages_done: int
    pages_total: int
    pages_text: int = Field(
        0, description="Pages whose text is stored: searchable by text before they are embedded (pages_done)."
    )
    stage: Literal["text", "visual", "done"] = Field(
        "text", description="text: reading the files' text; visual: embedding pages; done: finished."
    )
    errors: list[JobError]
    report: dict[str, Any] | None


class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    detail: str | None = None
    collections: dict[str, str] | None = None
    #: how searches run: exact, tiered or two-stage (auto's choice with its reason)
    search_mode: str | None = None
