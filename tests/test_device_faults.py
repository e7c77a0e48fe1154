"""GPU failure paths forced on a CPU: out-of-memory, batches resident on the device, Triton shapes, --workers.

No GPU runs here. Where a GPU's behaviour is needed it is injected, and each test says what stands in for what:
an OOM is a real ``torch.cuda.OutOfMemoryError`` raised by the real tiny model's forward when a batch goes over a
fake memory budget; the device resident batches are counted by a hook around the real encoder; the Triton kernel
launch is replaced by a launcher that computes what the kernel computes with torch (and raises for one shape).
Everything else is real: the tiny encoder, real PDFs through the renderer, Qdrant Edge, the ingest pipeline.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from indexer.errors import ConfigError, DeviceOutOfMemory, for_interface
from indexer.images import PageImageStore
from indexer.ingest import Ingestor
from indexer.models.encoder import ColSmolEncoder
from indexer.models.oom import run_halving
from indexer.store import EdgeStore
from retriever import maxsim as ms
from testkit.pdfs import LETTER, PageSpec, write_pdf

STRIP = PageSpec(LETTER[1], LETTER[0] / 3, text="strip")  # a short wide page: few tiles
OOM = torch.cuda.OutOfMemoryError


def _oom(what: str = "Tried to allocate 2.00 GiB") -> OOM:
    return OOM(f"CUDA out of memory. {what}\nIncluding non-PyTorch memory, this process has 70 GiB in use.")


# ---------------------------------------------------------------------------------------------- halving
def test_halving_keeps_order_and_reports_what_fitted() -> None:
    seen: list[tuple[int, int]] = []

    def forward(a: int, b: int) -> list[int]:
        seen.append((a, b))
        if b - a > 2:
            raise _oom()
        return list(range(a, b))

    out, fitted = run_halving(7, 8, forward)
    assert out == list(range(7)) and fitted == 2
    assert seen[:3] == [(0, 7), (0, 4), (0, 2)] and (2, 4) in seen  # 7 -> 4 -> 2, then on with the size that fit

    with pytest.raises(DeviceOutOfMemory) as info:
        run_halving(2, 2, lambda a, b: (_ for _ in ()).throw(_oom()), "a single page", {"cli": "lower X"})
    assert "\n" not in str(info.value) and "a single page" in str(info.value) and "Tried to allocate" in str(info.value)
    assert for_interface(info.value, "cli").endswith("lower X")

    with pytest.raises(ValueError):  # not an OOM: not retried
        run_halving(4, 4, lambda a, b: (_ for _ in ()).throw(ValueError("bad input")))


class Budget:
    """A fake device-memory budget on the real model's forward: more real views (tiles) than ``views`` in one
    forward raises CUDA's OOM, as a GPU would. Counts the forwards and the largest batch that ran."""

    def __init__(self, encoder: ColSmolEncoder, views: int) -> None:
        self.views = views
        self.calls = 0
        self.batches: list[int] = []
        self._forward = encoder.model.forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        mask = kwargs["pixel_attention_mask"]
        views = int(mask.flatten(2).any(2).sum())
        if views > self.views:
            raise _oom(f"Tried to allocate {views} views")
        self.batches.append(int(mask.shape[0]))
        return self._forward(*args, **kwargs)


@pytest.fixture
def encoder(tiny_models: dict[str, Path]) -> ColSmolEncoder:
    # 128 px pages: a strip is 9 views, a Letter page 17 (so a budget can fit one but not the other).
    return ColSmolEncoder(tiny_models["encoder"], device="cpu", batch_size=4, longest_edge=128).load()


def _pages(pdf: Path) -> list[Any]:
    from indexer.render import iter_file_pages, make_renderer

    return [p.image for p in iter_file_pages(pdf, make_renderer("pdfium"), 50, None)]


def _views(encoder: ColSmolEncoder, pdf: Path) -> list[int]:
    return [encoder.tile_count(im) for im in _pages(pdf)]


