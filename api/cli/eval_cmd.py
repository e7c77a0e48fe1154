"""``colsmol eval``: retrieval quality (nDCG@k, recall@k, MRR@10) and speed on a labelled dataset.

Registered in :mod:`api.cli.app` with ``app.command("eval")(eval_command)``. Ephemeral: the corpus is embedded into
in-memory token indexes (and, for ``two-stage``, a temporary Qdrant Edge shard); the user's collection is never
opened. See docs/eval.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from retriever.evaluation.runner import EvalReport

EVAL_EPILOG = (
    "DATASET is a folder with corpus, queries and qrels (jsonl, parquet or tsv; or a corpus/ folder of images), "
    "or a local copy of a ViDoRe v1 dataset in the Hugging Face parquet layout (columns query, image, "
    "image_filename). Exit codes: 0 done; 1 the dataset or a model could not be read; 2 usage error."
)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _short(metric: str) -> str:
    """``ndcg@5`` -> ``nDCG@5``, ``recall@5`` -> ``R@5``, ``mrr@10`` -> ``MRR@10`` (narrow table headers)."""
    name, _, k = metric.partition("@")
    return {"ndcg": "nDCG", "recall": "R", "mrr": "MRR"}.get(name, name) + "@" + k


def _print_table(report: EvalReport) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    d = report.dataset
    console.print(
        f"[bold]{d['name']}[/] ({d['layout']}): {report.pages} pages, {report.queries} queries; model "
        f"{report.model} on {report.device}"
        + (f" (vision tower: {report.encoder_runtime})" if report.encoder_runtime else "")
        + "\n"
        f"embedding: {report.embed_pages_per_s:.1f} pages/s ({report.tokens_per_page:.0f} tokens/page); "
        f"query encode p50 {report.query_encode_ms_p50:.1f} ms, p99 {report.query_encode_ms_p99:.1f} ms\n"
        "R@k = recall@k; agree@10 = share of exact's top 10 also in this configuration's top 10"
    )
    names = report.metric_names
    quality = Table(
        title="retrieval quality (below: % of exact)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    quality.add_column("config", no_wrap=True)
    for m in names:
        quality.add_column(_short(m), justify="right", no_wrap=True)
    quality.add_column("agree@10", justify="right", no_wrap=True)
    for c in report.configs:
        cells = []
        for m in names:
            rel = c.relative.get(m)
            rel_text = "-" if rel is None else f"{100 * rel:.1f}"
            cells.append(_fmt(c.metrics[m]) + ("" if c.name == "exact" else f"\n[dim]{rel_text}[/]"))
        quality.add_row(c.name, *cells, _fmt(c.agreement_at_10))
    console.print(quality)
    speed = Table(title="speed (search: one query at a time, after query encoding)", box=box.SIMPLE_HEAD)
    for col in ("config", "search p50 ms", "search p99 ms", "index build pages/s", "index MB"):
        speed.add_column(col, justify="left" if col == "config" else "right")
    for c in report.configs:
        speed.add_row(
            c.name,
            _fmt(c.latency_ms_p50, 2),
            _fmt(c.latency_ms_p99, 2),
            _fmt(c.build_pages_per_s, 1),
            _fmt(c.index_mb, 1),
        )
    console.print(speed)


def eval_command(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (BEIR-style or ViDoRe v1 parquet).")],
    k: Annotated[str, typer.Option("--k", help="Cutoffs for nDCG@k and recall@k, comma-separated.")] = "1,5,10",
    config: Annotated[
        str,
        typer.Option(
            "--config",
            help="Configurations, comma-separated: exact, int8, pool2, pool3 (any poolN), int8-poolN, two-stage, "
            "tiered (pooled vectors propose --candidates pages, exact MaxSim ranks them), tier1 (tiered's first tier "
            "alone), runtime:NAME (the corpus re-embedded with encoder runtime NAME: fp32, int8, bf16, openvino, "
            "openvino-bf16). exact always runs: the others are reported relative to it.",
        ),
    ] = "exact",
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="Search modes, comma-separated: visual (the configurations above), text (BM25 over each page's "
            "OCR text; needs Tesseract), hybrid (both, RRF-fused as colsmol search does). Reported as mode:NAME.",
        ),
    ] = "visual",
    max_queries: Annotated[
        int | None, typer.Option("--max-queries", help="Evaluate only the first N queries (whole corpus).")
    ] = None,
    candidates: Annotated[
        int, typer.Option("--candidates", help="two-stage and tiered: candidate pages per query.")
    ] = 200,
    prefetch_pool: Annotated[
        int, typer.Option("--prefetch-pool", help="two-stage: pool factor of the prefetch vectors.")
    ] = 16,
    split: Annotated[str, typer.Option("--split", help="Split preferred where a folder holds several.")] = "test",
    model: Annotated[
        str | None, typer.Option("--model", help="Encoder hub id or local dir (env COLSMOL_ENCODER_MODEL).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Pages per encoder batch.")] = None,
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Keep the two-stage Qdrant shard here (default: a temporary dir, removed)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the full report as JSON to this file.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto|cuda|cpu|mps (env COLSMOL_DEVICE).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
) -> None:
    """Measure retrieval quality (nDCG@k, recall@k, MRR@10) and speed on a labelled dataset."""
    from api.cli.common import progress_bar, settings_from
    from indexer.errors import InvalidRequest
    from indexer.models.encoder import ColSmolEncoder
    from retriever.evaluation.datasets import load_dataset
    from retriever.evaluation.runner import parse_configs, parse_ks, run_eval

    s = settings_from(device=device, page_batch_size=batch_size, encoder_model=model)
    from retriever.evaluation.modes import parse_modes

    cfgs = parse_configs(config)  # usage errors before any model loads
    modes = parse_modes(mode)
    ks = parse_ks(k)
    if max_queries is not None and max_queries < 1:
        raise InvalidRequest("--max-queries must be at least 1")
    if candidates < 1 or prefetch_pool < 1:
        raise InvalidRequest("--candidates and --prefetch-pool must be at least 1")
    data = load_dataset(dataset, split=split).head(max_queries)
    def make_encoder(runtime: str) -> ColSmolEncoder:
        return ColSmolEncoder.from_settings(s, runtime=runtime)

    encoder = make_encoder(s.encoder_runtime)
    kwargs: dict[str, Any] = {
        "device": str(encoder.device),
        "candidates": candidates,
        "prefetch_pool_factor": prefetch_pool,
        "embed_chunk": max(4 * s.page_batch_size, 16),
        "encoder_for_runtime": lambda name: make_encoder(name).load(),
        "modes": modes,
    }
    try:
        if json_out or not sys.stderr.isatty():
            report = run_eval(data, encoder.load(), cfgs, ks, workdir, **kwargs)
        else:
            with progress_bar() as bar:
                tasks: dict[str, Any] = {}

                def on_progress(stage: str, done: int, total: int) -> None:
                    if stage not in tasks:
                        tasks[stage] = bar.add_task(stage, total=total)
                    bar.update(tasks[stage], completed=done)

                report = run_eval(data, encoder.load(), cfgs, ks, workdir, progress=on_progress, **kwargs)
    finally:
        encoder.close()
    payload = report.to_dict()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if json_out:
        typer.echo(json.dumps(payload, indent=2))
    else:
        _print_table(report)
        if out is not None:
            typer.echo(f"report written to {out}")


eval_command.__doc__ = (eval_command.__doc__ or "") + "\n\n" + EVAL_EPILOG
