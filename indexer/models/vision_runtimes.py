"""CPU runtimes for the Idefics3 vision tower (SigLIP), the part of ColSmolVLM and SmolVLM that costs the most.

A Letter page is 17 tiles of 1,024 patches through 12 SigLIP-base layers, about 90% of the encoder's FLOPs (by a
parameter-count estimate); the rest (pixel-shuffle connector, ~1,100 tokens through the SmolLM2-135M text model, the
128-d projection) stays in torch fp32 in every runtime, so query embeddings (text only) are the same whatever runs
the pages. Each candidate returns a module that replaces ``model.model.vision_model`` (the same for ``ColIdefics3``
and ``Idefics3ForConditionalGeneration``) and is called the way Idefics3 calls its tower:

- ``fp32``: the tower as loaded (the reference);
- ``int8``: torch dynamic int8 on the tower's linear layers (weights int8, activations quantized per call);
  int8 on the text model too was measured below the fidelity bar (token cosine 0.9935 on a 17-tile page);
- ``bf16``: the tower's weights and activations in bf16 (pays where the CPU has AMX or AVX512-BF16 kernels);
- ``openvino``: the tower converted to OpenVINO, fp32 precision;
- ``openvino-bf16``: the same graph with OpenVINO's bf16 inference precision (only on CPUs with native bf16).

The converted OpenVINO graph is saved under the cache directory (keyed by the weights' identity and the
OpenVINO, torch and transformers versions): converting takes tens of seconds, loading it a second or two.
:func:`choose_tower` picks among them for a loaded model (:mod:`indexer.models.runtimes` does the measuring).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import warnings
from pathlib import Path
from typing import Any, get_args

import torch

from indexer.models.runtimes import AUTO, Candidate, Choice
from indexer.settings import EncoderRuntime

log = logging.getLogger(__name__)

#: Every vision runtime, reference first (``COLSMOL_ENCODER_RUNTIME`` takes one of these, or ``auto``).
RUNTIMES: tuple[str, ...] = tuple(r for r in get_args(EncoderRuntime) if r != AUTO)
#: What one load may spend choosing, in probe runs (one tile each): 12 tiles are under one Letter page at the
#: model's 2048 px (17), so a first ingest pays less than a page of encoding to learn the machine.
BUDGET_PROBES = 12.0
#: Seconds converting the tower to OpenVINO is budgeted at while its graph is not cached (SigLIP-base: tens of
#: seconds on a 2-vCPU VM; a converter start-up of seconds even for a tiny tower).
CONVERT_S = 20.0


def vision_tower(model: Any) -> Any:
    """The tower of an Idefics3 model (``ColIdefics3`` or ``Idefics3ForConditionalGeneration``)."""
    return model.model.vision_model


def set_vision_tower(model: Any, tower: Any) -> None:
    model.model.vision_model = tower


def tower_candidates(tower: Any, weights: str, cache_dir: Path | None = None) -> list[Candidate[Any]]:
    """The candidates for ``tower`` (fp32, loaded), in :data:`RUNTIMES` order. Building one never changes ``tower``.

    ``weights`` names the weights (``models.weights_identity``): the converted graph is saved under it."""
    converted = _Converted(tower, weights, cache_dir)

    def convert_s() -> float:
        return 0.0 if converted.ready() else CONVERT_S

    return [
        Candidate("fp32", lambda: tower, "torch eager, fp32"),
        Candidate("int8", lambda: _int8(tower), "torch dynamic int8 on the vision tower's linear layers"),
        Candidate("bf16", lambda: _Bf16Tower(tower), "torch, vision tower in bf16"),
        Candidate("openvino", lambda: converted.module("f32"), "OpenVINO vision tower, fp32", convert_s),
        Candidate(
            "openvino-bf16", lambda: converted.module("bf16"), "OpenVINO vision tower, bf16 precision", convert_s
        ),
    ]


def _int8(tower: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that quantize_dynamic moves to torchao
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(tower), {torch.nn.Linear}, dtype=torch.qint8)


class _Hidden:
    """Holds a module without registering it: the wrapper then has no parameters of its own, so
    ``model.dtype`` (read by Idefics3 to cast pixels) stays the fp32 of the connector after it."""

    def __init__(self, module: Any) -> None:
        self.module = module


def _output(hidden: torch.Tensor) -> Any:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(last_hidden_state=hidden)


class _Bf16Tower(torch.nn.Module):
    def __init__(self, tower: Any) -> None:
        super().__init__()
        self._tower = _Hidden(copy.deepcopy(tower).to(torch.bfloat16).eval())

    def forward(self, pixel_values: torch.Tensor, patch_attention_mask: Any = None, **_: Any) -> Any:
        pixels = pixel_values.to(torch.bfloat16)
        out = self._tower.module(pixel_values=pixels, patch_attention_mask=patch_attention_mask)
        return _output(out.last_hidden_state.float())


class _Converted:
    """The tower converted to OpenVINO once per process (and once per cache directory), compiled per precision."""

    def __init__(self, tower: Any, weights: str, cache_dir: Path | None) -> None:
        self.tower = tower
        self.weights = weights
        self.cache_dir = cache_dir
        self._graph: Any = None
        self._lock = threading.Lock()

    def _ir_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        import openvino
        import transformers

        ident = f"{self.weights}|{openvino.__version__}|{torch.__version__}|{transformers.__version__}"
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return self.cache_dir / "openvino" / digest / "vision.xml"

    def ready(self) -> bool:
        """Whether the graph is converted already (in memory, or saved in the cache directory)."""
        if self._graph is not None:
            return True
        try:
            path = self._ir_path()
        except Exception:  # noqa: BLE001 - OpenVINO missing: the candidate fails to build anyway, cheaply
            return True
        return path is not None and path.is_file()

    def graph(self) -> Any:
        with self._lock:
            if self._graph is None:
                self._graph = self._load_or_convert()
            return self._graph

    def _load_or_convert(self) -> Any:
        import openvino as ov

        path = self._ir_path()
        core = ov.Core()
        if path is not None and path.is_file():
            try:
                return core.read_model(path)
            except Exception as exc:  # noqa: BLE001 - a damaged file: convert again
                log.warning("cannot read the converted vision tower %s (%s); converting again", path, exc)
        cfg = self.tower.config
        example = torch.zeros(1, 3, cfg.image_size, cfg.image_size)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            graph = ov.convert_model(
                _TowerExport(self.tower),
                example_input=(example,),
                input=[ov.PartialShape([-1, 3, cfg.image_size, cfg.image_size])],
            )
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                ov.save_model(graph, path, compress_to_fp16=False)
            except Exception as exc:  # noqa: BLE001 - a read-only cache only costs the next conversion
                log.warning("cannot save the converted vision tower to %s: %s", path, exc)
        return graph

    def module(self, precision: str) -> Any:
        import openvino as ov

        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise RuntimeError("this CPU has no native bf16 (OpenVINO would run it in fp32)")
        compiled = core.compile_model(
            self.graph(),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": precision,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": "1",
                "INFERENCE_NUM_THREADS": str(torch.get_num_threads()),
                # Other processes share the cores: pinning threads to them would only make us wait.
                "ENABLE_CPU_PINNING": "NO",
            },
        )
        return _OpenVINOTower(compiled, self.tower)


class _TowerExport(torch.nn.Module):
    """What is converted: whole tiles (every patch real, as Idefics3's tiles always are) -> last hidden state."""

    def __init__(self, tower: Any) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        p = self.tower.config.patch_size
        n, _, h, w = pixel_values.shape
        mask = torch.ones(n, h // p, w // p, dtype=torch.bool, device=pixel_values.device)
        hidden: torch.Tensor = self.tower(pixel_values=pixel_values, patch_attention_mask=mask).last_hidden_state
        return hidden


class _OpenVINOTower(torch.nn.Module):
    """Runs whole tiles through OpenVINO; anything else (a partial patch mask) through the torch tower."""

    def __init__(self, compiled: Any, tower: Any) -> None:
        super().__init__()
        self._compiled = compiled
        self._torch = _Hidden(tower)
        self._size = int(tower.config.image_size)
        self._lock = threading.Lock()  # one infer request, not safe to share between threads

    def forward(self, pixel_values: torch.Tensor, patch_attention_mask: Any = None, **_: Any) -> Any:
        whole = pixel_values.shape[-2:] == (self._size, self._size) and (
            patch_attention_mask is None or bool(patch_attention_mask.all())
        )
        if not whole or pixel_values.device.type != "cpu":
            out = self._torch.module(pixel_values=pixel_values, patch_attention_mask=patch_attention_mask)
            return _output(out.last_hidden_state)
        with self._lock:
            result = self._compiled([pixel_values.float().contiguous().numpy()])[0]
        return _output(torch.from_numpy(result.copy()))


def choose_tower(
    model: Any,
    inputs: dict[str, Any],
    *,
    weights: str,
    requested: str = AUTO,
    cache_dir: Path | None = None,
    what: str = "model",
    key: dict[str, Any] | None = None,
    budget_probes: float | None = BUDGET_PROBES,
) -> Choice[Any]:
    """Put into the Idefics3 ``model`` (fp32, on the CPU) the vision tower runtime ``requested``, or with ``auto``
    the one :func:`indexer.models.runtimes.choose` measures fastest and faithful on ``inputs`` (one tile through
    the whole model: the parts left in fp32 are in the timing). ``weights`` names the weights
    (``models.weights_identity``);
    ``cache_dir`` keeps ``choices.json`` and the converted graphs. Fidelity: the smallest per-token cosine of the
    output (a ColIdefics3's embeddings, or a generator's logits) over the positions ``inputs["attention_mask"]`` sets.
    ``budget_probes`` bounds the measuring (:data:`BUDGET_PROBES`; None measures every candidate).
    """
    from indexer.models.runtimes import ChoiceCache, choose, machine_key, token_cosine_min

    mask = inputs.get("attention_mask")

    def probe(tower: Any) -> torch.Tensor:
        set_vision_tower(model, tower)
        with torch.inference_mode():
            out = model(**inputs)
        return out if isinstance(out, torch.Tensor) else out.logits

    def fidelity(ref: torch.Tensor, out: torch.Tensor) -> float:
        return token_cosine_min(ref, out, mask)

    cache = ChoiceCache(cache_dir / "choices.json") if cache_dir is not None else None
    choice = choose(
        tower_candidates(vision_tower(model), weights, cache_dir),
        probe,
        fidelity,
        requested=requested,
        cache=cache,
        key=machine_key(what=what, weights=weights, **library_versions(), **(key or {})),
        what=what,
        budget_probes=budget_probes,
    )
    set_vision_tower(model, choice.value)
    return choice


def library_versions() -> dict[str, str | None]:
    import transformers

    try:
        import openvino

        ov: str | None = openvino.__version__
    except Exception:  # noqa: BLE001 - not installed, or broken: then it is no candidate anyway
        ov = None
    return {"transformers": transformers.__version__, "openvino": ov}
