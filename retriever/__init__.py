"""Pages out: MaxSim scoring kernels, the device-resident token index, and search (filters, two-stage).

Imports are lazy so ``import retriever`` does not pull in torch; ``from retriever import TokenIndex`` does.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Hit",
    "Region",
    "RegionFinder",
    "Searcher",
    "TokenIndex",
    "TwoStageSearcher",
    "maxsim",
    "maxsim_cpu",
    "maxsim_torch",
    "maxsim_triton",
    "pack",
    "pool_tokens",
    "quantize_int8",
    "topk",
]

_WHERE = {
    "Hit": "retriever.search",
    "Region": "retriever.regions",
    "RegionFinder": "retriever.regions",
    "Searcher": "retriever.search",
    "TwoStageSearcher": "retriever.search",
    "TokenIndex": "retriever.token_index",
    "maxsim": "retriever.maxsim",
    "maxsim_cpu": "retriever.cpu_maxsim",
    "maxsim_torch": "retriever.maxsim",
    "maxsim_triton": "retriever.maxsim",
    "pack": "retriever.maxsim",
    "quantize_int8": "retriever.maxsim",
    "topk": "retriever.maxsim",
    "pool_tokens": "retriever.pooling",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'retriever' has no attribute {name!r}")
