"""Bodies of colsmol's OpenAI-compatible endpoints (``/v1/chat/completions``, ``/v1/models``).

Requests follow OpenAI's chat completions shape closely enough for the official SDKs and chat tools; parameters
colsmol has no use for (``temperature``, ``top_p``, ``user``, ``tools`` ...) are accepted and ignored. Two extra
fields carry colsmol's own options: ``k`` (pages shown to the answer model), ``filter`` and ``mode`` (as in
``/v1/answer``).
Responses add ``citations``: the pages the answer was generated from, numbered as the ``[n]`` markers in the text.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from api.http.schemas import FILTER_HELP, MODE_HELP, FilterBody, HitOut, SearchMode
from rag.pipeline import MAX_ANSWER_K

#: The one model colsmol serves: RAG over the collection.
MODEL_ID = "colsmol"


class ContentPart(BaseModel):
    """One part of a message's content; only ``text`` parts are read (images a chat tool attaches are ignored)."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: StrictStr = Field(description="system, developer, user, assistant or tool; the last user message is asked.")
    content: StrictStr | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content or [] if p.type == "text" and p.text)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request. The question is the last ``user`` message; earlier turns are not used."""

    model_config = ConfigDict(extra="allow")  # unknown OpenAI parameters are accepted and ignored

    model: StrictStr = Field(description=f"Must be {MODEL_ID!r} (GET /v1/models).")
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    stream: bool = Field(False, description="OpenAI chunk Server-Sent Events, ending with 'data: [DONE]'.")
    max_tokens: int | None = Field(None, ge=1, le=4096, description="Answer length limit (server setting if unset).")
    max_completion_tokens: int | None = Field(None, ge=1, le=4096, description="Same as max_tokens.")
    n: int | None = Field(None, ge=1, le=1, description="Only one choice is generated.")
    stream_options: StreamOptions | None = None
    # colsmol's own options
    k: int = Field(3, ge=1, le=MAX_ANSWER_K, description="Pages shown to the answer model.")
    filter: FilterBody | None = Field(None, description=FILTER_HELP)
    mode: SearchMode | None = Field(None, description=MODE_HELP)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    citations: list[HitOut] = Field(description="The cited pages, in [n] order (colsmol's extra field).")
    warnings: list[str] = Field(default_factory=list, description="Pages that could not be shown (colsmol's).")


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One streamed event. The last one (``finish_reason: "stop"``) also carries ``citations``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    citations: list[HitOut] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "colsmol"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Every error of these endpoints: ``{"error": {"message", "type", "param", "code"}}``."""

    error: OpenAIErrorBody


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return OpenAIError(error=OpenAIErrorBody(message=message, type=type, param=param, code=code)).model_dump()
