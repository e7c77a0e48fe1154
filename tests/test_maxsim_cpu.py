"""The CPU MaxSim path (``retriever.cpu_maxsim``): the compiled kernel equals fp32 arithmetic, and the fallback works.

Kernel tests skip, with the reason, where the extension is not built (``pip install -e .`` builds it) or the CPU
lacks AVX2/FMA/F16C; the fallback tests run everywhere.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from retriever import cpu_maxsim
from retriever.cpu_maxsim import hamming_maxsim, kernel_available, maxsim_cpu, pack_query_rows, sign_codes
from retriever.maxsim import maxsim, maxsim_torch, pack, pad_queries, quantize_int8
from retriever.token_index import TokenIndex

DIM = 128
needs_kernel = pytest.mark.skipif(
    not kernel_available(), reason="CPU MaxSim extension not built (pip install -e .) or no AVX2/FMA/F16C on this CPU"
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _pages(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [_unit(rng.standard_normal((n, DIM))) for n in lengths]


# page lengths around the kernel's edges: 1 token, odd, the 32-token chunk, the 4/6/12-token tiles
LENGTHS = [1, 2, 3, 5, 7, 11, 12, 13, 31, 32, 33, 63, 64, 65, 97, 300, 1001]


def _queries(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return pad_queries([_unit(rng.standard_normal((n, DIM))) for n in lengths])


def _stored(tokens: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if dtype == "int8":
        return quantize_int8(tokens)
    return (tokens.half() if dtype == "fp16" else tokens.float()), None


# ---------------------------------------------------------------------------------------------- the kernel


@needs_kernel
def test_hand_computed():
    """The 2 x 3 example of ``maxsim``'s doctest, padded to dim 8 (the kernel needs a multiple of 8)."""
    q = torch.zeros(1, 2, 8)
    q[0, 0, 0] = q[0, 1, 1] = 1.0
    t = torch.zeros(3, 8)
    t[0, 0], t[1, :2], t[2, 1] = 1.0, torch.tensor([0.6, 0.8]), 1.0
    got = maxsim_cpu(q, t, torch.tensor([0, 2, 3]))
    assert torch.allclose(got, torch.tensor([[1.8, 1.0]]))
    assert torch.allclose(maxsim_cpu(q, t.half(), torch.tensor([0, 2, 3])), torch.tensor([[1.8, 1.0]]), atol=1e-3)


