"""Exact MaxSim on the CPU: a compiled AVX2 kernel (``retriever._cpu_maxsim``) when it is built and the CPU can
run it, else the cache-blocked torch path (:func:`retriever.maxsim.maxsim_torch`). Same contract and numbers as
:func:`retriever.maxsim.maxsim`: ``(Q, P)`` float32.

Why a compiled kernel: measured on a 2-core AVX2 + FMA machine (2,000 pages x 1,000 tokens x 128 d, fp16, one
query of 20 tokens, each comparison side by side in one run, 2026-11-23; ``bench/search.py --device cpu`` gives the
full table):

- the best torch/BLAS shape, a tall ``block.float() @ q.T`` over 8-page fp16 blocks plus a per-page max, took
  170 ms, about maxsim-cpu's 195 ms (PyPI, libxsmm, fp32 pages): MKL's sgemm reached only 40-50 GFLOP/s a core on
  these skinny shapes, and the similarity block, the fp32 copy of the pages and the max are three passes;
- this kernel: 64-72 ms for one query against maxsim-cpu's 199-236 ms (10,000 pages: 314-335 ms against 969-1,040
  ms), and 46-48 ms per query in a batch of 16 (about 220 GFLOP/s; one core alone 109 GFLOP/s). Prefetching the
  next 32 tokens while the current ones are multiplied took one query from 83 to 69 ms; the size of the converted
  chunk (16, 32 or 64 tokens) made no difference on one thread.

How it works (see the .cpp): query rows sit in vector lanes, ``qT (n_vec, dim, 8)``; the page is converted to fp32
32 tokens at a time into an L1 buffer (int8 dequantized with its scale on the way) and multiplied with
broadcast token components, keeping a lane-wise running max per query row; pages are shared between threads
(``torch.get_num_threads()``) a few at a time. The full similarity matrix is never written: only ``(Q, P)`` scores
leave, and top-k over them is a plain ``torch.topk`` (0.03 ms for one query over 10,000 pages, so no fused top-k).

By hand (dim 2 takes the torch path, the kernel needs a multiple of 8; tests/test_maxsim_cpu.py runs it on dim 8):

>>> import torch
>>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])                  # one query, 2 tokens, dim 2
>>> t = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])      # pages: [t0, t1] and [t2]
>>> maxsim_cpu(q, t, torch.tensor([0, 2, 3]))                   # page 0: max(1, .6) + max(0, .8); page 1: 0 + 1
tensor([[1.8000, 1.0000]])
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

_KINDS = {torch.float16: 0, torch.int8: 1, torch.float32: 2}
_EXT: dict[str, Any] = {}


def _extension() -> Any:
    """The compiled module when it imports and this CPU has AVX2/FMA/F16C, else None (checked once)."""
    if "ext" not in _EXT:
        ext = None
        try:
            ext = importlib.import_module("retriever._cpu_maxsim")
            if not ext.cpu_supported():
                logger.info("CPU MaxSim kernel: this CPU lacks AVX2/FMA/F16C; using the torch path")
                ext = None
        except ImportError:
            logger.info("CPU MaxSim kernel not built (no compiler at install?); using the torch path")
        _EXT["ext"] = ext
    return _EXT["ext"]


def kernel_available() -> bool:
    """True when the compiled CPU kernel will be used for fp16/int8/fp32 tokens."""
    return _extension() is not None


def pack_query_rows(queries: torch.Tensor, query_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``queries (Q, n_q, dim)`` -> ``qT (n_vec, dim, 8)`` float32 and ``qoff (Q + 1,)`` int64.

    Only the real (masked-in) rows are kept, query after query, 8 to a vector, dimension-major: lane ``i`` of
    ``qT[v, d]`` is component ``d`` of packed row ``8 v + i``. Query ``q`` owns rows ``qoff[q]:qoff[q + 1]``.
    """
    if queries.ndim == 2:
        queries = queries.unsqueeze(0)
    Q, nq, dim = queries.shape
    q = queries.detach().to(device="cpu", dtype=torch.float32)
    if query_mask is None:
        rows = q.reshape(Q * nq, dim)
        counts = torch.full((Q,), nq, dtype=torch.int64)
    else:
        m = torch.as_tensor(query_mask, dtype=torch.bool).cpu().reshape(Q, nq)
        rows = q[m]
        counts = m.sum(1)
    qoff = torch.zeros(Q + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=qoff[1:])
    n_vec = (rows.shape[0] + 7) // 8
    padded = torch.zeros(n_vec * 8, dim, dtype=torch.float32)
    padded[: rows.shape[0]] = rows
    return padded.view(n_vec, 8, dim).transpose(1, 2).contiguous(), qoff


