"""The answer prompt and the page budget, shared by every generator backend.

Every backend shows the model the same thing: the retrieved pages, best first, each fitted to
``PAGE_LONGEST_EDGE`` pixels, then :data:`SYSTEM_INSTRUCTION` and the question. Sources are the
retrieval hits themselves, never parsed out of the generated text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from indexer.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

SYSTEM_INSTRUCTION = (
    "Answer the question using only the document pages shown. "
    "If the pages do not contain the answer, say that the documents do not contain it."
)

#: Pages are shown to the answer model at most this large: 1,536 px is 3 x 3 tiles of 512 px plus the
#: global view, 640 image tokens a page with SmolVLM-256M, so 3 pages stay near 2k tokens of context.
PAGE_LONGEST_EDGE = 1536


def question_text(question: str, instruction: str = SYSTEM_INSTRUCTION) -> str:
    """The text part of the prompt: the instruction, then the question.

    >>> question_text("  Why?  ", "Be brief.")
    'Be brief.\\nQuestion: Why?'
    """
    if not isinstance(question, str) or not question.strip():
        raise InvalidRequest("the question is empty")
    return f"{instruction}\nQuestion: {question.strip()}"


def fit_pages(pages: Sequence[Image.Image], longest_edge: int | None = PAGE_LONGEST_EDGE) -> list[Image.Image]:
    """RGB copies of ``pages``, shrunk (never enlarged) so the longest edge is at most ``longest_edge``."""
    out = []
    for page in pages:
        img = page.convert("RGB") if page.mode != "RGB" else page.copy()
        if longest_edge is not None:
            img.thumbnail((longest_edge, longest_edge))
        out.append(img)
    return out