@needs_kernel
@pytest.mark.parametrize("dtype", ["fp16", "int8", "fp32"])
def test_kernel_equals_fp32_arithmetic(dtype: str):
    """Scores equal fp32 math on the stored values (summation order aside), ranking included; and stay within
    storage tolerance of the unrounded fp32 vectors."""
    tokens, off = pack(_pages(LENGTHS))
    q, m = _queries([1, 7, 20, 31, 24])
    m[2, 5] = m[2, 11] = False  # holes inside a query
    stored, scales = _stored(tokens, dtype)
    got = maxsim_cpu(q, stored, off, m, scales)
    exact = maxsim_torch(q, stored, off, m, scales)  # fp32 arithmetic on the same stored values
    assert got.dtype == torch.float32 and got.shape == (5, len(LENGTHS))
    assert torch.allclose(got, exact, atol=1e-4, rtol=1e-5)
    assert torch.equal(got.argsort(dim=1, descending=True), exact.argsort(dim=1, descending=True))
    unrounded = maxsim_torch(q, tokens, off, m)
    assert torch.allclose(got, unrounded, atol={"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}[dtype])


@needs_kernel
@pytest.mark.parametrize("rows", [1, 8, 9, 16, 17, 24, 25, 32, 33, 40, 41, 56, 320])
def test_every_grouping_of_query_rows(rows: int):
    """Packed query rows fill 1..40 vectors: groups of 3 (4-token tiles), 2 (6) and 1 (12), and 4 as 2 + 2."""
    tokens, off = pack(_pages([1, 9, 33, 100], seed=rows))
    lengths = [min(rows - i, 30) for i in range(0, rows, 30)]
    q, m = _queries(lengths, seed=rows)
    fp16 = tokens.half()
    got = maxsim_cpu(q, fp16, off, m)
    assert torch.allclose(got, maxsim_torch(q, fp16, off, m), atol=1e-4)


@needs_kernel
def test_batch_equals_single_and_threads_agree_exactly():
    tokens, off = pack(_pages([5, 40, 333, 1, 77] * 7, seed=3))
    fp16 = tokens.half()
    q, m = _queries([20, 3, 30, 17], seed=4)
    batch = maxsim_cpu(q, fp16, off, m, n_threads=2)
    for i in range(4):
        assert torch.equal(maxsim_cpu(q[i], fp16, off, m[i], n_threads=1)[0], batch[i])
    for n in (1, 3, 8):  # a page is scored by one thread, so the split never changes a bit
        assert torch.equal(maxsim_cpu(q, fp16, off, m, n_threads=n), batch)


@needs_kernel
def test_empty_query_rows_and_edges():
    tokens, off = pack(_pages([3, 4]))
    fp16 = tokens.half()
    q, m = _queries([5, 5])
    m[1] = False  # a query without a single real token scores 0, as in maxsim_torch
    got = maxsim_cpu(q, fp16, off, m)
    assert torch.equal(got[1], torch.zeros(2)) and torch.equal(maxsim_torch(q, fp16, off, m)[1], torch.zeros(2))
    assert maxsim_cpu(q, fp16, off[:1], m).shape == (2, 0)  # no pages
    m[:] = False
    assert torch.equal(maxsim_cpu(q, fp16, off, m), torch.zeros(2, 2))
    wide = torch.randn(7, DIM * 2)  # a non-contiguous view is copied, not misread
    view = wide[:, :DIM]
    ref = maxsim_torch(q[:1], view.contiguous(), torch.tensor([0, 3, 7]))
    assert torch.allclose(maxsim_cpu(q[:1], view, torch.tensor([0, 3, 7])), ref, atol=1e-4)


@needs_kernel
def test_bad_input_raises_instead_of_reading_past_buffers():
    tokens, off = pack(_pages([3, 4]))
    q, _ = _queries([4])
    with pytest.raises(ValueError, match="no tokens"):
        maxsim_cpu(q, tokens.half(), torch.tensor([0, 3, 3, 7]))
    with pytest.raises(ValueError, match="past the tokens"):
        maxsim_cpu(q, tokens.half(), torch.tensor([0, 3, 8]))
    with pytest.raises(ValueError, match="scales"):
        maxsim_cpu(q, quantize_int8(tokens)[0], off)


@needs_kernel
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_rows_score_only_those_pages(dtype: str):
    """``rows`` scores a subset of pages in place (no copy of their tokens), in the order given."""
    tokens, off = pack(_pages(LENGTHS))
    q, m = _queries([20, 5])
    stored, scales = _stored(tokens, dtype)
    full = maxsim_cpu(q, stored, off, m, scales)
    rows = np.array([16, 0, 3, 3, 9], dtype=np.int64)
    assert torch.equal(maxsim_cpu(q, stored, off, m, scales, rows=rows), full[:, rows])
    assert maxsim_cpu(q, stored, off, m, scales, rows=np.zeros(0, np.int64)).shape == (2, 0)
    with pytest.raises(ValueError, match="out of range"):
        maxsim_cpu(q, stored, off, m, scales, rows=np.array([len(LENGTHS)]))


def _sign_maxsim(q: torch.Tensor, m: torch.Tensor, pages: list[np.ndarray]) -> torch.Tensor:
    """The definition: MaxSim of the +-1 sign vectors, in float arithmetic."""
    sign = lambda x: np.where(np.asarray(x) >= 0, 1.0, -1.0)  # noqa: E731
    out = torch.zeros(q.shape[0], len(pages))
    for qi in range(q.shape[0]):
        rows = sign(q[qi][m[qi]].numpy())
        for p, page in enumerate(pages):
            out[qi, p] = float((rows @ sign(page).T).max(1).sum())
    return out


@pytest.mark.parametrize("kernel", [True, False])
def test_hamming_maxsim_is_maxsim_of_the_sign_vectors(kernel: bool, monkeypatch: pytest.MonkeyPatch):
    """Tier 0 of a tiered index: the kernel and the numpy fallback both give MaxSim over +-1 sign vectors."""
    if kernel and not kernel_available():
        pytest.skip("CPU MaxSim extension not built")
    if not kernel:
        monkeypatch.setattr(cpu_maxsim, "_EXT", {"ext": None})
    pages = _pages(LENGTHS)
    q, m = _queries([20, 5, 1])
    codes = sign_codes(np.concatenate(pages))
    assert codes.shape == (sum(LENGTHS), 2) and codes.dtype == np.uint64
    off = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int64)
    got = hamming_maxsim(codes, off, q, m)
    assert torch.equal(got, _sign_maxsim(q, m, pages))


@needs_kernel
def test_hamming_bad_input_raises():
    codes = sign_codes(np.ones((4, DIM), np.float32))
    q, m = _queries([3])
    with pytest.raises(ValueError, match="offsets"):
        hamming_maxsim(codes, np.array([0, 2, 9]), q, m)
    with pytest.raises(ValueError, match="sign_codes"):
        sign_codes(np.ones((4, 64), np.float32))


def test_pack_query_rows_layout():
    q = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)
    m = torch.tensor([[True, False, True], [True, True, False]])
    qT, qoff = pack_query_rows(q, m)
    assert qT.shape == (1, 8, 8) and qoff.tolist() == [0, 2, 4]
    rows = [q[0, 0], q[0, 2], q[1, 0], q[1, 1]]
    for lane, row in enumerate(rows):
        assert torch.equal(qT[0, :, lane], row)
    assert torch.equal(qT[0, :, 4:], torch.zeros(8, 4))


