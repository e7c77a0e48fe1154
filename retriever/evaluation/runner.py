"""Run an evaluation: embed the corpus once, then rank it under several index configurations side by side.

Configurations (``parse_configs``):

- ``exact`` (alias ``fp16``): :class:`~retriever.token_index.TokenIndex` in fp16, every token: the reference;
- ``int8``: the same tokens quantized per token to int8;
- ``poolN`` (``pool2``, ``pool3``...): tokens hierarchically pooled by a factor N at index time (fp16);
  ``int8-poolN`` combines both;
- ``runtime:NAME`` (``runtime:int8``, ``runtime:openvino-bf16``...): the corpus and the queries embedded again with
  the encoder's vision tower on that CPU runtime (:mod:`indexer.models.vision_runtimes`), then ranked like
  ``exact``: what a runtime costs in ranking quality on real data (``exact`` uses the encoder as configured,
  ``COLSMOL_ENCODER_RUNTIME``);
- ``two-stage``: pages written to an ephemeral Qdrant Edge shard with their pooled prefetch vectors
  (``prefetch_pool_factor``, 16 as ``colsmol ingest`` writes them); Qdrant prefetches ``candidates`` pages per query,
  which are reranked by exact MaxSim (:class:`~retriever.search.TwoStageSearcher`).

- ``tiered``: :class:`~retriever.tiered_index.TieredIndex` as ``COLSMOL_SEARCH_MODE=tiered`` builds it: tier 1
  (the pooled prefetch vectors, int8, resident) proposes ``candidates`` pages, tier 2 ranks them by exact MaxSim
  over their int8 tokens read from a memory-mapped token file (in a temporary directory); ``tier1`` is tier 1's
  own ranking (what tier 2 starts from), so each tier is measured against exact.

``exact`` is always run (added first when not asked for), since every configuration is reported relative to it.
Nothing touches a user's collection: the Edge shard lives in a temporary directory (or a fresh collection under
``workdir``) and token indexes live in memory.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, get_args

import numpy as np

from indexer.errors import ConfigError
from retriever.evaluation.datasets import EvalDataset
from retriever.evaluation.metrics import evaluate_run, metric_names

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)

_CONFIG_RE = re.compile(r"^(?:(exact|fp16|int8)(?:-pool(\d+))?|pool(\d+))$")


class Encoder(Protocol):
    def embed_pages(self, images: Sequence[Any]) -> list[np.ndarray]: ...

    def embed_queries(self, texts: Sequence[str]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class EvalConfig:
    """One way of indexing and searching the same page vectors."""

    name: str
    #: "index" (exhaustive MaxSim over a TokenIndex), "runtime" (re-embedded), "two-stage", "tiered" or "tier1"
    kind: str = "index"
    dtype: str = "fp16"
    pool_factor: int = 1
    runtime: str = ""  # kind "runtime": the encoder runtime the corpus is embedded with


EXACT = EvalConfig("exact")


def parse_configs(spec: str | Sequence[str]) -> list[EvalConfig]:
    """``"exact,int8,pool2,pool3,two-stage"`` -> configurations, ``exact`` first (added when missing).

    >>> [c.name for c in parse_configs("int8, pool2")]
    ['exact', 'int8', 'pool2']
    >>> parse_configs("int8-pool3")[1]
    EvalConfig(name='int8-pool3', kind='index', dtype='int8', pool_factor=3, runtime='')
    """
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[EvalConfig] = []
    for item in items:
        if item in ("two-stage", "two_stage", "twostage"):
            cfg = EvalConfig("two-stage", kind="two-stage")
        elif item in ("tiered", "tier1"):
            cfg = EvalConfig(item, kind=item, dtype="int8")
        elif item.startswith("runtime:"):
            from indexer.settings import EncoderRuntime

            name = item.split(":", 1)[1].strip()
            known = [r for r in get_args(EncoderRuntime) if r != "auto"]
            if name not in known:
                raise ConfigError(f"--config {item!r}: the runtime must be one of {', '.join(known)}")
            cfg = EvalConfig(f"runtime:{name}", kind="runtime", runtime=name)
        else:
            m = _CONFIG_RE.match(item)
            if not m:
                raise ConfigError(
                    f"--config {item!r} is not one of exact, int8, poolN (pool2, pool3...), int8-poolN, two-stage, "
                    "tiered, tier1, runtime:NAME"
                )
            dtype = "int8" if m.group(1) == "int8" else "fp16"
            factor = int(m.group(2) or m.group(3) or 1)
            if factor < 1:
                raise ConfigError(f"--config {item!r}: the pool factor must be at least 1")
            if dtype == "fp16" and factor == 1:
                cfg = EXACT
            else:
                cfg = EvalConfig(
                    f"{'int8-' if dtype == 'int8' else ''}pool{factor}" if factor > 1 else "int8",
                    dtype=dtype,
                    pool_factor=factor,
                )
        if cfg not in out:
            out.append(cfg)
    if EXACT in out:
        out.remove(EXACT)
    return [EXACT, *out]


def parse_ks(spec: str | Sequence[int]) -> list[int]:
    """``"1,5,10"`` -> ``[1, 5, 10]`` (sorted, unique, positive).

    >>> parse_ks("10, 1,5,5")
    [1, 5, 10]
    """
    try:
        ks = sorted({int(x) for x in (spec.split(",") if isinstance(spec, str) else spec) if str(x).strip()})
    except ValueError:
        raise ConfigError(f"--k {spec!r}: expected comma-separated integers such as 1,5,10") from None
    if not ks or ks[0] < 1 or ks[-1] > 1000:
        raise ConfigError(f"--k {spec!r}: cutoffs must be between 1 and 1000")
    return ks


@dataclass
class ConfigResult:
    """Quality and speed of one configuration."""

    name: str
    metrics: dict[str, float]
    relative: dict[str, float | None]  # metric / exact's metric (None where exact's is 0)
    agreement_at_10: float  # mean share of exact's top 10 that this configuration also returns in its top 10
    build_seconds: float
    build_pages_per_s: float
    latency_ms_p50: float
    latency_ms_p99: float
    index_mb: float | None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Everything ``colsmol eval`` prints and writes with ``--out``."""

    dataset: dict[str, Any]
    model: str
    device: str
    ks: list[int]
    pages: int
    queries: int
    tokens_per_page: float
    embed_seconds: float
    embed_pages_per_s: float
    query_encode_ms_p50: float
    query_encode_ms_p99: float
    configs: list[ConfigResult]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    #: What ran the encoder's vision tower for ``exact`` and the index configurations (a CPU runtime), if known.
    encoder_runtime: str | None = None

    @property
    def metric_names(self) -> list[str]:
        return metric_names(self.ks)

    def config(self, name: str) -> ConfigResult:
        for c in self.configs:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metric_names"] = self.metric_names
        return d