def test_encoder_halves_a_batch_that_does_not_fit(encoder: ColSmolEncoder, tmp_path: Path, monkeypatch) -> None:
    pdf = write_pdf(tmp_path / "strips.pdf", [PageSpec(STRIP.width, STRIP.height, text=t) for t in "abc"])
    (strip,) = set(_views(encoder, pdf))
    images = _pages(pdf)
    expected = encoder.embed_pages(images)
    budget = Budget(encoder, views=strip)  # one page fits, two do not
    monkeypatch.setattr(encoder.model, "forward", budget)
    got = encoder.embed_preprocessed(encoder.preprocess_pages(images))
    assert len(got) == 3 and all(np.allclose(a, b, atol=1e-4) for a, b in zip(got, expected, strict=True))
    assert budget.batches == [1, 1, 1]
    calls = budget.calls
    encoder.embed_pages(images)  # the size that fitted is kept: no OOM again on the next batches
    assert budget.calls - calls == 3

    budget.views = strip - 1  # not even one page fits
    with pytest.raises(DeviceOutOfMemory) as info:
        encoder.embed_pages(images[:1])
    line = for_interface(info.value, "cli")
    assert "\n" not in line and "single page" in line
    assert "COLSMOL_PAGE_LONGEST_EDGE" in line and "--batch-size" in line and "dpi" not in line


def test_ingest_fails_only_the_file_a_page_does_not_fit(encoder: ColSmolEncoder, tmp_path: Path, monkeypatch) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    strips = write_pdf(docs / "strips.pdf", [STRIP, STRIP, STRIP])
    mixed = write_pdf(docs / "mixed.pdf", [STRIP, STRIP, PageSpec(*LETTER, text="too big")])
    write_pdf(docs / "zz_after.pdf", [STRIP])
    (strip,) = set(_views(encoder, strips))
    assert _views(encoder, mixed)[2] > 1.5 * strip  # the premise: a Letter page is much bigger than a strip
    budget = Budget(encoder, views=int(1.5 * strip))  # one strip fits, two do not, a Letter page never does
    monkeypatch.setattr(encoder.model, "forward", budget)

    store = EdgeStore(tmp_path / "qdrant", "test")
    try:
        images = PageImageStore(tmp_path / "pages")
        ing = Ingestor(store, encoder, images, dpi=50, batch_size=2, preprocess_workers=2)
        report = ing.ingest([docs])
        by_name = {Path(f.path).name: f for f in report.files}
        assert by_name["strips.pdf"].status == by_name["zz_after.pdf"].status == "indexed"  # the run went on
        failed = by_name["mixed.pdf"]
        assert failed.status == "failed" and "ran out of memory on a single page" in (failed.error or "")
        assert "COLSMOL_PAGE_LONGEST_EDGE" in for_interface(failed.error, "cli")
        assert report.exit_code == 1 and max(budget.batches) == 1
        assert {d.file_name for d in store.list_documents()} == {"strips.pdf", "zz_after.pdf"}
        # Nothing stored is lost: the pages of mixed.pdf that fitted stay, and the next run (more memory) resumes.
        assert store.count_pages() == 3 + 1 + 2
        budget.views = 10_000
        calls = budget.calls
        again = ing.ingest([docs])
        assert {Path(f.path).name: f.status for f in again.files} == {
            "strips.pdf": "unchanged",
            "mixed.pdf": "indexed",
            "zz_after.pdf": "unchanged",
        }
        assert again.pages_embedded == 1 and budget.calls - calls == 1
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- resident batches
class ResidentCounter:
    """The real encoder, reporting that it preprocesses onto an accelerator (as a CUDA encoder does), with a hook
    that counts the preprocessed batches alive at once: from the end of preprocessing to the end of their forward."""

    def __init__(self, encoder: ColSmolEncoder, batches_ahead: int | None) -> None:
        self.encoder = encoder
        self.batch_size = encoder.batch_size
        self.batches_ahead = batches_ahead
        self.resident = 0
        self.most = 0
        self._lock = threading.Lock()

    def load(self) -> object:
        return self.encoder.load()

    def preprocess_pages(self, images: Any) -> Any:
        batch = self.encoder.preprocess_pages(images)
        with self._lock:
            self.resident += 1
            self.most = max(self.most, self.resident)
        return batch

    def embed_preprocessed(self, batch: Any) -> list[np.ndarray]:
        time.sleep(0.05)  # a forward slower than preprocessing: what lets batches pile up
        out = self.encoder.embed_preprocessed(batch)
        with self._lock:
            self.resident -= 1
        return out