# ---------------------------------------------------------------------------------------------- dispatch, fallback


def test_dispatch_uses_the_cpu_path():
    tokens, off = pack(_pages([3, 50, 9]))
    q, m = _queries([20])
    fp16 = tokens.half()
    assert torch.equal(maxsim(q, fp16, off, m), maxsim_cpu(q, fp16, off, m))
    assert torch.allclose(maxsim(q, fp16, off, m, backend="torch"), maxsim_cpu(q, fp16, off, m), atol=1e-4)


@pytest.fixture
def no_extension(monkeypatch: pytest.MonkeyPatch):
    """As if the extension had not been built: its import fails."""
    monkeypatch.setitem(sys.modules, "retriever._cpu_maxsim", None)
    monkeypatch.setattr(cpu_maxsim, "_EXT", {})
    yield
    cpu_maxsim._EXT.clear()


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_fallback_without_extension(no_extension, dtype: str):
    assert not kernel_available()
    tokens, off = pack(_pages(LENGTHS))
    q, m = _queries([20, 5])
    stored, scales = _stored(tokens, dtype)
    got = maxsim_cpu(q, stored, off, m, scales)
    assert torch.equal(got, maxsim_torch(q, stored, off, m, scales))
    assert torch.equal(maxsim(q, stored, off, m, scales), got)


@pytest.mark.parametrize(("dtype", "pool_factor"), [("fp16", 1), ("int8", 1), ("fp16", 2), ("int8", 3)])
def test_token_index_on_cpu_matches_the_torch_path(dtype: str, pool_factor: int):
    """TokenIndex on CPU (the kernel where built) ranks as the reference torch path, for int8 and pooled pages too."""
    pages = _pages([40, 1, 77, 130, 9, 64, 33, 250], seed=5)
    ids = [f"p{i}" for i in range(len(pages))]
    rng = np.random.default_rng(6)
    queries = [_unit(rng.standard_normal((n, DIM))) for n in (20, 1, 29)]
    results = []
    for backend in ("auto", "torch"):
        index = TokenIndex(device="cpu", dtype=dtype, pool_factor=pool_factor, backend=backend)
        index.add(ids, pages)
        results.append(index.score(queries, k=5))
    for fast, ref in zip(*results, strict=True):
        assert [h.point_id for h in fast] == [h.point_id for h in ref]
        assert np.allclose([h.score for h in fast], [h.score for h in ref], atol=1e-4)