def _percentile_ms(seconds: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q) * 1000.0) if seconds else 0.0


def _embed_corpus(
    dataset: EvalDataset, encoder: Encoder, chunk: int, progress: Progress | None
) -> tuple[list[np.ndarray], float]:
    """Page vectors in corpus order; images are decoded ``chunk`` at a time so the corpus never sits in memory."""
    vectors: list[np.ndarray] = []
    n = len(dataset.corpus)
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        pages = dataset.corpus[start : start + chunk]
        images = [p.image() for p in pages]
        out = encoder.embed_pages(images)
        if len(out) != len(pages):
            raise RuntimeError(f"the encoder returned {len(out)} embeddings for {len(pages)} pages")
        vectors.extend(np.asarray(v, dtype=np.float32) for v in out)
        if progress is not None:
            progress("embed pages", min(start + chunk, n), n)
    return vectors, time.perf_counter() - t0


def _embed_queries(
    texts: list[str], encoder: Encoder, progress: Progress | None
) -> tuple[list[np.ndarray], list[float]]:
    """One query at a time, as a user's search would run, so that the per-query latency is real."""
    out: list[np.ndarray] = []
    times: list[float] = []
    for i, text in enumerate(texts):
        t = time.perf_counter()
        out.append(np.asarray(encoder.embed_queries([text])[0], dtype=np.float32))
        times.append(time.perf_counter() - t)
        if progress is not None:
            progress("embed queries", i + 1, len(texts))
    return out, times


