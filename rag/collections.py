"""Many collections in one data directory: their settings, fixed at creation, and the pipelines serving them.

A collection is a document set with its own encoder, page resolution, index precision, pooling, search mode and
language, its own Qdrant collection, page images and search index::

    DATA_DIR/collections/<name>/collection.json   its settings (a CollectionSpec), written once at creation
    DATA_DIR/qdrant/<name>/                       its Qdrant Edge shard (or the server's collection <name>)
    DATA_DIR/pages/<name>/                        its page images
    DATA_DIR/index-cache/<name>/                  its search index cache

The default collection (``COLSMOL_COLLECTION``, ``colsmol``) has no spec file: it follows the environment, as a
single-collection colsmol always did. Names are ``[a-z0-9][a-z0-9_-]{0,62}``, so a name is always one plain path
component under the data dir.

:class:`Collections` serves them from one process: one :class:`~rag.pipeline.RAGPipeline` per collection, opened
on first use; one encoder model per checkpoint (collections at other resolutions get a sibling sharing its
weights) and one generator for all. Search indexes load on first use (the request waits for the load) and the
least recently used are unloaded when all loaded indexes together pass the memory budget.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.disk import replacing
from indexer.errors import Conflict, InvalidRequest, NotFound

if TYPE_CHECKING:
    from indexer.models.encoder import ColSmolEncoder
    from indexer.settings import Settings
    from rag.generators.base import Generator
    from rag.pipeline import RAGPipeline

log = logging.getLogger(__name__)

NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
NAME_HELP = "1 to 63 lower-case letters, digits, '-' or '_', starting with a letter or digit (e.g. finance-2024)"
LANGUAGE_PATTERN = r"[A-Za-z]{2,3}([_+-][A-Za-z0-9]{2,8}){0,3}"
SPEC_FILE = "collection.json"
#: The settings a collection fixes at creation (Settings fields, validated by Settings itself).
FIXED_SETTINGS = (
    "encoder_model",
    "page_longest_edge",
    "index_dtype",
    "pool_factor",
    "search_mode",
    "qdrant_shard_number",
    "qdrant_replication_factor",
)
#: Share of the machine's RAM (or of the GPU's memory) the search indexes may hold when no budget is set.
RAM_SHARE = 0.5
GPU_SHARE = 0.8


def check_name(name: object) -> str:
    """``name`` if it is a valid collection name, else InvalidRequest saying what is allowed.

    >>> check_name("finance-2024")
    'finance-2024'
    >>> check_name("../etc")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    indexer.errors.InvalidRequest: collection name '../etc' is not valid: use 1 to 63 lower-case letters, ...
    """
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        shown = name[:80] if isinstance(name, str) else name
        raise InvalidRequest(f"collection name {shown!r} is not valid: use {NAME_HELP}")
    return name


@dataclass(frozen=True)
class CollectionSpec:
    """A collection's settings, fixed when it was created (``language``: the documents' language, e.g. ``en``,
    recorded for text extraction and shown to clients)."""

    name: str
    encoder_model: str
    page_longest_edge: int | None
    index_dtype: str
    pool_factor: int
    search_mode: str
    qdrant_shard_number: int | None = None
    qdrant_replication_factor: int | None = None
    language: str | None = None
    created_at: str = ""

    @classmethod
    def of_settings(cls, settings: Settings, name: str, language: str | None = None) -> CollectionSpec:
        return cls(
            name=name,
            **{k: getattr(settings, k) for k in FIXED_SETTINGS},
            language=language,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def apply(self, base: Settings) -> Settings:
        """``base`` (the server's settings) with this collection's name and fixed settings."""
        return base.model_copy(update={"collection": self.name, **{k: getattr(self, k) for k in FIXED_SETTINGS}})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CollectionSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


# ---------------------------------------------------------------------------------------------- catalog
def collection_dir(data_dir: Path, name: str) -> Path:
    """The collection's own folder (its spec; its upload jobs on the HTTP server)."""
    return Path(data_dir) / "collections" / check_name(name)


def read_spec(data_dir: Path, name: str) -> CollectionSpec | None:
    """The spec of a created collection, or None (not created, or the default collection)."""
    try:
        path = collection_dir(data_dir, name) / SPEC_FILE
    except InvalidRequest:
        return None
    try:
        return CollectionSpec.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"the settings of collection {name!r} in {path} are unreadable: {exc}") from None


