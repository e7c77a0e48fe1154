"""Retrieval quality evaluation: BEIR/ViDoRe dataset loaders, IR metrics and the ``colsmol eval`` runner.

- :mod:`retriever.evaluation.metrics`: pure nDCG@k / recall@k / MRR@k (pytrec_eval definitions);
- :mod:`retriever.evaluation.datasets`: folder layouts (jsonl, parquet, tsv, image folders) and ViDoRe HF parquet;
- :mod:`retriever.evaluation.runner`: embed the corpus once, score it under several index configurations.

Imports are lazy: ``from retriever.evaluation import ndcg_at_k`` does not pull in torch.
"""

from __future__ import annotations

from typing import Any

_WHERE = {
    "ndcg_at_k": "retriever.evaluation.metrics",
    "recall_at_k": "retriever.evaluation.metrics",
    "mrr_at_k": "retriever.evaluation.metrics",
    "evaluate_run": "retriever.evaluation.metrics",
    "DatasetError": "retriever.evaluation.datasets",
    "EvalDataset": "retriever.evaluation.datasets",
    "load_dataset": "retriever.evaluation.datasets",
    "ConfigResult": "retriever.evaluation.runner",
    "EvalReport": "retriever.evaluation.runner",
    "parse_configs": "retriever.evaluation.runner",
    "run_eval": "retriever.evaluation.runner",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'retriever.evaluation' has no attribute {name!r}")
