"""Answer models behind one protocol (:class:`rag.generators.base.Generator`), chosen by a setting.

``COLSMOL_GENERATOR_BACKEND`` picks the backend: ``smolvlm`` (default: SmolVLM in process through
transformers) or ``openai`` (any OpenAI-compatible vision-language server, :mod:`rag.generators.openai`).
A new backend is one new module here plus one line in :func:`make_generator`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from indexer.errors import ConfigError

if TYPE_CHECKING:
    from indexer.settings import Settings
    from rag.generators.base import Generator


#: The page-image sidecar (``indexer.images.SIDECARS``) holding a page's answer-model features.
FEATURES_SIDECAR = "features.safetensors"


def make_generator(settings: Settings) -> Generator:
    """The generator ``settings.generator_backend`` names, configured from ``settings`` (not loaded yet)."""
    backend = settings.generator_backend
    if backend == "smolvlm":
        from rag.generators.page_features import PageFeatureCache
        from rag.generators.smolvlm import SmolVLMGenerator

        path_of = None
        if settings.generator_page_features == "disk" or settings.generator_precompute:
            from indexer.images import PageImageStore

            images = PageImageStore(settings.images_dir / settings.collection)
            path_of = functools.partial(images.sidecar_path, name=FEATURES_SIDECAR)
        return SmolVLMGenerator(
            settings.generator_model,
            device=settings.device,
            decode=settings.generator_decode,
            image_longest_edge=settings.generator_page_edge,
            page_cache=PageFeatureCache(path_of=path_of),
        )
    if backend == "openai":
        from rag.generators.openai import from_settings

        return from_settings(settings)
    raise ConfigError(f"unknown generator backend {backend!r}; use smolvlm or openai")


__all__ = ["make_generator"]
