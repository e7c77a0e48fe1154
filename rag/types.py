"""The answer a RAGPipeline returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from retriever.search import Hit


@dataclass(frozen=True)
class Answer:
    """``text`` is generated from the pages of ``sources`` (the retrieval hits actually shown to the
    model, best first). ``timings`` are seconds per stage; ``warnings`` name pages that were skipped."""

    text: str
    sources: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
