"""What the RAG pipeline needs from an answer model: the ``Generator`` protocol.

A backend is one module in this package implementing it (SmolVLM in process: :mod:`rag.generators.smolvlm`;
any OpenAI-compatible vision-language server: :mod:`rag.generators.openai`), registered in
:func:`rag.generators.make_generator`. Every backend takes the question and the page images
already fitted to the page budget (:mod:`rag.generators.prompt`), builds its prompt from the same
instruction, and stops early when ``stop`` is set (a client went away).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from indexer.models.oom import device_oom

if TYPE_CHECKING:
    from PIL import Image


class Generator(Protocol):
    """Answers a question from page images."""

    #: What produced the answer (a hub id, a local path, or a served model's name).
    model_id: str

    @property
    def loaded(self) -> bool:
        """True once ``load`` succeeded (the API reports readiness from it)."""
        ...

    def load(self) -> Generator:
        """Load weights or check the backend is reachable; raises ``ModelUnavailable`` with the fix."""
        ...

    def generate(
        self,
        question: str,
        pages: Sequence[Image.Image],
        max_new_tokens: int = 256,
        stop: threading.Event | None = None,
        page_ids: Sequence[str] | None = None,
    ) -> str:
        """The whole answer text, whitespace trimmed. ``page_ids`` name the pages (their point ids) for backends
        that keep per-page work between questions; others ignore them."""
        ...

    def stream(
        self,
        question: str,
        pages: Sequence[Image.Image],
        max_new_tokens: int = 256,
        stop: threading.Event | None = None,
        page_ids: Sequence[str] | None = None,
    ) -> Iterator[str]:
        """Text pieces as they are decoded; joined, they equal ``generate``'s text. Setting ``stop`` ends
        generation within one decode step; closing the iterator sets it."""
        ...

    def close(self) -> None:
        """Free the model (or the connection); ``load`` may be called again."""
        ...


@runtime_checkable
class PrecomputesPages(Protocol):
    """A backend that can do its per-page work ahead of questions (SmolVLM's lean path: page features)."""

    def precompute(self, pages: Sequence[Image.Image], page_ids: Sequence[str]) -> int:
        """Compute and keep what ``pages`` cost a question; returns how many were computed (not already kept)."""
        ...


#: Advice when an answer does not fit on the GPU (often another request held the memory for a moment).
ANSWER_HINTS = {
    "cli": "try again; if it persists, lower COLSMOL_GENERATOR_PAGE_EDGE or answer over fewer pages (-k)",
    "http": "try again shortly; if it persists, ask over fewer pages (k) or lower the server's "
    "COLSMOL_GENERATOR_PAGE_EDGE",
}


def answering() -> contextlib.AbstractContextManager[None]:
    """Wrap an answer's model work: a device out-of-memory becomes :class:`~indexer.errors.DeviceOutOfMemory`
    (503 with ``Retry-After`` from the API, one line from the CLI) and the CUDA cache is freed."""
    return device_oom("an answer", ANSWER_HINTS)