@pytest.mark.parametrize("ahead", [1, None])
def test_at_most_two_batches_wait_on_the_device(tiny_encoder: ColSmolEncoder, tmp_path: Path, ahead) -> None:
    (tmp_path / "docs").mkdir()
    pdf = write_pdf(tmp_path / "docs" / "long.pdf", [STRIP] * 10)
    counter = ResidentCounter(tiny_encoder, ahead)
    store = EdgeStore(tmp_path / "qdrant", "test")
    try:
        ing = Ingestor(store, counter, PageImageStore(tmp_path / "pages"), dpi=50, batch_size=1, preprocess_workers=6)
        assert ing.ingest([pdf]).count("indexed") == 1 and store.count_pages() == 10
    finally:
        store.close()
    if ahead == 1:
        assert counter.most <= 2, counter.most
    else:  # on a CPU (host memory) the pool keeps every worker busy: the bound is the device's only
        assert counter.most > 2, counter.most


def test_a_gpu_encoder_bounds_its_batches_and_masks_in_bool(tiny_models, tiny_encoder, monkeypatch) -> None:
    from PIL import Image

    assert tiny_encoder.batches_ahead is None  # CPU: host memory, no bound
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only device resolution is faked; nothing loads
    gpu = ColSmolEncoder(tiny_models["encoder"], device="cuda")
    assert gpu.device.type == "cuda" and gpu.batches_ahead == 1
    assert ColSmolEncoder(tiny_models["encoder"], device="cuda", preprocess="reference").batches_ahead is None
    monkeypatch.undo()
    mask = tiny_encoder.preprocess_pages([Image.new("RGB", (300, 200), "white")])["pixel_attention_mask"]
    assert mask.dtype == torch.bool


# ---------------------------------------------------------------------------------------------- Triton shapes
class FakeLauncher:
    """Stands in for a Triton launch on a CPU: computes what the kernel computes (``maxsim_torch`` on the padded
    query rows it is handed) and raises, as a failed compile does, for the row sizes in ``broken``."""

    def __init__(self, broken: set[int]) -> None:
        self.broken = broken
        self.shapes: list[ms.TritonShape] = []

    def __call__(self, kernel: Any, grid: tuple[int], args: tuple[Any, ...], shape: ms.TritonShape, dim: int) -> None:
        self.shapes.append(shape)
        assert shape.rows * shape.block_q <= ms.ROWS_PER_PROGRAM  # rows per program stay capped
        if shape.rows in self.broken:
            raise RuntimeError(f"triton compile failed for NQ={shape.rows}")
        qpad, qm, tokens, scales, offsets, out, n_rows, _ = args
        q = qpad.reshape(n_rows, shape.rows, dim).float()
        out[:] = ms.maxsim_torch(q, tokens, offsets, qm.reshape(n_rows, shape.rows) > 0, scales if shape.int8 else None)


