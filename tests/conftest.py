"""Shared, session-scoped heavy fixtures: tiny checkpoints are built once per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The hub is unreachable here: make every from_pretrained fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `auto` times five encoder runtimes (one converts the tower to OpenVINO) for every new data dir: seconds per test
# that builds a pipeline. The selection itself is tested in tests/test_runtimes.py; everything else runs fp32.
os.environ.setdefault("COLSMOL_ENCODER_RUNTIME", "fp32")
# OCR (Tesseract) takes seconds a page: tests of other things skip it; tests/test_hybrid.py turns it on where it is
# the subject.
os.environ.setdefault("COLSMOL_OCR", "off")


def tiny_settings(tiny_models: dict[str, Path], data_dir: Path, **overrides: object):
    """Settings for a pipeline on the tiny checkpoints, on CPU, with its data under ``data_dir``."""
    from indexer.settings import Settings

    values: dict[str, object] = {
        "data_dir": data_dir,
        "encoder_model": str(tiny_models["encoder"]),
        "generator_model": str(tiny_models["generator"]),
        "device": "cpu",
    }
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random encoder (merged), encoder (PEFT adapter) and generator checkpoints on disk."""
    from testkit.checkpoints import build_all

    return build_all(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_models: dict[str, Path]):
    from indexer.models.encoder import ColSmolEncoder

    return ColSmolEncoder(tiny_models["encoder"], device="cpu", batch_size=4).load()


@pytest.fixture(scope="session")
def tiny_generator(tiny_models: dict[str, Path]):
    from rag.generators.smolvlm import SmolVLMGenerator

    # The eager reference (transformers' generate); on a CPU ``auto`` would pick the lean path.
    return SmolVLMGenerator(tiny_models["generator"], device="cpu", decode="eager").load()
