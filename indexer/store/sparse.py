"""BM25 sparse vectors for page text, by Qdrant's own tokenizer and BM25 (``qdrant_edge.Bm25``).

Both store backends use this one encoder, so a page is tokenized, stemmed and weighted the same way
whichever stores it: a document vector carries BM25's term-frequency part (``k``, ``b``, ``avg_len``), and
the collection's sparse vector ``text`` has the IDF modifier, so Qdrant adds the inverse document frequency
at query time (server and Edge alike). A query vector weighs each of its terms 1.

Language: a page's ``metadata.language`` (a name like ``german`` or an ISO code like ``de``) picks the
stemmer and stopwords; anything unknown is English. A query is embedded in every language the collection
holds (the union of the terms), so an English query still finds German pages by their German stems.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

#: The sparse vector's name in both backends.
TEXT_VECTOR = "text"
DEFAULT_LANGUAGE = "english"
#: ISO 639-1 codes for the snowball languages Qdrant's BM25 knows (names are accepted as they are).
ISO_CODES = {
    "ar": "arabic", "da": "danish", "de": "german", "el": "greek", "en": "english", "es": "spanish",
    "fi": "finnish", "fr": "french", "hu": "hungarian", "it": "italian", "nl": "dutch", "no": "norwegian",
    "pt": "portuguese", "ro": "romanian", "ru": "russian", "sv": "swedish", "ta": "tamil", "tr": "turkish",
}  # fmt: skip


def language_of(metadata: Mapping[str, Any] | None, default: str = DEFAULT_LANGUAGE) -> str:
    """The BM25 language name for a page's user metadata (``metadata.language``), ``default`` when absent.

    >>> language_of({"language": "DE"}), language_of({}), language_of({"language": "french"})
    ('german', 'english', 'french')
    """
    raw = (metadata or {}).get("language")
    if not isinstance(raw, str) or not raw.strip():
        return default
    name = raw.strip().lower()
    return ISO_CODES.get(name, name)


class Bm25Encoder:
    """Text -> ``(indices, values)`` sparse vectors by ``qdrant_edge.Bm25``, one model per language (cached).

    An unsupported language falls back to ``default`` (logged once per language).
    """

    def __init__(self, default: str = DEFAULT_LANGUAGE) -> None:
        self.default = default
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _model(self, language: str) -> Any:
        model = self._models.get(language)
        if model is not None:
            return model
        import qdrant_edge as qe

        with self._lock:
            if language not in self._models:
                try:
                    self._models[language] = qe.Bm25(qe.Bm25Config(language=language))
                except ValueError:
                    logger.warning("no BM25 stemmer for language %r; using %s for its pages", language, self.default)
                    self._models[language] = self._model(self.default) if language != self.default else qe.Bm25()
            return self._models[language]

    def document(self, text: str, language: str | None = None) -> tuple[list[int], list[float]]:
        """A page's sparse vector (BM25 term weights; IDF is the collection's modifier)."""
        vec = self._model(language or self.default).embed_document(text)
        return list(vec.indices), list(vec.values)

    def query(self, text: str, languages: Iterable[str] = ()) -> tuple[list[int], list[float]]:
        """A query's sparse vector: its terms in each of ``languages`` (default first), weight 1 each."""
        seen: dict[int, float] = {}
        for lang in dict.fromkeys([self.default, *languages]):
            vec = self._model(lang).embed_query(text)
            for i in vec.indices:
                seen[int(i)] = 1.0
        return list(seen), list(seen.values())

    def terms(self, text: str, languages: Iterable[str] = ()) -> set[int]:
        """The term ids of ``text`` (for matching words of a page against a query)."""
        return set(self.query(text, languages)[0])


#: The process-wide encoder (models are immutable; building one per language is the only cost).
ENCODER = Bm25Encoder()