@pytest.fixture
def fake_triton(monkeypatch) -> FakeLauncher:
    launcher = FakeLauncher(broken={32})
    monkeypatch.setattr(ms, "_launch", launcher)
    monkeypatch.setattr(ms, "_SHAPES", {})
    return launcher


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random unit vectors (as the encoder's are), so scores stay of the order of the query's tokens."""
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _index() -> tuple[torch.Tensor, torch.Tensor]:
    return ms.pack([_unit(n, ms.DIM, seed=n) for n in (40, 7, 90, 3)])


def _close(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return a is not None and torch.allclose(a, b, atol=2e-2, rtol=1e-3)


def test_a_shape_that_fails_falls_back_alone(fake_triton: FakeLauncher) -> None:
    tokens, offsets = _index()
    short, mid, long = (_unit(1, n, ms.DIM, seed=1) for n in (10, 20, 300))
    got = ms.fused_or_none(short, tokens.half(), offsets, kernel=object())
    assert _close(got, ms.maxsim_torch(short, tokens.half(), offsets))
    assert ms.fused_or_none(mid, tokens.half(), offsets, kernel=object()) is None  # 20 tokens -> 32 rows: broken
    assert ms.shape_state(ms.TritonShape.of(1, 20, False)) is False
    # The failure is that shape's only: the 16-row shape keeps the fused kernel, with no new check.
    n = len(fake_triton.shapes)
    assert ms.fused_or_none(short, tokens.half(), offsets, kernel=object()) is not None
    assert len(fake_triton.shapes) == n + 1
    # A long query is cut into capped row groups, and the sum over groups is the exact score.
    got = ms.fused_or_none(long, tokens.half(), offsets, kernel=object())
    assert ms.TritonShape.of(1, 300, False).rows == ms.ROWS_PER_PROGRAM
    assert _close(got, ms.maxsim_torch(long, tokens.half(), offsets))
    q8, s8 = ms.quantize_int8(tokens)
    got = ms.fused_or_none(short, q8, offsets, scales=s8, kernel=object())
    assert _close(got, ms.maxsim_torch(short, q8, offsets, scales=s8))


def test_warm_up_compiles_the_common_shapes(fake_triton: FakeLauncher) -> None:
    verdicts = ms.warm_up(torch.device("cpu"), int8=False, kernel=object())
    rows = {s.rows for s in verdicts}
    assert rows == {16, 32, 64, 128} and {s.block_q for s in verdicts} >= {1, 8}
    assert {s.rows for s, ok in verdicts.items() if not ok} == {32}  # the broken size only, at each batch size
    launched = len(fake_triton.shapes)
    tokens, offsets = _index()
    assert ms.fused_or_none(_unit(1, 12, ms.DIM), tokens.half(), offsets, kernel=object()) is not None
    assert len(fake_triton.shapes) == launched + 1  # a request after warm-up runs its shape once, unchecked
    assert ms.warm_up(torch.device("cpu"), int8=False) == {}  # without CUDA (and a kernel) it does nothing


# ---------------------------------------------------------------------------------------------- serve --workers
def test_serve_refuses_several_workers_on_a_gpu(tmp_path: Path, monkeypatch, capsys) -> None:
    from api.cli.app import main
    from api.http.app import serve
    from indexer.settings import Settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the device resolver sees a GPU; nothing runs on it
    settings = Settings(data_dir=tmp_path, device="auto", qdrant_url="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="--workers 1") as info:
        serve(settings, workers=2)
    assert "2 copies" in str(info.value) and "CUDA_VISIBLE_DEVICES" in str(info.value)

    monkeypatch.setattr(sys, "argv", ["colsmol", "serve", "--workers", "3", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as code:
        main()
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--workers 3" in err and "one GPU" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("int8", [False, True])
def test_warm_up_compiles_every_common_shape_on_a_gpu(int8: bool, monkeypatch) -> None:
    """On a real GPU: every common shape compiles and agrees with torch at warm-up; long queries match after it."""
    monkeypatch.setattr(ms, "_SHAPES", {})
    verdicts = ms.warm_up(torch.device("cuda"), int8=int8)
    assert verdicts and all(verdicts.values()), verdicts
    tokens, offsets = _index()
    scales = None
    if int8:
        tokens, scales = ms.quantize_int8(tokens)
    else:
        tokens = tokens.half()
    tokens, offsets = tokens.cuda(), offsets.cuda()
    for n in (5, 20, 64, 300):
        q = _unit(2, n, ms.DIM, seed=n).cuda()
        got = ms.maxsim(q, tokens, offsets, scales=scales)
        assert _close(got, ms.maxsim_torch(q, tokens, offsets, scales=scales)), n
    assert all(ms.shape_state(s) for s in verdicts)