def created_names(data_dir: Path) -> list[str]:
    root = Path(data_dir) / "collections"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if re.fullmatch(NAME_PATTERN, p.name) and (p / SPEC_FILE).is_file())


def collection_settings(settings: Settings, name: str) -> Settings:
    """The settings collection ``name`` runs with: ``settings`` themselves for the default collection, the
    created collection's spec applied to them otherwise; NotFound for a collection that was never created."""
    if name == settings.collection:
        return settings
    spec = read_spec(settings.data_dir, check_name(name))
    if spec is None:
        raise NotFound(
            f"no collection named {name!r}",
            hints={"cli": "`colsmol collections` lists them", "http": "GET /v1/collections lists them"},
        )
    return spec.apply(settings)


def with_collection(settings: Settings) -> Settings:
    """``settings`` with their collection's spec applied when it is a created one (``colsmol -c NAME``); as they
    are otherwise (the default collection, or a collection named only by ``COLSMOL_COLLECTION``)."""
    spec = read_spec(settings.data_dir, settings.collection)
    return spec.apply(settings) if spec is not None else settings


def new_spec(settings: Settings, name: str, language: str | None = None, **overrides: Any) -> CollectionSpec:
    """A spec for a new collection: the server's settings with ``overrides`` (FIXED_SETTINGS only) on top,
    each checked by :class:`~indexer.settings.Settings`' own rules."""
    from pydantic import ValidationError

    from indexer.settings import Settings

    check_name(name)
    unknown = sorted(set(overrides) - set(FIXED_SETTINGS))
    if unknown:
        raise InvalidRequest(f"unknown collection setting(s) {unknown}; known: {', '.join(FIXED_SETTINGS)}")
    if language is not None and not re.fullmatch(LANGUAGE_PATTERN, language):
        raise InvalidRequest(f"language {language[:40]!r} is not a language code; use e.g. en, de, pt-BR or eng+deu")
    values = {k: getattr(settings, k) for k in FIXED_SETTINGS}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        checked = Settings.model_validate({**settings.model_dump(), **values})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequest(f"collection setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return CollectionSpec.of_settings(checked, name, language)


def write_spec(data_dir: Path, spec: CollectionSpec) -> None:
    """Record a new collection; Conflict if one of that name was created already."""
    folder = collection_dir(data_dir, spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / SPEC_FILE
    if target.exists():
        raise Conflict(f"a collection named {spec.name!r} exists already")
    with replacing(target) as tmp:
        tmp.write_text(json.dumps(spec.to_dict(), indent=2))


def drop_collection(settings: Settings, name: str) -> None:
    """Delete a created collection's points (its Qdrant collection), page images, index cache and folder.

    The store is opened first: on embedded Edge its lock proves no process still serves it (else
    StoreUnavailable names the process, and nothing is deleted)."""
    from indexer.store import open_store

    s = collection_settings(settings, name)
    store = open_store(s)
    store.drop()
    for folder in (s.images_dir / name, s.data_dir / "index-cache" / name, collection_dir(s.data_dir, name)):
        shutil.rmtree(folder, ignore_errors=True)
    log.info("deleted collection %r", name)


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def default_budget_bytes(device: str) -> int:
    """The memory the search indexes may hold when no budget is set: a share of the GPU's memory on CUDA,
    of the machine's RAM otherwise."""
    if device.startswith("cuda"):
        import torch

        return int(GPU_SHARE * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return int(RAM_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


# ---------------------------------------------------------------------------------------------- registry
class Collections:
    """The collections of one data directory, served from one process (see the module docstring).

    ``default`` (already built, e.g. by a test or ``colsmol serve``) serves the default collection and lends its
    encoder and generator to the others; it is not closed here. ``budget_bytes`` bounds the loaded search indexes
    together (None: :func:`default_budget_bytes`).
    """

    def __init__(
        self, settings: Settings, *, default: RAGPipeline | None = None, budget_bytes: int | None = None
    ) -> None:
        self.settings = settings
        self.default_name = settings.collection
        self._budget = budget_bytes
        self._lock = threading.RLock()
        self._loading: dict[str, threading.Lock] = {}
        self._pipelines: OrderedDict[str, RAGPipeline] = OrderedDict()  # least recently used first
        self._states: dict[str, str] = {}
        self._borrowed: set[str] = set()
        self._encoders: dict[tuple[str, int | None], ColSmolEncoder] = {}
        self._owned_encoders: list[ColSmolEncoder] = []
        self._generator: Generator | None = None
        self._owns_generator = False
        #: The last index loads, ``(name, seconds)``, newest last; ``on_load(name, seconds)`` hears of each.
        self.loads: list[tuple[str, float]] = []
        self.on_load: Callable[[str, float], None] | None = None
        if default is not None:
            self._pipelines[self.default_name] = default
            self._borrowed.add(self.default_name)
            self._states[self.default_name] = "ready" if _index_loaded(default) else "cold"
            self._encoders[(default.encoder.model_id, default.encoder.requested_longest_edge)] = default.encoder
            self._generator = default.generator

    # ------------------------------------------------------------------ catalog
    def names(self) -> list[str]:
        """The default collection, then the created ones by name."""
        return [self.default_name] + [n for n in created_names(self.settings.data_dir) if n != self.default_name]

    def exists(self, name: str) -> bool:
        return name == self.default_name or read_spec(self.settings.data_dir, name) is not None

    def spec(self, name: str) -> CollectionSpec:
        if name == self.default_name:
            return CollectionSpec(**{**CollectionSpec.of_settings(self.settings, name).to_dict(), "created_at": ""})
        spec = read_spec(self.settings.data_dir, name)
        if spec is None:
            raise NotFound(f"no collection named {name!r}")
        return spec

    def create(self, name: str, language: str | None = None, **overrides: Any) -> CollectionSpec:
        """Record a new collection (its store, images and index come with its first use)."""
        check_name(name)
        with self._lock:
            if self.exists(name):
                raise Conflict(f"a collection named {name!r} exists already")
            spec = new_spec(self.settings, name, language, **overrides)
            write_spec(self.settings.data_dir, spec)
        log.info("created collection %r", name)
        return spec

    def delete(self, name: str) -> None:
        """Close and delete a created collection: its points, page images, index cache and folder."""
        if name == self.default_name:
            raise InvalidRequest(
                f"{name!r} is the default collection (COLSMOL_COLLECTION) and cannot be deleted; delete its "
                "documents instead"
            )
        with self._lock:
            collection_settings(self.settings, name)  # NotFound first
            lock = self._loading.setdefault(name, threading.Lock())
        with lock:
            with self._lock:
                rag = self._pipelines.pop(name, None)
                self._states.pop(name, None)
            if rag is not None:
                rag.close()
            drop_collection(self.settings, name)

    # ------------------------------------------------------------------ serving
    def state(self, name: str) -> str:
        """``cold`` (index not in memory), ``loading``, ``ready`` or ``failed: <why>``."""
        with self._lock:
            rag = self._pipelines.get(name)
            state = self._states.get(name, "cold")
        if state == "loading" or state.startswith("failed"):
            return state
        # Loaded by whoever (a warm-up, a first search), or unloaded under the budget since.
        return "ready" if rag is not None and _index_loaded(rag) else "cold"

    def states(self) -> dict[str, str]:
        return {name: self.state(name) for name in self.names()}

    def open(self, name: str) -> RAGPipeline:
        """The collection's pipeline, opened if needed, its index not necessarily loaded (counts, documents)."""
        with self._lock:
            rag = self._pipelines.get(name)
            if rag is not None:
                return rag
            s = collection_settings(self.settings, name)  # NotFound for an unknown name
            lock = self._loading.setdefault(name, threading.Lock())
        with lock:
            with self._lock:
                rag = self._pipelines.get(name)
            if rag is None:
                rag = self._build(s)
                with self._lock:
                    self._pipelines[name] = rag
        return rag

    def pipeline(self, name: str) -> RAGPipeline:
        """The collection's pipeline with its search index loaded: the first call for a cold collection waits for
        the load (from the index cache, else built from the store). Marks it most recently used and unloads
        the least recently used indexes of others past the budget."""
        rag = self.open(name)
        if not _index_loaded(rag):
            with self._loading.setdefault(name, threading.Lock()):
                if not _index_loaded(rag):
                    self._load(name, rag)
        with self._lock:
            if name in self._pipelines:
                self._pipelines.move_to_end(name)
        self._enforce_budget(keep=name)
        return rag

    def _load(self, name: str, rag: RAGPipeline) -> None:
        import time

        assert rag.live_index is not None
        with self._lock:
            self._states[name] = "loading"
        started = time.perf_counter()
        try:
            rag.live_index.load()
        except Exception as exc:
            with self._lock:
                self._states[name] = f"failed: {exc}"
            raise
        seconds = time.perf_counter() - started
        with self._lock:
            self._states[name] = "ready"
            self.loads.append((name, seconds))
            del self.loads[:-100]
        if self.on_load is not None:
            self.on_load(name, seconds)
        log.info("collection %r: search index loaded in %.2f s (%d bytes)", name, seconds, rag.live_index.nbytes())

    def opened(self) -> list[tuple[str, RAGPipeline]]:
        """The collections open in this process, with their pipelines."""
        with self._lock:
            return list(self._pipelines.items())

    def index_bytes(self, name: str) -> int:
        with self._lock:
            rag = self._pipelines.get(name)
        return rag.live_index.nbytes() if rag is not None and rag.live_index is not None else 0

    @property
    def budget_bytes(self) -> int:
        if self._budget is None:
            device = str(self._pipelines[self.default_name].encoder.device) if self._pipelines else "cpu"
            self._budget = (
                self.settings.index_memory_budget_mb << 20
                if self.settings.index_memory_budget_mb
                else default_budget_bytes(device)
            )
        return self._budget

    def _enforce_budget(self, keep: str) -> None:
        with self._lock:
            loaded = [(n, r) for n, r in self._pipelines.items() if _index_loaded(r)]
            total = sum(r.live_index.nbytes() for _, r in loaded if r.live_index is not None)
            budget = self.budget_bytes
            victims = []
            for name, rag in loaded:  # least recently used first
                if total <= budget:
                    break
                if name == keep or rag.live_index is None:
                    continue
                total -= rag.live_index.nbytes()
                victims.append((name, rag))
        for name, rag in victims:
            assert rag.live_index is not None
            log.info("unloading the search index of collection %r (memory budget %d bytes)", name, budget)
            rag.live_index.close()

    # ------------------------------------------------------------------ building
    def _build(self, s: Settings) -> RAGPipeline:
        from rag.pipeline import RAGPipeline

        encoder = self._encoder_for(s)
        rag = RAGPipeline.from_settings(s, encoder=encoder, generator=self._generator_for(s))
        log.info("opened collection %r", s.collection)
        return rag

    def _encoder_for(self, s: Settings) -> ColSmolEncoder:
        """One model per checkpoint: the first encoder built for it, or a sibling at another resolution."""
        from indexer.models.encoder import ColSmolEncoder

        key = (s.encoder_model, s.page_longest_edge)
        with self._lock:
            found = self._encoders.get(key)
            if found is not None:
                return found
            root = next((e for (model, _), e in self._encoders.items() if model == s.encoder_model), None)
            if root is not None:
                encoder = root.sibling(s.page_longest_edge)
            else:
                encoder = ColSmolEncoder.from_settings(s)
            self._encoders[key] = encoder
            self._owned_encoders.append(encoder)
            return encoder

    def _generator_for(self, s: Settings) -> Generator | None:
        """The one shared generator; None (the pipeline builds its own) where page features live on disk beside
        each collection's page images."""
        if s.generator_page_features == "disk" or s.generator_precompute:
            return None
        with self._lock:
            if self._generator is None:
                from rag.generators import make_generator

                self._generator = make_generator(self.settings)
                self._owns_generator = True
            return self._generator

    def close(self) -> None:
        """Close every pipeline opened here (the default one only if built here), then the shared models."""
        with self._lock:
            pipelines = [(n, r) for n, r in self._pipelines.items() if n not in self._borrowed]
            self._pipelines.clear()
        for _, rag in pipelines:
            rag.close()
        for encoder in self._owned_encoders:
            encoder.close()
        if self._owns_generator and self._generator is not None:
            self._generator.close()


def _index_loaded(rag: RAGPipeline) -> bool:
    """Whether a search would find the index in memory (two-stage search has none to load)."""
    return rag.live_index is None or rag.live_index.loaded
