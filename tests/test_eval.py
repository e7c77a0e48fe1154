"""``colsmol eval``: metric arithmetic, dataset layouts and their errors, and an end-to-end run on the tiny model."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from retriever.evaluation.datasets import DatasetError, load_dataset
from retriever.evaluation.metrics import evaluate_run, mrr_at_k, ndcg_at_k, recall_at_k
from retriever.evaluation.runner import parse_configs, run_eval

ROOT = Path(__file__).resolve().parents[1]
L3, L5 = math.log2(3), math.log2(5)


# ---------------------------------------------------------------------------------------------- helpers


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _page(text: str, size: tuple[int, int] = (96, 128), shade: int = 255) -> Image.Image:
    img = Image.new("RGB", size, (shade, shade, shade))
    ImageDraw.Draw(img).text((6, 10), text, fill=(0, 0, 0))
    return img


def _folder_dataset(root: Path, texts: list[str]) -> Path:
    """p<i> is a page showing texts[i]; q<i> asks for it; qrels q<i> -> p<i>."""
    (root / "corpus").mkdir(parents=True)
    for i, t in enumerate(texts):
        _page(t).save(root / "corpus" / f"p{i}.png")
    _write_jsonl(root / "corpus.jsonl", [{"_id": f"p{i}", "image": f"corpus/p{i}.png"} for i in range(len(texts))])
    _write_jsonl(root / "queries.jsonl", [{"_id": f"q{i}", "text": f"page about {t}"} for i, t in enumerate(texts)])
    _write_jsonl(
        root / "qrels.jsonl", [{"query-id": f"q{i}", "corpus-id": f"p{i}", "score": 1} for i in range(len(texts))]
    )
    return root


# ---------------------------------------------------------------------------------------------- (1) metrics


def test_metric_arithmetic_by_hand() -> None:
    ranked = ["a", "b", "c", "d"]
    qrels = {"b": 2, "d": 1, "z": 0}
    # DCG@5 = 0/log2(2) + 2/log2(3) + 0/log2(4) + 1/log2(5); IDCG@5 = 2/log2(2) + 1/log2(3)
    assert ndcg_at_k(ranked, qrels, 5) == pytest.approx((2 / L3 + 1 / L5) / (2 + 1 / L3))
    assert ndcg_at_k(ranked, qrels, 1) == 0.0  # "a" is unjudged
    # @2: DCG = 2/log2(3); IDCG = 2 + 1/log2(3)
    assert ndcg_at_k(ranked, qrels, 2) == pytest.approx((2 / L3) / (2 + 1 / L3))
    assert recall_at_k(ranked, qrels, 2) == 0.5  # b of {b, d}; z has relevance 0, not relevant
    assert recall_at_k(ranked, qrels, 4) == 1.0
    assert mrr_at_k(ranked, qrels, 10) == 0.5  # first relevant at rank 2
    assert mrr_at_k(ranked, qrels, 1) == 0.0
    # linear gain (trec_eval), not 2^rel - 1: with rel 2 alone at rank 1, IDCG = 2, not 3
    assert ndcg_at_k(["x", "b"], {"b": 2}, 2) == pytest.approx((2 / L3) / 2)
    with pytest.raises(ValueError):
        ndcg_at_k(ranked, qrels, 0)


class _BasisEncoder:
    """Page i (red channel = 40 * i) is the single token e_i; a query is one token of weights w: score(i) = w_i."""

    model_id = "basis"

    def __init__(self, weights: dict[str, list[float]]) -> None:
        self.weights = weights

    def embed_pages(self, images: list[Image.Image]) -> list[np.ndarray]:
        out = []
        for im in images:
            v = np.zeros((1, 128), dtype=np.float32)
            v[0, im.getpixel((0, 0))[0] // 40] = 1.0
            out.append(v)
        return out

    def embed_queries(self, texts: list[str]) -> list[np.ndarray]:
        out = []
        for t in texts:
            v = np.zeros((1, 128), dtype=np.float32)
            v[0, :4] = self.weights[t]
            out.append(v)
        return out


def test_known_ranking_gives_hand_computed_metrics_in_every_config(tmp_path: Path) -> None:
    root = tmp_path / "basis"
    (root / "corpus").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / "corpus" / f"p{i}.png")  # corpus/ of images: id = stem
    _write_jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "one"}, {"_id": "q2", "text": "two"}])
    _write_jsonl(
        root / "qrels.jsonl",
        [
            {"query-id": "q1", "corpus-id": "p1", "score": 2},
            {"query-id": "q1", "corpus-id": "p3", "score": 1},
            {"query-id": "q2", "corpus-id": "p3", "score": 1},
        ],
    )
    encoder = _BasisEncoder({"one": [0.9, 0.5, 0.3, 0.1], "two": [0.1, 0.2, 0.3, 0.9]})
    # q1 ranks p0 p1 p2 p3: relevant p1 (2) at rank 2, p3 (1) at rank 4. q2 ranks p3 first, its only relevant page.
    q1_ndcg5 = (2 / L3 + 1 / L5) / (2 + 1 / L3)
    expected = {
        "ndcg@1": (0 + 1) / 2,
        "ndcg@5": (q1_ndcg5 + 1) / 2,
        "recall@1": (0 + 1) / 2,
        "recall@5": (1 + 1) / 2,
        "mrr@10": (1 / 2 + 1) / 2,
    }
    report = run_eval(load_dataset(root), encoder, "int8,pool2,pool3,two-stage,tiered,tier1", "1,5", device="cpu")
    assert [c.name for c in report.configs] == ["exact", "int8", "pool2", "pool3", "two-stage", "tiered", "tier1"]
    for c in report.configs:  # one-token pages: quantization, pooling and prefetch change nothing
        assert c.metrics == pytest.approx(expected), c.name
        assert all(r == pytest.approx(1.0) for r in c.relative.values()), c.name
        assert c.agreement_at_10 == 1.0
        assert c.latency_ms_p50 >= 0 and c.latency_ms_p99 >= c.latency_ms_p50
    assert report.pages == 4 and report.queries == 2 and report.tokens_per_page == 1
    assert evaluate_run({"q1": ["p0", "p1", "p2", "p3"], "q2": ["p3"]}, load_dataset(root).qrels, [1, 5]) == (
        pytest.approx(expected)
    )


def test_parse_configs_rejects_unknown_names() -> None:
    from indexer.errors import ConfigError

    assert [c.name for c in parse_configs("two-stage,exact,pool2,fp16")] == ["exact", "two-stage", "pool2"]
    assert parse_configs("runtime:openvino")[1].runtime == "openvino"
    with pytest.raises(ConfigError, match="fp32, int8"):
        parse_configs("runtime:tensorrt")
    with pytest.raises(ConfigError, match="pool-two"):
        parse_configs("pool-two")


# ---------------------------------------------------------------------------------------------- (2) end to end


def _eval_app() -> typer.Typer:
    from api.cli.eval_cmd import eval_command

    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, so that `eval` is a subcommand as in `colsmol eval`
        pass

    app.command("eval")(eval_command)
    return app


def test_end_to_end_with_tiny_checkpoint(tmp_path: Path, tiny_models: dict[str, Path], tiny_encoder) -> None:
    texts = ["invoice total 42", "river map", "annual budget", "cat photo"]
    root = _folder_dataset(tmp_path / "synthetic", texts)

    report = run_eval(load_dataset(root), tiny_encoder, "exact,int8,pool2,two-stage", [1, 3], device="cpu")
    assert [c.name for c in report.configs] == ["exact", "int8", "pool2", "two-stage"]
    assert report.pages == 4 and report.queries == 4 and report.embed_pages_per_s > 0
    for c in report.configs:
        assert set(c.metrics) == {"ndcg@1", "ndcg@3", "recall@1", "recall@3", "mrr@10"}
        assert all(0.0 <= v <= 1.0 for v in c.metrics.values())
        assert c.metrics["recall@3"] >= c.metrics["recall@1"]
    # random weights rank arbitrarily, but every query ranks all 4 pages: MRR@10 >= 1/4, recall@10 == 1
    assert report.config("exact").metrics["mrr@10"] >= 0.25
    assert report.config("two-stage").agreement_at_10 == 1.0  # 4 pages < 200 candidates: rerank sees them all

    out = tmp_path / "reports" / "report.json"
    configs = "exact,int8,runtime:int8"  # runtime:int8 embeds the corpus again with the int8 vision tower
    cmd = ["eval", str(root), "--model", str(tiny_models["encoder"]), "--device", "cpu", "--config", configs]
    res = CliRunner().invoke(_eval_app(), [*cmd, "--k", "1,5", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "nDCG@5" in res.output and "int8" in res.output  # the table
    saved = json.loads(out.read_text())
    assert [c["name"] for c in saved["configs"]] == ["exact", "int8", "runtime:int8"]
    assert saved["configs"][2]["params"] == {"runtime": "int8", "ran": "int8"} and saved["encoder_runtime"] == "fp32"
    assert saved["configs"][2]["agreement_at_10"] == 1.0  # 4 pages: every ranking holds them all
    assert saved["dataset"]["pages"] == 4 and saved["metric_names"][-1] == "mrr@10"
    exact = saved["configs"][0]
    assert all(r is None or r == pytest.approx(1.0) for r in exact["relative"].values())

    res = CliRunner().invoke(_eval_app(), [*cmd, "--json", "--max-queries", "2"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    printed = json.loads(res.stdout)
    assert printed["queries"] == 2 and printed["pages"] == 4

    res = CliRunner().invoke(_eval_app(), [*cmd, "--config", "pool-two"])
    assert res.exit_code != 0 and "pool-two" in str(res.exception)


# ---------------------------------------------------------------------------------------------- ViDoRe parquet


def _png(text: str) -> bytes:
    buf = io.BytesIO()
    _page(text).save(buf, format="PNG")
    return buf.getvalue()


def _vidore_parquet(root: Path) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [  # one row per query/page pair; a null query is a distractor page
        ("what is the total?", "a.png"),
        (None, "b.png"),
        ("where is the river?", "c.png"),
        ("what is the total?", "d.png"),  # duplicate query text: kept once, relevant to its last page
        ("budget for 2024?", "a.png"),  # a page seen before: one corpus entry
    ]
    table = pa.table(
        {
            "query": [q for q, _ in rows],
            "image": [{"bytes": _png(f), "path": f} for _, f in rows],
            "image_filename": [f for _, f in rows],
            "answer": ["x"] * len(rows),
        }
    )
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / "data" / "test-00000-of-00001.parquet")
    return root


def test_vidore_parquet_layout_and_converter(tmp_path: Path) -> None:
    src = _vidore_parquet(tmp_path / "docvqa_test_subsampled")
    ds = load_dataset(src)
    assert ds.layout == "vidore-parquet"
    assert [p.id for p in ds.corpus] == ["a.png", "b.png", "c.png", "d.png"]
    assert ds.queries == {"q0": "what is the total?", "q1": "where is the river?", "q2": "budget for 2024?"}
    assert ds.qrels == {"q0": {"d.png": 1}, "q1": {"c.png": 1}, "q2": {"a.png": 1}}
    assert ds.corpus[0].image().size == (96, 128)

    dst = tmp_path / "converted"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "convert_vidore.py"), str(src), str(dst)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    conv = load_dataset(dst)
    assert conv.layout == "folder"
    assert conv.queries == ds.queries and conv.qrels == ds.qrels
    assert [p.id for p in conv.corpus] == [p.id for p in ds.corpus]
    assert conv.corpus[3].image().tobytes() == ds.corpus[3].image().tobytes()


def test_folder_parquet_and_tsv_parts(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    root = tmp_path / "beir"
    (root / "corpus").mkdir(parents=True)
    (root / "qrels").mkdir()
    pq.write_table(
        pa.table(
            {
                "corpus-id": ["d1", "d2"],
                "image": [{"bytes": _png("one"), "path": None}, {"bytes": _png("two"), "path": None}],
            }
        ),
        root / "corpus" / "test-0.parquet",
    )
    pq.write_table(pa.table({"query-id": ["x"], "query": ["find two"]}), root / "queries.parquet")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nx\td1\t1\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nx\td2\t1\n")
    ds = load_dataset(root)
    assert [p.id for p in ds.corpus] == ["d1", "d2"]
    assert ds.qrels == {"x": {"d2": 1}}  # the test split is preferred


# ---------------------------------------------------------------------------------------------- (3) bad input


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return _folder_dataset(tmp_path / "ds", ["alpha", "beta"])


def test_missing_qrels_names_the_folder(good: Path) -> None:
    (good / "qrels.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"ds: no qrels: expected qrels\.jsonl"):
        load_dataset(good)


def test_unknown_ids_in_qrels_name_file_and_line(good: Path) -> None:
    with (good / "qrels.jsonl").open("a") as fh:
        fh.write(json.dumps({"query-id": "q9", "corpus-id": "p0", "score": 1}) + "\n")
    with pytest.raises(DatasetError, match=r"qrels\.jsonl:3: unknown query id 'q9'"):
        load_dataset(good)
    _write_jsonl(good / "qrels.jsonl", [{"query-id": "q0", "corpus-id": "p0"}, {"query-id": "q1", "corpus-id": "p7"}])
    with pytest.raises(DatasetError, match=r"qrels\.jsonl:2: unknown corpus id 'p7'"):
        load_dataset(good)


def test_empty_query_and_bad_json_name_file_and_line(good: Path) -> None:
    _write_jsonl(good / "queries.jsonl", [{"_id": "q0", "text": "alpha"}, {"_id": "q1", "text": "   "}])
    with pytest.raises(DatasetError, match=r"queries\.jsonl:2: query 'q1' has empty text"):
        load_dataset(good)
    (good / "queries.jsonl").write_text('{"_id": "q0", "text": "alpha"}\n\n{"_id": "q1", "text": \n')
    with pytest.raises(DatasetError, match=r"queries\.jsonl:3: not valid JSON"):
        load_dataset(good)


def test_other_malformed_rows(good: Path, tmp_path: Path) -> None:
    _write_jsonl(good / "qrels.jsonl", [{"query-id": "q0", "corpus-id": "p0", "score": "high"}])
    with pytest.raises(DatasetError, match=r"qrels\.jsonl:1: relevance score 'high' is not an integer"):
        load_dataset(good)
    _write_jsonl(good / "corpus.jsonl", [{"_id": "p0", "image": "corpus/p0.png"}, {"_id": "p1", "image": "nope.png"}])
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:2: corpus 'p1': image file 'nope.png' not found"):
        load_dataset(good)
    _write_jsonl(good / "corpus.jsonl", [{"_id": "p0", "image": "corpus/p0.png"}, {"_id": "p0", "image": "x"}])
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:2: duplicate corpus id 'p0'"):
        load_dataset(good)
    with pytest.raises(DatasetError, match="no such dataset folder"):
        load_dataset(tmp_path / "absent")


def test_cli_reports_dataset_errors(good: Path, tiny_models: dict[str, Path]) -> None:
    (good / "qrels.jsonl").unlink()
    res = CliRunner().invoke(_eval_app(), ["eval", str(good), "--model", str(tiny_models["encoder"])])
    assert isinstance(res.exception, DatasetError) and "no qrels" in str(res.exception)
