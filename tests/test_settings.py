from __future__ import annotations

from pathlib import Path

import pytest

from indexer.errors import ConfigError
from indexer.models.device import resolve_device
from indexer.settings import Settings


def test_defaults(monkeypatch) -> None:
    for key in ("COLSMOL_DATA_DIR", "COLSMOL_QDRANT_URL", "COLSMOL_ENCODER_MODEL"):
        monkeypatch.delenv(key, raising=False)
    s = Settings()
    assert s.data_dir == Path("colsmol_data")
    assert s.qdrant_url is None
    assert s.encoder_model == "vidore/colSmol-256M"
    assert s.generator_model == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert s.device == "auto"


def test_environment_and_empty_values(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("COLSMOL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLSMOL_QDRANT_URL", "")
    monkeypatch.setenv("COLSMOL_PAGE_BATCH_SIZE", "16")
    monkeypatch.setenv("COLSMOL_DEVICE", "cpu")
    s = Settings()
    assert s.data_dir == tmp_path and s.qdrant_url is None and s.page_batch_size == 16
    assert s.qdrant_path == tmp_path / "qdrant"


def test_bad_values_are_rejected(monkeypatch) -> None:
    monkeypatch.setenv("COLSMOL_DEVICE", "tpu")
    with pytest.raises(ValueError, match="device"):
        Settings()


def test_explicit_cuda_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present; this checks the error on machines without it")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")
