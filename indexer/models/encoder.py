"""ColSmolVLM page and query embeddings over colpali-engine's ``ColIdefics3``.

A page becomes ``(n_tokens, 128)`` float32 vectors (about 1,100 for a Letter page with the real
model), a query ``(n_query_tokens, 128)``. Padding positions are removed using the attention mask:
with left padding, padded rows can come out NaN, and they are not part of the page anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from indexer.errors import ColsmolError, InvalidRequest
from indexer.models.device import attn_implementation, model_dtype, resolve_device
from indexer.models.loading import LazyWeights, adapter_base, from_pretrained_kwargs, load_or_explain, weights_identity
from indexer.models.runtimes import AUTO, Choice

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from indexer.settings import Settings

log = logging.getLogger(__name__)

ENV_VAR = "COLSMOL_ENCODER_MODEL"


class ColSmolEncoder:
    """Embeds page images and query texts with a ColSmolVLM checkpoint.

    ``model`` is a hub id or a local directory holding merged weights or a PEFT adapter
    (the real ``vidore/colSmol-256M`` is an adapter over ``vidore/ColSmolVLM-Instruct-256M-base``).
    The model loads on first use, once.

    On CUDA the model runs in bf16 with SDPA attention; elsewhere in fp32. A device out-of-memory
    halves the batch and retries the same inputs (:mod:`indexer.models.oom`).

    ``preprocess="tensor"`` splits pages into tiles with torch ops on the encoder's device
    (:mod:`indexer.models.preprocess`: same tiles and tokens as the reference; pixels equal on CUDA, at
    most two 8-bit levels off elsewhere, one on real pages); ``"reference"`` runs colpali-engine's
    PIL processor; ``"fast"`` approximates the tensor path with one antialiased bicubic resize per view (same
    tiles and tokens, pixels only close: opt-in, see BENCHMARKS.md).

    ``longest_edge`` (pixels) is the page resolution: Idefics3 scales a page to it before cutting
    512 px tiles, so it sets the tiles and tokens per page (2048, the model's own: 17 tiles a Letter
    page; 1024: 5). None keeps the model's; other values are rounded to whole tiles.

    ``runtime`` picks what runs the vision tower on a CPU (:mod:`indexer.models.vision_runtimes`): a name,
    or ``"auto"`` to time each candidate once on one tile, check it against fp32, and keep the fastest
    faithful one (:mod:`indexer.models.runtimes`; at most about one page of encoding a load, what does not fit is
    measured by a later load), remembered in ``runtime_cache`` (a directory) for this machine. On CUDA
    the model runs in bf16 and ``runtime`` is not used.
    """

    def __init__(
        self,
        model: str | Path = "vidore/colSmol-256M",
        device: str = "auto",
        batch_size: int = 8,
        query_batch_size: int = 32,
        preprocess: Literal["tensor", "reference", "fast"] = "tensor",
        longest_edge: int | None = None,
        runtime: str = "fp32",
        runtime_cache: Path | None = None,
    ) -> None:
        from indexer.settings import EncoderRuntime

        runtimes = [r for r in get_args(EncoderRuntime) if r != AUTO]
        if batch_size < 1 or query_batch_size < 1:
            raise InvalidRequest("batch sizes must be at least 1")
        if preprocess not in ("tensor", "reference", "fast"):
            raise InvalidRequest(f"preprocess must be 'tensor', 'reference' or 'fast', got {preprocess!r}")
        if runtime != AUTO and runtime not in runtimes:
            raise InvalidRequest(f"encoder runtime must be auto or one of {', '.join(runtimes)}, got {runtime!r}")
        if longest_edge is not None and longest_edge < 1:
            raise InvalidRequest(f"the page longest edge must be a positive number of pixels, got {longest_edge}")
        self.model_id = str(model)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.query_batch_size = query_batch_size
        self.preprocess = preprocess
        self.requested_longest_edge = longest_edge
        self.runtime = runtime
        self.runtime_cache = None if runtime_cache is None else Path(runtime_cache)
        #: How the vision tower runs, once the model is loaded (name, reason, the probe's trials).
        self.runtime_choice: Choice[Any] | None = None
        #: Seconds loading has spent measuring runtimes (``runtime="auto"``, on a budget), summed over loads.
        self.calibration_seconds = 0.0
        self._model_longest_edge: int | None = None
        self._processor_for_probe: Any = None
        self._tensor_preprocessor: Any = None  # built with the processor (LazyWeights loads both)
        self._weights_of: ColSmolEncoder | None = None  # see sibling()
        self._page_fit: int | None = None  # the page batch that fitted after a device OOM, if one happened
        self._weights = LazyWeights(self.model_id, "encoder", ENV_VAR, self._load_processor, self._load_model)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ColSmolEncoder:
        """The encoder that ``settings`` describe (model, device, batch sizes, preprocessing, page resolution,
        CPU runtime and its cache); ``overrides`` replace single constructor arguments, e.g. ``runtime="fp32"``.
        The one place the pipeline, ``colsmol eval`` and the benches build an encoder from settings."""
        kwargs: dict[str, Any] = {
            "device": settings.device,
            "batch_size": settings.page_batch_size,
            "query_batch_size": settings.query_batch_size,
            "preprocess": settings.preprocess,
            "longest_edge": settings.page_longest_edge,
            "runtime": settings.encoder_runtime,
            "runtime_cache": settings.runtimes_dir,
        }
        kwargs.update(overrides)
        return cls(kwargs.pop("model", settings.encoder_model), **kwargs)

    # ------------------------------------------------------------------ loading
    def load(self) -> ColSmolEncoder:
        self._weights.get()
        return self

    @property
    def loaded(self) -> bool:
        return self._weights.loaded

    @property
    def processor(self) -> Any:
        return self._weights.get()[0]

    @property
    def model(self) -> Any:
        return self._weights.get()[1]

    def _load_processor(self) -> Any:
        from colpali_engine.models import ColIdefics3Processor

        from indexer.models.preprocess import whole_tiles

        # The PIL backend is the reference the checkpoint was trained with (LANCZOS resampling);
        # torchvision < 0.27 would approximate it with BICUBIC.
        processor = ColIdefics3Processor.from_pretrained(self.model_id, **from_pretrained_kwargs())
        ip = processor.image_processor
        self._model_longest_edge = int(ip.size["longest_edge"])
        if self.requested_longest_edge is not None:
            # Both preprocessing paths read the image processor's settings, so this one change covers them.
            # ``size`` is a dict or transformers' SizeDict dataclass, depending on the processor class.
            edge = whole_tiles(self.requested_longest_edge, int(ip.max_image_size["longest_edge"]))
            if edge != self.requested_longest_edge:
                log.info("page longest edge %d px rounded to %d (whole tiles)", self.requested_longest_edge, edge)
            size = {**dict(ip.size), "longest_edge": edge}
            ip.size = size if isinstance(ip.size, dict) else type(ip.size)(**size)
        self._tensor_preprocessor = self._make_tensor_preprocessor(processor)
        self._processor_for_probe = processor
        return processor

    @property
    def page_longest_edge(self) -> int:
        """The longest edge pages are scaled to (pixels, whole tiles); loads the processor."""
        return int(self.processor.image_processor.size["longest_edge"])

    @property
    def model_longest_edge(self) -> int:
        """The checkpoint's own page longest edge (what a collection without a record was indexed at)."""
        self.processor  # noqa: B018 - loads it, which reads the value
        assert self._model_longest_edge is not None
        return self._model_longest_edge

    def _make_tensor_preprocessor(self, processor: Any) -> Any:
        if self.preprocess == "reference":
            return None
        from indexer.models.preprocess import TensorPreprocessor

        try:
            return TensorPreprocessor(processor, device=self.device, exact=self.preprocess == "tensor")
        except ValueError as exc:  # an image processor setting the tensor path does not mirror
            log.warning("encoder %s: %s; preprocessing with the reference processor", self.model_id, exc)
            return None

    def sibling(self, longest_edge: int | None) -> ColSmolEncoder:
        """An encoder at another page resolution sharing this one's model weights (loaded once, by whichever
        loads first): collections indexed at different resolutions keep one copy of the model in memory."""
        other = ColSmolEncoder(
            self.model_id,
            device=str(self.device),
            batch_size=self.batch_size,
            query_batch_size=self.query_batch_size,
            preprocess=self.preprocess,
            longest_edge=longest_edge,
            runtime=self.runtime,
            runtime_cache=self.runtime_cache,
        )
        other._weights_of = self
        return other

    def _load_model(self) -> Any:
        from colpali_engine.models import ColIdefics3

        if self._weights_of is not None:
            self.runtime_choice = self._weights_of.runtime_choice
            return self._weights_of.model

        kwargs = from_pretrained_kwargs(
            dtype=model_dtype(self.device), attn_implementation=attn_implementation(self.device)
        )
        base = adapter_base(self.model_id)
        if base is None:
            model = ColIdefics3.from_pretrained(self.model_id, **kwargs)
        else:
            from peft import PeftModel

            log.info("encoder %s is a PEFT adapter over %s; merging", self.model_id, base)
            base_model = load_or_explain(
                lambda: ColIdefics3.from_pretrained(base, **kwargs), base, "encoder base", ENV_VAR
            )
            model = PeftModel.from_pretrained(base_model, self.model_id).merge_and_unload()
        model = model.to(self.device).eval()
        if self.device.type == "cpu":
            self._choose_runtime(model)
        elif self.runtime not in (AUTO, "fp32"):
            log.info("encoder runtime %s applies to CPUs only; %s runs the model in %s", self.runtime, self.device,
                     model_dtype(self.device))
        return model

    def _choose_runtime(self, model: Any) -> None:
        """Put the vision tower runtime chosen for this CPU into ``model`` (``vision_runtimes.choose_tower``)."""
        from indexer.models.preprocess import probe_page_inputs
        from indexer.models.vision_runtimes import choose_tower

        choice = choose_tower(
            model,
            probe_page_inputs(self._processor_for_probe),
            weights=weights_identity(self.model_id),
            requested=self.runtime,
            cache_dir=self.runtime_cache,
            what="encoder",
            key={"model": self.model_id},
        )
        self.runtime_choice = choice
        self.calibration_seconds += choice.seconds
        if choice.name != "fp32":
            log.info("encoder %s: vision tower runs on %s (%s)", self.model_id, choice.name, choice.reason)

    # ------------------------------------------------------------------ pages
    def tile_count(self, image: Image.Image) -> int:
        """Views Idefics3 makes of ``image``: its 512 px tiles plus the global view (1 when unsplit)."""
        from indexer.models.preprocess import view_count

        return view_count(image.height, image.width, self.processor.image_processor)

    def preprocess_pages(self, images: Sequence[Image.Image]) -> Any:
        """Idefics3 tiling, normalization and prompt tokens of ``images`` (a ``BatchFeature``).

        With ``preprocess="tensor"`` on a GPU the tensors are already on it.
        """
        self.load()
        if self._tensor_preprocessor is not None:
            return self._tensor_preprocessor(list(images))
        return self.processor.process_images(list(images))

    def embed_pages(
        self, images: Sequence[Image.Image], progress: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        """One ``(n_tokens, 128)`` float32 array per image, in input order, padding removed.

        Images are sorted by tile count so a batch holds similar lengths (little padding).
        """
        order = sorted(range(len(images)), key=lambda i: self.tile_count(images[i]))
        out: list[np.ndarray | None] = [None] * len(images)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            vectors = self.embed_preprocessed(self.preprocess_pages([images[i] for i in idx]))
            for i, v in zip(idx, vectors, strict=True):
                out[i] = v
            if progress is not None:
                progress(len(idx))
        return [v for v in out if v is not None]

    def embed_preprocessed(self, batch: Any) -> list[np.ndarray]:
        """Forward an already preprocessed batch (``BatchFeature``, ``B`` pages) and strip padding: B arrays.

        On a device out-of-memory the batch is split in halves (down to one page,
        :func:`~indexer.models.oom.run_halving`) and the size that fitted is kept for later batches; one page
        that does not fit alone raises :class:`~indexer.errors.DeviceOutOfMemory`.
        """
        from indexer.models.oom import PAGE_HINTS, run_halving

        n = int(batch["input_ids"].shape[0])

        def forward(start: int, stop: int) -> list[np.ndarray]:
            part = batch if (start, stop) == (0, n) else {k: v[start:stop] for k, v in batch.items()}
            return self._forward_pages(part)

        vectors, fitted = run_halving(n, min(n, self._page_fit or n), forward, "a single page", PAGE_HINTS)
        if fitted < n:
            self._page_fit = fitted
        return vectors

    def _forward_pages(self, batch: Any) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            inputs = {k: v.to(self.device) for k, v in batch.items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            emb = self.model(**inputs)
        return _strip_padding(emb, inputs["attention_mask"], "page")

    @property
    def batches_ahead(self) -> int | None:
        """Preprocessed batches that may wait for the forward pass while one runs: 1 where preprocessing leaves
        them on an accelerator (so at most two batches are resident there), None (no limit) when they are on the
        host."""
        return 1 if self.device.type != "cpu" and self.preprocess != "reference" else None

    # ------------------------------------------------------------------ queries
    def embed_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One ``(n_query_tokens, 128)`` float32 array per query text (a device OOM halves the batch)."""
        import torch

        from indexer.models.oom import run_halving

        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise InvalidRequest("a query must be a non-empty string")

        def forward(start: int, stop: int) -> list[np.ndarray]:
            with torch.inference_mode():
                enc = self.processor.process_queries(list(texts[start:stop]))
                inputs = {k: v.to(self.device) for k, v in enc.items()}
                emb = self.model(**inputs)
            return _strip_padding(emb, inputs["attention_mask"], "query")

        return run_halving(len(texts), self.query_batch_size, forward, "a single query")[0]

    # ------------------------------------------------------------------ misc
    def close(self) -> None:
        self._weights.clear()
        self._tensor_preprocessor = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def _strip_padding(emb: torch.Tensor, mask: torch.Tensor, what: str) -> list[np.ndarray]:
    """``emb (B, L, 128)`` and ``mask (B, L)`` -> B arrays ``(n_real_tokens, 128)`` float32, all finite."""
    emb = emb.float().cpu()
    keep = mask.bool().cpu()
    result = []
    for row, m in zip(emb, keep, strict=True):
        v = row[m].numpy()
        if not np.isfinite(v).all():
            raise ColsmolError(f"the encoder produced non-finite {what} vectors; the checkpoint may be broken")
        result.append(np.ascontiguousarray(v, dtype=np.float32))
    return result
