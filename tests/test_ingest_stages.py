"""Where ingest's time goes (indexer.stages), runtime measuring on a budget, and the exact CPU preprocessing.

The stage test slows each stage by a known amount (the real tiny encoder and a real page image store, each call
delayed by a sleep: instrumentation, not a mock), so a stage that is not counted shows as missing seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from indexer.images import PageImageStore
from indexer.ingest import Ingestor, ProgressEvent
from indexer.models.runtimes import Candidate, ChoiceCache, choose, token_cosine_min
from indexer.stages import BUSY_STAGES
from indexer.store import EdgeStore
from testkit.pdfs import LETTER, PageSpec, write_pdf
from tests.test_ingest import _cli_env, _colsmol

PRE_S, ENCODE_S, IMAGE_S = 0.08, 0.12, 0.1


class SlowEncoder:
    """The real (not yet loaded) tiny encoder; each preprocess and forward call sleeps a known time first."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.batch_size = encoder.batch_size

    def load(self):
        return self.encoder.load()

    def preprocess_pages(self, images):
        time.sleep(PRE_S)
        return self.encoder.preprocess_pages(images)

    def embed_preprocessed(self, batch):
        time.sleep(ENCODE_S)
        return self.encoder.embed_preprocessed(batch)


class SlowImages(PageImageStore):
    def save(self, point_id, image):
        time.sleep(IMAGE_S)
        return super().save(point_id, image)


def test_stages_add_up_to_the_wall_time_and_each_is_counted(tiny_models, tmp_path) -> None:
    from indexer.models.encoder import ColSmolEncoder

    enc = SlowEncoder(ColSmolEncoder(tiny_models["encoder"], device="cpu", batch_size=2, runtime="fp32"))
    pdfs = [
        write_pdf(tmp_path / f"d{d}.pdf", [PageSpec(*LETTER, text=f"doc {d} page {i}") for i in range(3)])
        for d in range(2)
    ]
    events: list[ProgressEvent] = []
    store = EdgeStore(tmp_path / "qdrant", "test")
    try:
        # One image thread: the writer is the slowest stage, so the encoder thread waits on it.
        ing = Ingestor(
            store, enc, SlowImages(tmp_path / "pages"), dpi=40, batch_size=2, image_workers=1, preprocess_workers=1
        )
        report = ing.ingest(pdfs, progress=events.append)
    finally:
        store.close()
    assert report.pages_embedded == 6 and not report.failed
    wall, busy = report.stages["wall"], report.stages["busy"]
    assert {"setup", "load", "render", "preprocess", "encode", "write"} <= set(wall)
    assert set(BUSY_STAGES) - {"calibrate"} <= set(busy)
    assert all(v >= 0 for view in (wall, busy) for v in view.values())
    # The wall view partitions the run: leaving out any stage that took time breaks the sum.
    assert sum(wall.values()) == pytest.approx(report.seconds, rel=0.08, abs=0.03), (wall, report.seconds)
    # 4 batches (2 documents of 3 pages, batch 2), 6 page images: each stage's own time holds its sleeps.
    assert busy["encode"] >= 4 * ENCODE_S and wall["encode"] >= 4 * ENCODE_S
    assert busy["preprocess"] >= 4 * PRE_S
    assert busy["images"] >= 6 * IMAGE_S
    assert busy["load"] == pytest.approx(report.load_seconds, abs=1e-6) and wall["load"] == busy["load"]
    assert busy["render"] > 0 and busy["store"] > 0
    # One image thread at 0.1 s a page against a forward at 0.12 s a batch of two: the encoder waits on the writer.
    assert wall["write"] >= IMAGE_S
    assert [e.stages for e in events if e.kind == "stages"] == [report.stages]
    assert report.to_dict()["stages"]["wall"]["encode"] == round(wall["encode"], 3)


