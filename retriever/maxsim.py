"""Late-interaction MaxSim scoring kernels over packed page multivectors.

Layout shared by every path:

- ``tokens``: every page's token vectors packed one after another, shape ``(T, dim)``;
  fp16/fp32, or int8 with a per-token fp32 ``scales`` vector of shape ``(T,)`` (symmetric quantization);
- ``offsets``: int64 ``(P + 1,)``, page ``p`` owns rows ``offsets[p]:offsets[p + 1]``;
- ``queries``: ``(Q, n_q, dim)`` padded, with a bool ``query_mask`` ``(Q, n_q)`` marking real tokens
  (or a list of ``(n_i, dim)`` arrays, padded by :func:`pad_queries`).

Score of query ``q`` against page ``p``: ``sum_i max_j <q_i, t_j>`` over the real query tokens ``i`` and the
page's tokens ``j``. Result: ``(Q, P)`` float32.

Three implementations give the same numbers:

- :func:`maxsim_torch`: the reference path (CPU and GPU). Pages are processed in chunks whose similarity
  block ``(Q * n_q, tokens in chunk)`` stays under a memory budget; on CUDA the block is gathered into a padded
  ``(Q * n_q, pages, max_len)`` view (padding = -inf) and reduced with ``amax``; on CPU the chunks are a few pages
  (the block stays in cache) and ``np.maximum.reduceat`` takes the per-page max directly.
- :func:`retriever.cpu_maxsim.maxsim_cpu`: the CPU default, a compiled AVX2 kernel that never writes the
  similarity block (falls back to :func:`maxsim_torch` where it is not built or the CPU lacks AVX2).
- :func:`maxsim_triton`: a fused CUDA kernel. One program handles one page x a block of queries with all
  their tokens: it streams the page's tokens tile by tile, keeps a running max per query token in registers
  and writes one score per (query, page); the full similarity matrix is never written. Query rows per program
  are capped (:data:`ROWS_PER_PROGRAM`; longer queries are scored in row groups), each compiled shape
  (:class:`TritonShape`) is checked once against the torch path and falls back alone, and :func:`warm_up`
  compiles the common shapes when an index starts on a GPU.
  Triton is imported lazily and only when CUDA is available, so CPU-only machines never touch it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

DIM = 128
_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------- packing


def pack(vectors: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate page multivectors, each ``(n_tokens, dim)``, into ``tokens (T, dim)`` and ``offsets (P + 1,)``."""
    tensors = [torch.as_tensor(v) for v in vectors]
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64)
    offsets = torch.zeros(len(tensors) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    if not tensors:
        return torch.empty(0, DIM), offsets
    return torch.cat(tensors, 0), offsets


def pad_queries(
    queries: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    query_mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize queries to ``(Q, n_q, dim)`` plus a bool mask ``(Q, n_q)``.

    Accepts one query ``(n_q, dim)``, a padded batch ``(Q, n_q, dim)`` (optional ``query_mask``), or a list of
    ``(n_i, dim)`` arrays. Padded positions are zeroed so they never contribute.
    """
    if isinstance(queries, (np.ndarray, torch.Tensor)):
        q = torch.as_tensor(queries)
        if q.ndim == 2:
            q = q.unsqueeze(0)
            if query_mask is not None and query_mask.ndim == 1:
                query_mask = query_mask.unsqueeze(0)
        if q.ndim != 3:
            raise ValueError(f"queries: expected (n_q, dim) or (Q, n_q, dim), got {tuple(q.shape)}")
        mask = (
            torch.ones(q.shape[:2], dtype=torch.bool)
            if query_mask is None
            else torch.as_tensor(query_mask, dtype=torch.bool).cpu()
        )
        q = q.to(device=device, dtype=dtype)
        mask = mask.to(device=q.device)
        q = q * mask.unsqueeze(-1).to(q.dtype)
        return q, mask
    qs = [torch.as_tensor(x) for x in queries]
    if not qs:
        raise ValueError("queries: empty list")
    n = max(x.shape[0] for x in qs)
    dim = qs[0].shape[1]
    out = torch.zeros(len(qs), n, dim, dtype=dtype)
    mask = torch.zeros(len(qs), n, dtype=torch.bool)
    for i, x in enumerate(qs):
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"query {i}: expected (n_q, {dim}), got {tuple(x.shape)}")
        out[i, : x.shape[0]] = x.to(dtype)
        mask[i, : x.shape[0]] = True
    return out.to(device), mask.to(device)


# --------------------------------------------------------------------------------------------------- int8


def quantize_int8(vectors: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric int8: ``vectors (n_tokens, dim)`` -> ``(int8 (n_tokens, dim), scales fp32 (n_tokens,))``.

    ``vectors ~= q.float() * scales[:, None]``; the max |component| of each token maps to 127.
    """
    v = torch.as_tensor(vectors).float()
    scales = v.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(v / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``(n_tokens, dim)`` int8 + ``(n_tokens,)`` scales -> float32 ``(n_tokens, dim)``."""
    return q.float() * scales.float()[:, None]


# --------------------------------------------------------------------------------------------------- torch path


def _compute_dtype(device: torch.device) -> torch.dtype:
    # CPU has no fast fp16 GEMM: upcast chunks to fp32 there. On CUDA, fp16 GEMM accumulates in fp32.
    return torch.float16 if device.type == "cuda" else torch.float32


def _chunks(offsets_cpu: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """Split pages ``[0, P)`` into consecutive ranges of at most ``max_tokens`` tokens (at least one page each)."""
    P = len(offsets_cpu) - 1
    ranges = []
    p = 0
    while p < P:
        limit = offsets_cpu[p] + max_tokens
        q = int(np.searchsorted(offsets_cpu, limit, side="right")) - 1
        q = max(q, p + 1)
        q = min(q, P)
        ranges.append((p, q))
        p = q
    return ranges


def maxsim_torch(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    offsets: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    max_chunk_bytes: int | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """Reference MaxSim: ``queries (Q, n_q, dim)`` vs packed ``tokens (T, dim)`` / ``offsets (P + 1,)`` -> ``(Q, P)``.

    ``query_mask (Q, n_q)`` marks real query tokens (default: all). ``scales (T,)`` is given for int8 tokens.
    Memory stays bounded: the similarity of at most ``max_chunk_bytes`` is materialized at a time (default 256 MiB
    on a GPU; 2 MiB on the CPU, where a block that stays in cache measured 2.5-4x faster than a 256 MiB one).
    ``method``: ``"segment"`` (per-page max of the ``(tokens, rows)`` block, the CPU default) or ``"pad"`` (padded
    gather + amax, the CUDA default).
    """
    device = tokens.device
    if max_chunk_bytes is None:
        max_chunk_bytes = (2 << 20) if device.type == "cpu" else (256 << 20)
    cdt = _compute_dtype(device)
    if queries.ndim == 2:
        queries = queries.unsqueeze(0)
    Q, nq, dim = queries.shape
    if query_mask is None:
        query_mask = torch.ones(Q, nq, dtype=torch.bool, device=device)
    query_mask = query_mask.to(device)
    qf = (queries.to(device=device, dtype=torch.float32) * query_mask.unsqueeze(-1)).to(cdt).reshape(Q * nq, dim)
    offsets_cpu = offsets.detach().cpu().numpy()
    P = len(offsets_cpu) - 1
    out = torch.empty(Q, P, dtype=torch.float32, device=device)
    if P == 0:
        return out
    lengths_all = np.diff(offsets_cpu)
    if (lengths_all <= 0).any():
        raise ValueError("maxsim_torch: every page needs at least one token")
    elt = 4 if cdt == torch.float32 else 2
    # similarity chunk (Q*nq, Tc) + its padded gather (about the same size again)
    max_tokens = max(1, max_chunk_bytes // (2 * elt * Q * nq))
    wmask = query_mask.to(torch.float32)
    for p0, p1 in _chunks(offsets_cpu, max_tokens):
        t0, t1 = int(offsets_cpu[p0]), int(offsets_cpu[p1])
        chunk = tokens[t0:t1].to(cdt)
        lengths = lengths_all[p0:p1]
        if method == "segment" or (method == "auto" and device.type == "cpu"):
            # CPU: (Tc, Q*nq) similarity reduced per page with segment_reduce (no padded copy)
            simt = chunk @ qf.T
            if scales is not None:
                simt = simt * scales[t0:t1].to(cdt)[:, None]
            if device.type == "cpu":  # reduceat measured 4x faster than segment_reduce on an 8-page block
                page_starts = offsets_cpu[p0:p1] - t0
                best = torch.from_numpy(np.maximum.reduceat(simt.numpy(), page_starts, axis=0))  # (Pc, Q*nq)
            else:
                seg_lengths = torch.from_numpy(lengths).to(device)
                best = torch.segment_reduce(simt, "max", lengths=seg_lengths, axis=0)
            best = best.T.reshape(Q, nq, p1 - p0)
            out[:, p0:p1] = (best * wmask[:, :, None]).sum(1)
            continue
        sim = qf @ chunk.T  # (Q*nq, Tc)
        if scales is not None:
            sim = sim * scales[t0:t1].to(device=device, dtype=cdt)[None, :]
        Lmax = int(lengths.max())
        Tc = t1 - t0
        if (lengths == Lmax).all():
            best = sim.view(Q * nq, p1 - p0, Lmax).amax(-1)
        else:
            # gather into a padded (Q*nq, pages, Lmax) view; padding points at an extra -inf column.
            starts = torch.as_tensor(offsets_cpu[p0:p1] - t0, device=device)
            lens = torch.as_tensor(lengths, device=device)
            ar = torch.arange(Lmax, device=device)
            idx = starts[:, None] + ar[None, :]
            idx = torch.where(ar[None, :] < lens[:, None], idx, torch.full_like(idx, Tc))
            sim = torch.cat([sim, torch.full((Q * nq, 1), _NEG_INF, dtype=sim.dtype, device=device)], 1)
            best = sim[:, idx.reshape(-1)].view(Q * nq, p1 - p0, Lmax).amax(-1)
        best = best.float().view(Q, nq, p1 - p0)
        out[:, p0:p1] = (best * wmask[:, :, None]).sum(1)
    return out


# --------------------------------------------------------------------------------------------------- triton path

_TRITON: dict[str, Any] = {}


def triton_available() -> bool:
    """True when CUDA is available and Triton imports (the fused kernel can run)."""
    if "ok" in _TRITON:
        return bool(_TRITON["ok"])
    ok = False
    if torch.cuda.is_available():
        try:
            _TRITON["kernel"] = _build_triton_kernel()
            ok = True
        except Exception as exc:  # noqa: BLE001 - any import/compile failure means: use the torch path
            logger.warning("Triton MaxSim kernel unavailable, using the torch path: %s", exc)
    _TRITON["ok"] = ok
    return ok


def _build_triton_kernel() -> Any:
    import triton
    import triton.language as tl

    # The page and query counts change with every index and batch: specializing on them (Triton does for ints equal
    # to 1 or divisible by 16) would compile again on a user's request what warm-up already compiled.
    @triton.jit(do_not_specialize=["n_queries", "n_pages"])
    def _maxsim_kernel(  # type: ignore[no-untyped-def]  # parameters are typed by triton.jit, not Python
        q_ptr,  # (Q, NQ, D) fp16, zero padded
        qmask_ptr,  # (Q, NQ) fp32, 1.0 for real tokens
        t_ptr,  # (T, D) fp16 or int8
        s_ptr,  # (T,) fp32 scales (int8 only)
        off_ptr,  # (P + 1,) int64
        out_ptr,  # (Q, P) fp32
        n_queries,
        n_pages,
        NQ: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_T: tl.constexpr,
        D: tl.constexpr,
        HAS_SCALE: tl.constexpr,
    ):
        # 1-D grid (a 2-D grid's y axis stops at 65,535 pages): the query block varies fastest, so the programs
        # that read the same page run together and the page's later reads hit L2.
        pid = tl.program_id(0)
        n_qb = tl.cdiv(n_queries, BLOCK_Q)
        pid_q = pid % n_qb
        pid_p = pid // n_qb
        R: tl.constexpr = BLOCK_Q * NQ
        rows = tl.arange(0, R)
        q_idx = pid_q * BLOCK_Q + rows // NQ
        row_ok = q_idx < n_queries
        q_rows = q_idx * NQ + rows % NQ
        dims = tl.arange(0, D)
        q = tl.load(q_ptr + q_rows[:, None] * D + dims[None, :], mask=row_ok[:, None], other=0.0)
        qm = tl.load(qmask_ptr + q_rows, mask=row_ok, other=0.0)
        start = tl.load(off_ptr + pid_p)
        end = tl.load(off_ptr + pid_p + 1)
        running = tl.full((R,), float("-inf"), tl.float32)
        n_tiles = ((end - start + BLOCK_T - 1) // BLOCK_T).to(tl.int32)
        for i in range(0, n_tiles):
            cols = start + i * BLOCK_T + tl.arange(0, BLOCK_T)  # int64: T * D can exceed 2**31
            cmask = cols < end
            t = tl.load(t_ptr + cols[:, None] * D + dims[None, :], mask=cmask[:, None], other=0)
            if HAS_SCALE:
                t = t.to(tl.float16)
            s = tl.dot(q, tl.trans(t))  # (R, BLOCK_T) fp32 accumulate
            if HAS_SCALE:
                sc = tl.load(s_ptr + cols, mask=cmask, other=0.0)
                s = s * sc[None, :]
            s = tl.where(cmask[None, :], s, float("-inf"))
            running = tl.maximum(running, tl.max(s, axis=1))
        contrib = tl.where(qm > 0, running, 0.0)
        per_q = tl.sum(tl.reshape(contrib, (BLOCK_Q, NQ)), axis=1)
        qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        tl.store(out_ptr + qs.to(tl.int64) * n_pages + pid_p, per_q, mask=qs < n_queries)

    return _maxsim_kernel


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


#: Query rows (tokens of the queries in one block) a program holds in registers at most. A longer query is cut into
#: groups of rows scored apart and summed: MaxSim sums per-token maxima, so the split changes nothing.
ROWS_PER_PROGRAM = 128


@dataclass(frozen=True)
class TritonShape:
    """What a fused-kernel compile depends on: query ``rows`` per group (a power of two, 16 to the cap), queries per
    program ``block_q``, page tokens per tile ``block_t``, int8 tokens or fp16, ``num_warps``."""

    rows: int
    block_q: int
    block_t: int
    int8: bool
    num_warps: int

    @staticmethod
    def of(
        n_queries: int,
        n_query_tokens: int,
        int8: bool,
        block_t: int = 64,
        rows_per_program: int = ROWS_PER_PROGRAM,
        num_warps: int = 4,
    ) -> TritonShape:
        """The shape for ``n_queries`` queries of ``n_query_tokens`` (padded) tokens.

        >>> TritonShape.of(1, 20, False).rows, TritonShape.of(1, 300, False).rows, TritonShape.of(8, 20, False).block_q
        (32, 128, 4)
        """
        cap = max(16, 1 << (max(1, rows_per_program).bit_length() - 1))  # a power of two, at least 16
        rows = min(max(16, _next_pow2(n_query_tokens)), cap)
        groups = -(-n_query_tokens // rows)
        block_q = max(1, min(_next_pow2(n_queries * groups), cap // rows))
        return TritonShape(rows, block_q, block_t, int8, num_warps)


def _launch(kernel: Any, grid: tuple[int], args: tuple[Any, ...], shape: TritonShape, dim: int) -> None:
    """Run the compiled (or interpreted) kernel; the one place a launch happens."""
    kernel[grid](
        *args,
        NQ=shape.rows,
        BLOCK_Q=shape.block_q,
        BLOCK_T=shape.block_t,
        D=dim,
        HAS_SCALE=shape.int8,
        num_warps=shape.num_warps,
    )


def maxsim_triton(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    offsets: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    block_t: int = 64,
    rows_per_program: int = ROWS_PER_PROGRAM,
    num_warps: int = 4,
    kernel: Any = None,
) -> torch.Tensor:
    """Fused MaxSim (Triton): same contract and result as :func:`maxsim_torch`, ``(Q, P)`` float32.

    ``tokens (T, dim)`` fp16 (or int8 with ``scales (T,)``) and ``offsets (P + 1,)`` int64 on one CUDA device.
    Queries longer than ``rows_per_program`` tokens are scored in groups of rows (:class:`TritonShape`).
    ``kernel`` is for tests (e.g. Triton's interpreter on CPU); normally the cached compiled kernel is used.
    """
    if kernel is None:
        if not triton_available():
            raise RuntimeError("maxsim_triton needs CUDA and Triton; use maxsim_torch")
        kernel = _TRITON["kernel"]
    device = tokens.device
    if queries.ndim == 2:
        queries = queries.unsqueeze(0)
    Q, nq, dim = queries.shape
    if query_mask is None:
        query_mask = torch.ones(Q, nq, dtype=torch.bool, device=device)
    int8 = tokens.dtype == torch.int8
    shape = TritonShape.of(Q, nq, int8, block_t, rows_per_program, num_warps)
    NQ = shape.rows
    groups = -(-nq // NQ)
    # (Q, groups * NQ) rows seen by the kernel as Q * groups queries of NQ tokens each.
    qpad = torch.zeros(Q, groups * NQ, dim, dtype=torch.float16, device=device)
    qpad[:, :nq] = (queries.to(device=device, dtype=torch.float32) * query_mask.to(device).unsqueeze(-1)).half()
    qm = torch.zeros(Q, groups * NQ, dtype=torch.float32, device=device)
    qm[:, :nq] = query_mask.to(device=device, dtype=torch.float32)
    if int8:
        if scales is None:
            raise ValueError("int8 tokens need scales")
        s = scales.to(device=device, dtype=torch.float32).contiguous()
    else:
        tokens = tokens if tokens.dtype == torch.float16 else tokens.half()
        s = torch.empty(1, dtype=torch.float32, device=device)
    offsets = offsets.to(device=device, dtype=torch.int64).contiguous()
    P = offsets.numel() - 1
    if P == 0:
        return torch.empty(Q, 0, dtype=torch.float32, device=device)
    n_rows = Q * groups
    out = torch.empty(n_rows, P, dtype=torch.float32, device=device)
    grid = (((n_rows + shape.block_q - 1) // shape.block_q) * P,)
    _launch(kernel, grid, (qpad, qm, tokens.contiguous(), s, offsets, out, n_rows, P), shape, dim)
    return out.view(Q, groups, P).sum(1) if groups > 1 else out


# --------------------------------------------------------------------------------------------------- dispatch


def maxsim(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    offsets: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """MaxSim of ``queries (Q, n_q, dim)`` vs packed ``tokens (T, dim)`` / ``offsets (P + 1,)`` -> ``(Q, P)`` float32.

    Dispatch: on CUDA the Triton kernel when available (``backend="auto"|"triton"``), per shape
    (:func:`fused_or_none`); on the CPU the compiled kernel of :mod:`retriever.cpu_maxsim` (``"auto"|"cpu"``, itself
    falling back to torch); else, or with ``backend="torch"``, :func:`maxsim_torch`.

    One query of 2 tokens against a page of 2 tokens and a page of 1 (dim 2), by hand: page 0 scores
    ``max(1, .6) + max(0, .8) = 1.8``, page 1 ``max(0) + max(1) = 1``.

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> pages = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    >>> maxsim(q, pages, torch.tensor([0, 2, 3]))
    tensor([[1.8000, 1.0000]])
    """
    if backend == "triton":
        return maxsim_triton(queries, tokens, offsets, query_mask, scales)
    if tokens.device.type == "cpu" and backend in ("auto", "cpu"):
        from retriever.cpu_maxsim import maxsim_cpu

        return maxsim_cpu(queries, tokens, offsets, query_mask, scales)
    if backend == "auto" and tokens.is_cuda and tokens.dtype in (torch.float16, torch.int8) and triton_available():
        fused = fused_or_none(queries, tokens, offsets, query_mask, scales)
        if fused is not None:
            return fused
    return maxsim_torch(queries, tokens, offsets, query_mask, scales)


# "auto" trusts the fused kernel for a shape only after it agreed with the torch path once on this GPU; a shape that
# fails to compile or disagrees uses the (slower, exact) torch path from then on, and the other shapes keep the kernel.
_SHAPES: dict[TritonShape, bool] = {}
_SHAPES_LOCK = threading.Lock()


def shape_state(shape: TritonShape) -> bool | None:
    """True: the fused kernel is trusted for ``shape``; False: it failed there; None: not tried yet."""
    return _SHAPES.get(shape)


def fused_or_none(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    offsets: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    kernel: Any = None,
) -> torch.Tensor | None:
    """:func:`maxsim_triton` where its shape is trusted (checked against the torch path on its first use), else None.

    ``queries (Q, n_q, dim)`` or ``(n_q, dim)``. A compile or launch failure is remembered for that shape only.
    """
    q3 = queries if queries.ndim == 3 else queries.unsqueeze(0)
    shape = TritonShape.of(int(q3.shape[0]), int(q3.shape[1]), tokens.dtype == torch.int8)
    state = _SHAPES.get(shape)
    if state is False:
        return None
    if state is None and not _verify(shape, q3, tokens, offsets, query_mask, scales, kernel):
        return None
    try:
        return maxsim_triton(q3, tokens, offsets, query_mask, scales, kernel=kernel)
    except Exception:  # noqa: BLE001 - a kernel that fails must not fail the search
        logger.exception("Triton MaxSim failed for %s; that shape uses the torch path from now on", shape)
        _remember(shape, False)
        return None


def _remember(shape: TritonShape, ok: bool) -> None:
    with _SHAPES_LOCK:
        _SHAPES[shape] = ok


def _verify(
    shape: TritonShape,
    queries: torch.Tensor,
    tokens: torch.Tensor,
    offsets: torch.Tensor,
    query_mask: torch.Tensor | None,
    scales: torch.Tensor | None,
    kernel: Any = None,
) -> bool:
    """Run ``shape`` once on the first 64 pages and compare with :func:`maxsim_torch`; remember the verdict."""
    n_pages = min(int(offsets.numel()) - 1, 64)
    if n_pages < 1:
        return False
    sub_offsets = offsets[: n_pages + 1]
    end = int(sub_offsets[-1])
    sub_tokens, sub_scales = tokens[:end], (None if scales is None else scales[:end])
    try:
        fused = maxsim_triton(queries, sub_tokens, sub_offsets, query_mask, sub_scales, kernel=kernel)
        ref = maxsim_torch(queries, sub_tokens, sub_offsets, query_mask, sub_scales)
        ok = bool(torch.allclose(fused.float(), ref.float(), atol=2e-2, rtol=1e-3))
        if not ok:
            logger.warning("Triton MaxSim disagreed with the torch reference for %s; that shape uses the torch path",
                           shape)
    except Exception:  # noqa: BLE001
        logger.exception("Triton MaxSim raised for %s; that shape uses the torch path", shape)
        ok = False
    _remember(shape, ok)
    return ok


#: Query token counts and batch sizes whose shapes :func:`warm_up` compiles: one query (a search) and a batch of
#: eight (the HTTP batcher's), each at every row group size (16 to 128 tokens; longer queries reuse 128).
WARM_QUERY_TOKENS = (16, 32, 64, 128)
WARM_QUERY_COUNTS = (1, 8)


def warm_up(
    device: torch.device,
    int8: bool,
    query_tokens: Sequence[int] = WARM_QUERY_TOKENS,
    query_counts: Sequence[int] = WARM_QUERY_COUNTS,
    kernel: Any = None,
) -> dict[TritonShape, bool]:
    """Compile and check the fused kernel for the common shapes now (at startup), not on a user's first search.

    Runs on a small random index on ``device``: ``int8`` tokens or fp16. Returns each shape's verdict; a no-op
    (empty) off CUDA or without Triton, unless ``kernel`` is given (tests).
    """
    if kernel is None and (device.type != "cuda" or not triton_available()):
        return {}
    gen = torch.Generator().manual_seed(0)
    pages = [torch.randn(n, DIM, generator=gen) for n in (70, 33, 129)]
    packed, offsets = pack(pages)
    scales = None
    if int8:
        tokens, scales = quantize_int8(packed)
        tokens, scales = tokens.to(device), scales.to(device)
    else:
        tokens = packed.to(device=device, dtype=torch.float16)
    offsets = offsets.to(device)
    verdicts: dict[TritonShape, bool] = {}
    for n_q in query_counts:
        for n_tok in query_tokens:
            shape = TritonShape.of(n_q, n_tok, int8)
            if shape in verdicts:
                continue
            if _SHAPES.get(shape) is None:
                q = torch.randn(n_q, n_tok, DIM, generator=gen).to(device)
                _verify(shape, q, tokens, offsets, None, scales, kernel)
            verdicts[shape] = bool(_SHAPES.get(shape))
    bad = [s for s, ok in verdicts.items() if not ok]
    if bad:
        logger.warning("Triton MaxSim: %d of %d common shapes use the torch path: %s", len(bad), len(verdicts), bad)
    return verdicts


def topk(
    scores: torch.Tensor, k: int, allowed: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` per row of ``scores (Q, P)``, restricted to ``allowed (P,)`` or ``(Q, P)`` bool when given.

    Returns host arrays ``values (Q, k')``, ``indices (Q, k')`` and ``valid (Q, k')`` where ``k' = min(k, P)``;
    ``valid`` is False for slots that fell on a disallowed page (fewer than ``k`` pages allowed).
    """
    if scores.ndim == 1:
        scores = scores.unsqueeze(0)
    Q, P = scores.shape
    kk = min(int(k), P)
    if kk <= 0:
        empty = np.zeros((Q, 0))
        return empty.astype(np.float32), empty.astype(np.int64), empty.astype(bool)
    if allowed is not None:
        allowed = allowed.to(scores.device)
        scores = scores.masked_fill(~allowed if allowed.ndim == 2 else ~allowed[None, :], _NEG_INF)
    top_vals, top_idx = torch.topk(scores, kk, dim=1)
    vals = top_vals.float().cpu().numpy()
    return vals, top_idx.cpu().numpy(), np.isfinite(vals)