def maxsim_cpu(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    offsets: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    n_threads: int | None = None,
    rows: np.ndarray | None = None,
) -> torch.Tensor:
    """MaxSim of ``queries (Q, n_q, dim)`` against packed CPU ``tokens (T, dim)`` / ``offsets (P + 1,)`` -> ``(Q, P)``.

    ``tokens`` fp16, int8 (with ``scales (T,)``) or fp32; other dtypes, or no usable kernel, take the torch path.
    ``n_threads`` defaults to ``torch.get_num_threads()``. ``rows`` (page indexes) scores those pages only, in that
    order: ``(Q, len(rows))``, without copying their tokens.
    """
    ext = _extension()
    dim = tokens.shape[-1]
    if ext is None or tokens.dtype not in _KINDS or dim % 8 or tokens.device.type != "cpu":
        from retriever.maxsim import maxsim_torch

        if rows is not None:
            tokens, offsets, scales = _gather_pages(tokens, offsets, scales, rows)
        return maxsim_torch(queries, tokens, offsets, query_mask, scales)
    if tokens.dtype == torch.int8 and scales is None:
        raise ValueError("int8 tokens need scales")
    qT, qoff = pack_query_rows(queries, query_mask)
    off = offsets.detach().to(device="cpu", dtype=torch.int64).contiguous()
    P, Q = off.numel() - 1, qoff.numel() - 1
    some = np.ascontiguousarray(rows, dtype=np.int64) if rows is not None else None
    out = torch.zeros(Q, max(P, 0) if some is None else len(some), dtype=torch.float32)
    if P <= 0 or Q == 0 or qT.shape[0] == 0 or out.shape[1] == 0:  # no pages, or only empty queries (score 0)
        if P > 0 and bool((off[1:] <= off[:-1]).any()):
            raise ValueError("maxsim_cpu: every page needs at least one token")
        return out
    sc = b"" if scales is None or tokens.dtype != torch.int8 else _np(scales.detach().float())
    ext.maxsim(
        _np(tokens.detach()),
        _KINDS[tokens.dtype],
        dim,
        sc,
        off.numpy(),
        qT.numpy(),
        qoff.numpy(),
        out.numpy(),
        int(n_threads or torch.get_num_threads()),
        *(() if some is None else (some,)),
    )
    return out


def _gather_pages(
    tokens: torch.Tensor, offsets: torch.Tensor, scales: torch.Tensor | None, rows: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The tokens of pages ``rows`` packed back to back (the torch path's form of ``rows``)."""
    off = offsets.detach().cpu().numpy()
    r = np.asarray(rows, dtype=np.int64)
    lengths = off[r + 1] - off[r]
    idx = torch.from_numpy(np.concatenate([np.arange(off[i], off[i + 1]) for i in r]) if len(r) else np.zeros(0, int))
    new_off = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    idx = idx.to(tokens.device)
    return tokens[idx], new_off.to(offsets.device), None if scales is None else scales[idx]


def sign_codes(vectors: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(n, 128)`` vectors (any real dtype) -> their sign bits ``(n, 2)`` uint64: bit set where a component >= 0.
    The binary sketch of :func:`hamming_maxsim` (16 bytes a vector)."""
    a = vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    if a.ndim != 2 or a.shape[1] != 128:
        raise ValueError(f"sign_codes needs (n, 128) vectors, got {a.shape}")
    return np.packbits(a >= 0, axis=1).view(np.uint64)


def hamming_maxsim(
    codes: np.ndarray,
    offsets: np.ndarray,
    queries: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    n_threads: int | None = None,
) -> torch.Tensor:
    """MaxSim over sign bits: ``(Q, P)`` float32 where page ``p`` (``codes[offsets[p]:offsets[p + 1]]`` from
    :func:`sign_codes`) scores, for each query, the sum over its rows of the best ``+-1`` dot product
    (``128 - 2 * popcount(a ^ b)``) with the page's vectors. ``queries (Q, n_q, 128)`` float, signs taken here.

    The compiled kernel when available, else numpy (``np.bitwise_count``; same numbers, slower).
    """
    if queries.ndim == 2:
        queries = queries.unsqueeze(0)
    Q, nq, _ = queries.shape
    m = torch.ones(Q, nq, dtype=torch.bool) if query_mask is None else torch.as_tensor(query_mask).bool().cpu()
    q = queries.detach().float().cpu()
    qcodes = np.ascontiguousarray(sign_codes(q[m]))
    qoff = np.zeros(Q + 1, dtype=np.int64)
    np.cumsum(m.sum(1).numpy(), out=qoff[1:])
    off = np.ascontiguousarray(offsets, dtype=np.int64)
    P = len(off) - 1
    out = np.zeros((Q, max(P, 0)), dtype=np.float32)
    ext = _extension()
    if ext is not None and hasattr(ext, "hamming"):
        ext.hamming(np.ascontiguousarray(codes), off, qcodes, qoff, out, int(n_threads or torch.get_num_threads()))
        return torch.from_numpy(out)
    for p in range(P):  # the reference form: (tokens, rows) distances, min per row, summed per query
        c = codes[off[p] : off[p + 1]]
        h = np.bitwise_count(c[:, None, :] ^ qcodes[None, :, :]).sum(-1, dtype=np.int64)
        best = 128 - 2 * h.min(0) if len(c) else np.full(len(qcodes), -128)
        for qi in range(Q):
            out[qi, p] = best[qoff[qi] : qoff[qi + 1]].sum()
    return torch.from_numpy(out)


def _np(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous host array sharing memory with ``t`` when it already is one (the index's case)."""
    return t.contiguous().numpy()