def test_cli_json_reports_stages(tiny_models, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", [PageSpec(*LETTER, text=f"page {i}") for i in range(2)])
    env = _cli_env(tiny_models, tmp_path / "data")
    res = _colsmol("ingest", str(docs), "--dpi", "40", "--json", env=env)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert {"render", "preprocess", "encode", "images", "store", "load"} <= set(d["stages"]["busy"])
    assert sum(d["stages"]["wall"].values()) == pytest.approx(d["seconds"], rel=0.1, abs=0.05)
    res = _colsmol("ingest", str(docs), "--dpi", "40", env=env)  # unchanged: no pages, no stage line
    assert res.returncode == 0 and "time by stage" not in res.stdout


# ---------------------------------------------------------------------------------------- runtime budget
REF = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _runtime(name: str, delay: float):
    def run():
        time.sleep(delay)
        return name, REF

    return run


def test_runtime_measuring_stops_at_its_budget_and_a_later_load_finishes_it(tmp_path) -> None:
    """A candidate whose preparation would not fit stays pending; the cached choice is used, and the next load
    whose budget fits measures it (here its preparation is done by then, as a converted graph saved to disk)."""
    calls: list[str] = []
    prepared = {"convert": False}

    def probe(value):
        name, out = value()
        calls.append(name)
        return out

    def candidates():
        return [
            Candidate("fp32", lambda: _runtime("fp32", 0.02)),
            Candidate("quick", lambda: _runtime("quick", 0.01)),
            Candidate(
                "convert", lambda: _runtime("convert", 0.001), prepare_s=lambda: 0.0 if prepared["convert"] else 5.0
            ),
        ]

    cache = ChoiceCache(tmp_path / "choices.json")
    key = {"cpu": "x"}
    first = choose(candidates(), probe, token_cosine_min, cache=cache, key=key, budget_probes=20)
    assert first.name == "quick" and first.pending == ["convert"] and "convert" not in calls
    assert 0 < first.seconds < 1.0  # 20 probes of 0.02 s: the 5 s preparation was not started
    (record,) = json.loads(cache.path.read_text()).values()
    assert record["choice"] == "quick" and record["pending"] == ["convert"]

    calls.clear()
    again = choose(candidates(), probe, token_cosine_min, cache=cache, key=key, budget_probes=20)
    assert again.cached and again.name == "quick" and calls == [] and again.seconds == 0.0  # still does not fit

    prepared["convert"] = True
    done = choose(candidates(), probe, token_cosine_min, cache=cache, key=key, budget_probes=20)
    assert done.name == "convert" and done.pending == [] and "convert" in calls and "quick" not in calls
    assert {t.name for t in done.trials} == {"fp32", "quick", "convert"}  # the earlier trials still count
    (record,) = json.loads(cache.path.read_text()).values()
    assert record["choice"] == "convert" and record["pending"] == []

    calls.clear()
    assert choose(candidates(), probe, token_cosine_min, cache=cache, key=key, budget_probes=20).cached
    assert calls == []


def test_unbudgeted_measuring_tries_every_candidate() -> None:
    cands = [
        Candidate("fp32", lambda: _runtime("fp32", 0.0)),
        Candidate("convert", lambda: _runtime("convert", 0.0), prepare_s=lambda: 1e6),
    ]
    choice = choose(cands, lambda v: v()[1], token_cosine_min)
    assert choice.pending == [] and {t.name for t in choice.trials} == {"fp32", "convert"}


# ---------------------------------------------------------------------------------------- CPU preprocessing
def test_cpu_tensor_preprocessing_equals_the_reference_bit_for_bit() -> None:
    """On a CPU the tensor path resizes with Pillow, as the reference does: every pixel equal, at the real geometry."""
    from colpali_engine.models import ColIdefics3Processor

    from indexer.models.preprocess import TensorPreprocessor
    from indexer.render import iter_file_pages, make_renderer
    from testkit.checkpoints import build_tokenizer, full_processor

    proc = full_processor(build_tokenizer(), ColIdefics3Processor)
    fixtures = Path(__file__).parent / "fixtures"
    renderer = make_renderer("pdfium")
    pages = [
        p.image for f in ("fpdf2_report.pdf", "pillow_scans.pdf") for p in iter_file_pages(fixtures / f, renderer, 72)
    ]
    ours, ref = TensorPreprocessor(proc)(pages[:3]), proc.process_images(pages[:3])
    for key in ref:  # the pixel mask is bool here, int64 in the reference: same values
        assert torch.equal(ours[key].to(ref[key].dtype), ref[key]), key
    assert ours["pixel_values"].dtype == ref["pixel_values"].dtype