def _search_all(
    search: Callable[[np.ndarray], list[str]], qvecs: list[np.ndarray], progress: Progress | None, stage: str
) -> tuple[list[list[str]], list[float]]:
    if qvecs:
        search(qvecs[0])  # warm-up (kernel selection, allocator), not timed
    ranked: list[list[str]] = []
    times: list[float] = []
    for i, q in enumerate(qvecs):
        t = time.perf_counter()
        ranked.append(search(q))
        times.append(time.perf_counter() - t)
        if progress is not None:
            progress(stage, i + 1, len(qvecs))
    return ranked, times


def _agreement(ranked: list[list[str]], reference: list[list[str]], k: int = 10) -> float:
    shares = [len(set(r[:k]) & set(ref[:k])) / len(ref[:k]) for r, ref in zip(ranked, reference, strict=True) if ref]
    return float(np.mean(shares)) if shares else 0.0


def run_eval(
    dataset: EvalDataset,
    encoder: Encoder,
    configs: str | Sequence[str] | Sequence[EvalConfig] = "exact",
    ks: str | Sequence[int] = (1, 5, 10),
    workdir: str | Path | None = None,
    *,
    device: str = "auto",
    candidates: int = 200,
    prefetch_pool_factor: int = 16,
    embed_chunk: int = 64,
    progress: Progress | None = None,
    encoder_for_runtime: Callable[[str], Encoder] | None = None,
    modes: Sequence[str] = ("visual",),
    page_texts: Sequence[str] | None = None,
) -> EvalReport:
    """Evaluate ``encoder`` on ``dataset`` under each configuration; see the module docstring.

    ``encoder`` needs ``embed_pages(images)`` and ``embed_queries(texts)`` (a
    :class:`~indexer.models.encoder.ColSmolEncoder`).
    ``device`` is where the token indexes live and MaxSim runs. ``workdir`` keeps the two-stage Qdrant shard (in a
    fresh ``eval-*`` collection) instead of a temporary directory that is removed afterwards.
    ``encoder_for_runtime(name)`` builds the encoder of a ``runtime:NAME`` configuration (closed after use).
    ``modes`` adds the search modes ``text`` and ``hybrid`` (:mod:`retriever.evaluation.modes`) as configurations
    ``mode:text`` and ``mode:hybrid``, over ``page_texts`` (one per corpus page; OCR'd when None).
    """
    import torch

    from indexer.models.device import resolve_device
    from indexer.store.base import page_point_id
    from retriever.token_index import TokenIndex

    cfgs: list[EvalConfig]
    if not isinstance(configs, str) and configs and all(isinstance(c, EvalConfig) for c in configs):
        cfgs = [c for c in configs if isinstance(c, EvalConfig)]
        if EXACT not in cfgs:
            cfgs.insert(0, EXACT)
    else:
        cfgs = parse_configs([c for c in configs if isinstance(c, str)] if not isinstance(configs, str) else configs)
    ks = parse_ks(ks)
    depth = max(ks[-1], 10)
    dev = resolve_device(device)

    vectors, embed_s = _embed_corpus(dataset, encoder, max(1, embed_chunk), progress)
    ids = [p.id for p in dataset.corpus]
    pids = [page_point_id(f"eval:{cid}", 1) for cid in ids]
    cid_of = dict(zip(pids, ids, strict=True))
    payloads = [{"doc_id": cid, "source": cid, "file_name": cid, "page_number": 1} for cid in ids]
    qids = list(dataset.queries)
    qvecs, qtimes = _embed_queries([dataset.queries[q] for q in qids], encoder, progress)

    def build_index(cfg: EvalConfig, vectors: list[np.ndarray] = vectors) -> tuple[TokenIndex, float]:
        t = time.perf_counter()
        idx = TokenIndex(device=dev, dtype=cfg.dtype, pool_factor=cfg.pool_factor)
        for s in range(0, len(pids), 256):
            idx.add(pids[s : s + 256], vectors[s : s + 256], payloads[s : s + 256])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return idx, time.perf_counter() - t

    results: list[ConfigResult] = []
    exact_ranked: list[list[str]] = []
    exact_metrics: dict[str, float] = {}
    tmp: str | None = None
    try:
        for cfg in cfgs:
            params: dict[str, Any] = {"dtype": cfg.dtype, "pool_factor": cfg.pool_factor}
            if cfg.kind == "runtime":
                if encoder_for_runtime is None:
                    raise ConfigError(f"--config {cfg.name}: this evaluation cannot build encoders for other runtimes")
                other = encoder_for_runtime(cfg.runtime)
                try:
                    rt_vectors, rt_embed_s = _embed_corpus(dataset, other, max(1, embed_chunk), progress)
                    rt_queries, _ = _embed_queries([dataset.queries[q] for q in qids], other, progress)
                    choice = getattr(other, "runtime_choice", None)
                    params = {"runtime": cfg.runtime, "ran": getattr(choice, "name", cfg.runtime)}
                finally:
                    close = getattr(other, "close", None)
                    if callable(close):
                        close()
                idx, build_s = build_index(EXACT, rt_vectors)
                build_s += rt_embed_s  # the runtime's cost is its embedding time

                def search_rt(q: np.ndarray, idx: TokenIndex = idx) -> list[str]:
                    return [cid_of[h.point_id] for h in idx.score([q], k=depth)[0]]

                index_mb: float | None = idx.nbytes() / 2**20
                ranked, times = _search_all(search_rt, rt_queries, progress, f"search {cfg.name}")
            elif cfg.kind in ("tiered", "tier1"):
                from retriever.pooling import prefetch_vectors
                from retriever.tiered_index import TieredIndex

                t = time.perf_counter()
                tiers = TieredIndex(None, device=dev, candidates=candidates, coarse_factor=prefetch_pool_factor)
                try:
                    for s in range(0, len(pids), 256):
                        chunk = vectors[s : s + 256]
                        pooled = [prefetch_vectors(v, prefetch_pool_factor) for v in chunk]
                        tiers.add(pids[s : s + 256], chunk, payloads[s : s + 256], pooled=pooled)
                    build_s = time.perf_counter() - t
                    rank = tiers.score if cfg.kind == "tiered" else super(TieredIndex, tiers).score

                    def search_tiers(q: np.ndarray, rank: Callable[..., Any] = rank) -> list[str]:
                        return [cid_of[h.point_id] for h in rank([q], k=depth)[0]]

                    ranked, times = _search_all(search_tiers, qvecs, progress, f"search {cfg.name}")
                    index_mb = tiers.nbytes() / 2**20  # resident: tier 1 (the token file is on disk)
                    params = {"candidates": candidates, "prefetch_pool_factor": prefetch_pool_factor}
                finally:
                    tiers.close()
            elif cfg.kind == "index":
                idx, build_s = build_index(cfg)

                def search_index(q: np.ndarray, idx: TokenIndex = idx) -> list[str]:
                    return [cid_of[h.point_id] for h in idx.score([q], k=depth)[0]]

                index_mb = idx.nbytes() / 2**20
                ranked, times = _search_all(search_index, qvecs, progress, f"search {cfg.name}")
            else:
                from indexer.store.edge import EdgeStore
                from indexer.types import PageRecord
                from retriever.pooling import prefetch_vectors
                from retriever.search import TwoStageSearcher

                if workdir is None:
                    tmp = tempfile.mkdtemp(prefix="colsmol-eval-")
                    qdrant_dir = Path(tmp) / "qdrant"
                else:
                    qdrant_dir = Path(workdir).expanduser() / "qdrant"
                collection = f"eval-{uuid.uuid4().hex[:8]}"
                params = {
                    "candidates": candidates,
                    "prefetch_pool_factor": prefetch_pool_factor,
                    "qdrant": str(qdrant_dir / collection),
                }
                t = time.perf_counter()
                store = EdgeStore(qdrant_dir, collection)
                try:
                    for s in range(0, len(pids), 64):
                        store.upsert_pages(
                            [
                                PageRecord(pid, v, pay, prefetch_vectors(v, prefetch_pool_factor))
                                for pid, v, pay in zip(
                                    pids[s : s + 64], vectors[s : s + 64], payloads[s : s + 64], strict=True
                                )
                            ]
                        )
                    build_s = time.perf_counter() - t
                    # As production builds it: the pooled prefetch vectors ingest writes, the candidates
                    # rescored on their tokens inside the store.
                    searcher = TwoStageSearcher(store, candidates=candidates)

                    def search_two(q: np.ndarray, searcher: TwoStageSearcher = searcher) -> list[str]:
                        return [cid_of[h.point_id] for h in searcher.search_vectors([q], k=depth)[0]]

                    ranked, times = _search_all(search_two, qvecs, progress, f"search {cfg.name}")
                finally:
                    store.close()
                index_mb = None
            run = dict(zip(qids, ranked, strict=True))
            metrics = evaluate_run(run, dataset.qrels, ks)
            if cfg == EXACT:
                exact_ranked, exact_metrics = ranked, metrics
            relative = {m: (v / exact_metrics[m] if exact_metrics.get(m) else None) for m, v in metrics.items()}
            results.append(
                ConfigResult(
                    name=cfg.name,
                    metrics=metrics,
                    relative=relative,
                    agreement_at_10=_agreement(ranked, exact_ranked),
                    build_seconds=build_s,
                    build_pages_per_s=len(pids) / build_s if build_s > 0 else float("inf"),
                    latency_ms_p50=_percentile_ms(times, 50),
                    latency_ms_p99=_percentile_ms(times, 99),
                    index_mb=index_mb,
                    params=params,
                )
            )
            logger.info("eval %s: %s", cfg.name, {m: round(v, 4) for m, v in metrics.items()})
        extra = [m for m in modes if m != "visual"]
        if extra:
            from retriever.evaluation.modes import page_texts as ocr_texts
            from retriever.evaluation.modes import rank_by_mode

            texts = list(page_texts) if page_texts is not None else ocr_texts(dataset, progress)
            queries = [dataset.queries[q] for q in qids]
            by_mode = rank_by_mode(extra, pids, vectors, payloads, texts, queries, qvecs, depth, str(dev), progress)
            for mode, (pid_rows, times, build_s) in by_mode.items():
                ranked = [[cid_of[p] for p in row] for row in pid_rows]
                metrics = evaluate_run(dict(zip(qids, ranked, strict=True)), dataset.qrels, ks)
                relative = {m: (v / exact_metrics[m] if exact_metrics.get(m) else None) for m, v in metrics.items()}
                results.append(
                    ConfigResult(
                        name=f"mode:{mode}",
                        metrics=metrics,
                        relative=relative,
                        agreement_at_10=_agreement(ranked, exact_ranked),
                        build_seconds=build_s,
                        build_pages_per_s=len(pids) / build_s if build_s > 0 else float("inf"),
                        latency_ms_p50=_percentile_ms(times, 50),
                        latency_ms_p99=_percentile_ms(times, 99),
                        index_mb=None,
                        params={"mode": mode, "text": "given" if page_texts is not None else "ocr"},
                    )
                )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    n_tokens = sum(int(v.shape[0]) for v in vectors)
    return EvalReport(
        dataset=dataset.summary(),
        model=str(getattr(encoder, "model_id", type(encoder).__name__)),
        device=str(dev),
        ks=ks,
        pages=len(vectors),
        queries=len(qids),
        tokens_per_page=n_tokens / len(vectors) if vectors else 0.0,
        embed_seconds=embed_s,
        embed_pages_per_s=len(vectors) / embed_s if embed_s > 0 else float("inf"),
        query_encode_ms_p50=_percentile_ms(qtimes, 50),
        query_encode_ms_p99=_percentile_ms(qtimes, 99),
        configs=results,
        encoder_runtime=getattr(getattr(encoder, "runtime_choice", None), "name", None),
    )
