"""Answer models behind one protocol (:class:`rag.generators.base.Generator`), chosen by a setting.

``COLSMOL_GENERATOR_BACKEND`` picks the backend: ``smolvlm`` (default: SmolVLM in process through
transformers) or ``openai`` (any OpenAI-compatible vision-language server, :mod:`rag.generators.openai`).
A new backend is one new module here plus one line in :func:`make_generator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from indexer.errors import ConfigError

if TYPE_CHECKING:
    from indexer.settings import Settings
    from rag.generators.base import Generator


def make_generator(settings: Settings) -> Generator:
    """The generator ``settings.generator_backend`` names, configured from ``settings`` (not loaded yet)."""
    backend = settings.generator_backend
    if backend == "smolvlm":
        from rag.generators.smolvlm import SmolVLMGenerator

        return SmolVLMGenerator(settings.generator_model, device=settings.device, decode=settings.generator_decode)
    if backend == "openai":
        from rag.generators.openai import from_settings

        return from_settings(settings)
    raise ConfigError(f"unknown generator backend {backend!r}; use smolvlm or openai")


__all__ = ["make_generator"]
