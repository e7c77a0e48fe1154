"""Each collection's HTTP workers: its search batcher, its ingest job runner and its hit shaper, next to its
pipeline from the registry (:class:`rag.collections.Collections`).

They are made on a collection's first request and live until it is deleted or the server stops; unloading a
search index under the memory budget leaves them be (the pipeline stays open, only its index goes). The default
collection's job records stay where a single-collection server kept them (``DATA_DIR/jobs.sqlite``); another
collection's live in its own folder (``DATA_DIR/collections/<name>/``), so a job id is only ever found in the
collection it was uploaded to.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from api.http import metrics
from api.http.batcher import SearchBatcher
from api.http.jobs import JobRunner
from api.http.routes.common import DocNames
from rag.collections import Collections, collection_dir

if TYPE_CHECKING:
    from indexer.settings import Settings
    from rag.pipeline import RAGPipeline


@dataclass(frozen=True)
class Services:
    name: str
    pipeline: RAGPipeline
    batcher: SearchBatcher
    jobs: JobRunner
    doc_names: DocNames


def url_prefix(name: str, default: str) -> str:
    """Where a collection's routes are: ``/v1`` for the default collection (as before), else its own prefix."""
    return "/v1" if name == default else f"/v1/collections/{name}"


class CollectionServices:
    """The served collections' workers, made on first use (see the module docstring)."""

    def __init__(self, registry: Collections, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self._services: dict[str, Services] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Services:
        """The collection's workers and pipeline, its index loaded (waits for a cold collection's load)."""
        rag = self.registry.pipeline(name)
        with self._lock:
            found = self._services.get(name)
            if found is not None:
                return found
            s = self.settings
            data = s.data_dir if name == self.registry.default_name else collection_dir(s.data_dir, name)
            services = Services(
                name=name,
                pipeline=rag,
                batcher=SearchBatcher(rag, s.search_batch_window_ms / 1000, s.search_max_batch),
                jobs=JobRunner(rag, data, on_report=metrics.observe_ingest(name)),
                doc_names=DocNames(
                    rag.store,
                    url_prefix(name, self.registry.default_name),
                    None if name == self.registry.default_name else name,
                ),
            )
            self._services[name] = services
            return services

    def loaded(self) -> list[Services]:
        with self._lock:
            return list(self._services.values())

    def delete(self, name: str) -> None:
        """Stop the collection's workers, then delete it (points, images, index cache, job records)."""
        with self._lock:
            services = self._services.pop(name, None)
        if services is not None:
            services.batcher.close()
            services.jobs.close()
        self.registry.delete(name)

    def close(self) -> None:
        with self._lock:
            services = list(self._services.values())
            self._services.clear()
        for s in services:
            s.jobs.close()
            s.batcher.close()
