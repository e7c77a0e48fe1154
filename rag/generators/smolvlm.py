"""SmolVLM answers over page images, through transformers' ``AutoModelForImageTextToText``.

``generate`` returns the whole text; ``stream`` yields text pieces as they are decoded, through a
``TextIteratorStreamer`` fed by ``generate`` running on a worker thread.

Two decode modes (``decode=``):

- ``"eager"``: transformers' plain ``generate`` (a ``DynamicCache``, one Python-launched forward per token).
  At batch 1 on a GPU the per-token kernel launches, not the GPU, set the speed (37-47 tokens/s for
  SmolVLM-256M on an H100).
- ``"static"``: the same ``generate`` with a :class:`transformers.StaticCache` that this object owns and
  ``reset()``s between calls, so its tensors keep their addresses, and on CUDA a
  ``CompileConfig(mode="reduce-overhead")``: ``generate`` then runs the prefill eagerly (pixel values,
  vision encoder, variable length) and every decode step through ``model.get_compiled_call`` - a
  ``torch.compile``'d forward whose kernels are replayed as one CUDA graph per token. Decode steps are
  text-only (transformers drops ``pixel_values`` after the prefill), so the graph is the Llama decoder
  over a fixed-size cache. The cache length is rounded up to a multiple of ``STATIC_CACHE_BUCKET``
  tokens (at least ``static_cache_tokens``) and only ever grows, so shapes - and recompilations - stay
  bounded. All static-mode generations run on one long-lived worker thread: the cache is shared, and
  CUDA graph trees keep per-thread state. On CPU/MPS the static cache is used without compilation.
- ``"lean"`` / ``"lean-fp16"``: colsmol's CPU path (:mod:`rag.generators.smolvlm_lean`): page features
  computed once per page and cached (``page_cache``; on disk beside the page images when the pipeline gives
  page ids), the prompt prefilled by the model's forward, tokens decoded over a preallocated key/value cache
  with fp32 weights (``lean``: eager's tokens) or fp16 copies of the decoder's weights (``lean-fp16``: half
  the bytes a token; agreement with eager measured in BENCHMARKS.md). Batch 1; anything else goes to ``generate``.
- ``"auto"`` (default): on CUDA ``"static"`` once ``STATIC_DECODE_VERIFIED`` is set, else ``"eager"``; on a
  CPU ``CPU_DECODE`` (the path BENCHMARKS.md measured fastest here); on MPS ``"eager"``.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from indexer.errors import ColsmolError, ConfigError, InvalidRequest
from indexer.models.device import attn_implementation, model_dtype, resolve_device
from indexer.models.loading import LazyWeights, from_pretrained_kwargs
from rag.generators.base import answering
from rag.generators.page_features import PageFeatureCache
from rag.generators.prompt import PAGE_LONGEST_EDGE, SYSTEM_INSTRUCTION, fit_pages, question_text

if TYPE_CHECKING:
    from PIL import Image

    from rag.generators.smolvlm_lean import LeanRunner

log = logging.getLogger(__name__)

ENV_VAR = "COLSMOL_GENERATOR_MODEL"

Decode = Literal["auto", "eager", "static", "lean", "lean-fp16"]
DECODE_MODES: tuple[str, ...] = get_args(Decode)
LEAN_MODES = ("lean", "lean-fp16")


class SmolVLMGenerator:
    """Vision-language generation with SmolVLM (any Idefics3-architecture checkpoint).

    Device, dtype and missing-model rules match the encoder: bf16 + SDPA on CUDA, fp32 on CPU, and a
    ``ModelUnavailable`` naming ``COLSMOL_GENERATOR_MODEL`` when the weights cannot be had.
    Decoding is greedy by default so the same question gives the same answer.

    ``decode`` picks how tokens are decoded (see the module docstring): ``"eager"``, ``"static"``
    (static KV cache; compiled into CUDA graphs on CUDA) or ``"auto"``. ``decode_mode`` is the mode in
    effect. In static mode on CUDA, ``load()`` calls :meth:`warmup` so that compilation and graph
    capture happen at load time, not in the first request.
    """

    #: ``decode="auto"`` means ``"static"`` on CUDA only when this is True. It stays False until a GPU
    #: run of ``bench/answer.py --decode eager,static`` (pending in BENCHMARKS.md) shows the static path
    #: is faster and gives the same tokens.
    STATIC_DECODE_VERIFIED: ClassVar[bool] = False
    #: Static cache lengths are multiples of this many tokens (bounds the distinct compiled shapes).
    STATIC_CACHE_BUCKET: ClassVar[int] = 256
    #: Ask torch.compile for one graph per decode step; if that fails at warm-up, it is retried without.
    COMPILE_FULLGRAPH: ClassVar[bool] = True
    #: What ``decode="auto"`` means on a CPU: the path ``bench/answer.py --device cpu`` measured fastest there.
    CPU_DECODE: ClassVar[str] = "lean-fp16"

    def __init__(
        self,
        model: str | Path = "HuggingFaceTB/SmolVLM-256M-Instruct",
        device: str = "auto",
        instruction: str = SYSTEM_INSTRUCTION,
        image_longest_edge: int | None = PAGE_LONGEST_EDGE,
        decode: Decode = "auto",
        static_cache_tokens: int = 3072,
        page_cache: PageFeatureCache | None = None,
    ) -> None:
        if decode not in DECODE_MODES:
            raise ConfigError(f"unknown decode mode {decode!r}; use one of {', '.join(DECODE_MODES)}")
        if static_cache_tokens < 1:
            raise ConfigError(f"static_cache_tokens must be at least 1, got {static_cache_tokens}")
        self.model_id = str(model)
        self.device = resolve_device(device)
        self.instruction = instruction
        self.image_longest_edge = image_longest_edge
        self.decode = decode
        self.decode_mode: str = self._resolve_decode(decode)
        # torch.compile (CUDA graphs) only on CUDA; elsewhere the static cache runs uncompiled.
        self.compile_decode = self.decode_mode == "static" and self.device.type == "cuda"
        self.compile_fullgraph = self.COMPILE_FULLGRAPH
        self.static_cache_tokens = self._bucket(static_cache_tokens)
        self.warmed_up = False
        self.warmup_s: float | None = None
        self._weights = LazyWeights(self.model_id, "generator", ENV_VAR, self._load_processor, self._load_model)
        self._lock = threading.Lock()
        self._caches: dict[int, Any] = {}  # batch size -> StaticCache, reused (reset) across calls
        self._decode_thread: ThreadPoolExecutor | None = None
        #: Page features of the lean modes; its fingerprint is set from the model at load.
        self.page_cache = page_cache if page_cache is not None else PageFeatureCache()
        self._lean: LeanRunner | None = None
        self._lean_unsupported: list[str] = []

    def _resolve_decode(self, decode: str) -> str:
        if decode == "auto":
            if self.device.type == "cuda":
                return "static" if self.STATIC_DECODE_VERIFIED else "eager"
            return self.CPU_DECODE if self.device.type == "cpu" else "eager"
        return decode

    @property
    def lean(self) -> bool:
        """True when this generator answers through the lean CPU path (``decode_mode`` lean or lean-fp16)."""
        return self.decode_mode in LEAN_MODES

    def _bucket(self, tokens: int) -> int:
        return math.ceil(tokens / self.STATIC_CACHE_BUCKET) * self.STATIC_CACHE_BUCKET

    def load(self, warmup: bool | None = None) -> SmolVLMGenerator:
        """Load processor and weights; ``warmup`` (default: when decode steps are compiled) runs :meth:`warmup`.

        Lazy use (``generate`` without ``load``) loads but does not warm up: then the first request pays
        for compilation.
        """
        self._ensure_loaded()
        if warmup is None:
            warmup = self.compile_decode
        if warmup and not self.warmed_up:
            self.warmup()
        return self

    def _ensure_loaded(self) -> None:
        self._weights.get()
        if self.lean and self._lean is None:
            with self._lock:
                if self._lean is None:
                    self._lean = self._make_lean_runner()

    def _make_lean_runner(self) -> LeanRunner:
        import torch

        from rag.generators.smolvlm_lean import (
            LeanRunner,
            fp16_matmul_works,
            model_fingerprint,
            unsupported_generation_config,
        )

        processor, model = self._weights.get()
        weights: Literal["fp32", "fp16"] = "fp16" if self.decode_mode == "lean-fp16" else "fp32"
        if weights == "fp16" and (model.dtype != torch.float32 or not fp16_matmul_works()):
            log.warning("fp16 decode weights are unavailable here (dtype %s); decoding with fp32 weights", model.dtype)
            self.decode_mode, weights = "lean", "fp32"
        self._lean_unsupported = unsupported_generation_config(model)
        if self._lean_unsupported:
            log.warning(
                "the generator's generation config sets %s, which the lean path does not apply; answers go "
                "through generate", ", ".join(self._lean_unsupported)
            )
        ip = processor.image_processor
        geometry = {
            "size": dict(ip.size),
            "max_image_size": dict(ip.max_image_size),
            "page_size": self.page_size(),
            "longest_edge": self.image_longest_edge,
        }
        self.page_cache.fingerprint = model_fingerprint(self.model_id, model, geometry)
        return LeanRunner(processor, model, self.page_cache, weights, self.page_size())

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
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(self.model_id, **from_pretrained_kwargs())

    def _load_model(self) -> Any:
        from transformers import AutoModelForImageTextToText

        model: Any = AutoModelForImageTextToText.from_pretrained(
            self.model_id,
            **from_pretrained_kwargs(
                dtype=model_dtype(self.device), attn_implementation=attn_implementation(self.device)
            ),
        )
        return model.to(self.device).eval()

    # ------------------------------------------------------------------ prompting
    def build_inputs(
        self, question: str, images: Sequence[Image.Image], page_ids: Sequence[str] | None = None
    ) -> Any:
        """Chat-formatted inputs: every page image (fitted to the page budget), then the instruction and question.

        In the lean modes the pages come as their features (``image_features``, cached per page; ``page_ids``
        name the pages' files), not ``pixel_values``.
        """
        text = question_text(question, self.instruction)
        content: list[dict[str, str]] = [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        self._ensure_loaded()
        if self._lean is not None and not self._lean_unsupported:
            return self._lean.build_inputs(prompt, fit_pages(images, self.image_longest_edge), page_ids)
        kwargs: dict[str, Any] = {"text": prompt, "return_tensors": "pt"}
        if images:
            kwargs["images"] = [fit_pages(images, self.image_longest_edge)]
            size = self.page_size()
            if size is not None:
                kwargs["size"] = {"longest_edge": size}
        inputs = self.processor(**kwargs)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def page_size(self) -> int | None:
        """The longest edge each page is resized to before tiling: the token budget per page.

        SmolVLM's processor resizes every image to its own longest edge (2048 px: 4 x 4 tiles of
        512 px + a global view = 1,088 image tokens a page), upscaling smaller ones. Capping it at
        ``image_longest_edge`` (1,536 px: 3 x 3 tiles + global = 640 tokens with 64 tokens a tile)
        keeps 3 pages near 2k tokens of context. The cap is rounded down to whole tiles and never
        exceeds the processor's own size.
        """
        ip = self.processor.image_processor
        default = int(ip.size["longest_edge"])
        if self.image_longest_edge is None:
            return None
        tile = int(ip.max_image_size["longest_edge"])
        capped = max(tile, (min(self.image_longest_edge, default) // tile) * tile)
        return None if capped >= default else capped

    def _gen_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """Decoding settings every mode shares (greedy, lengths, special tokens)."""
        if max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens must be at least 1")
        tok = self.processor.tokenizer
        return {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
        }

    # ------------------------------------------------------------------ decode modes
    def _static_cache(self, batch_size: int, tokens: int) -> Any:
        """The reusable StaticCache for this batch size, at least ``tokens`` long, reset to empty.

        One cache per batch size, kept across calls: ``cache_implementation="static"`` would allocate a
        new one per ``generate`` call, and new tensor addresses make CUDA graph trees re-record the
        graph (after 128 re-records inductor stops using graphs for it). The length is rounded up to
        ``STATIC_CACHE_BUCKET`` and never shrinks, so a few shapes cover every request.
        """
        from transformers import StaticCache

        cache = self._caches.get(batch_size)
        if cache is None or cache.get_max_length() < tokens:
            old = cache.get_max_length() if cache is not None else 0
            length = max(self.static_cache_tokens, self._bucket(tokens), old)
            if cache is not None:
                log.info("static KV cache for batch %d grows to %d tokens (a new compiled shape)", batch_size, length)
            cache = StaticCache(config=self.model.config.get_text_config(decoder=True), max_cache_len=length)
            self._caches[batch_size] = cache
        else:
            cache.reset()
        return cache

    def _compile_config(self) -> Any:
        from transformers import CompileConfig

        return CompileConfig(fullgraph=self.compile_fullgraph, mode="reduce-overhead")

    def _model_generate(self, inputs: dict[str, Any], max_new_tokens: int, **extra: Any) -> Any:
        """``model.generate`` with this mode's cache and compile settings, on the calling thread.

        Static mode must only run this on the decode thread (see :meth:`_run`).
        """
        import torch

        kwargs = {**self._gen_kwargs(max_new_tokens), **extra}
        if (
            self._lean is not None
            and not self._lean_unsupported
            and "pixel_values" not in inputs
            and int(inputs["input_ids"].shape[0]) == 1
        ):
            kwargs.pop("do_sample", None)
            kwargs.pop("pad_token_id", None)
            return self._lean.generate(inputs, **kwargs)
        with torch.inference_mode():
            if self.decode_mode == "static":
                ids = inputs["input_ids"]
                kwargs["past_key_values"] = self._static_cache(
                    int(ids.shape[0]), int(ids.shape[1]) + int(kwargs["max_new_tokens"])
                )
                if self.compile_decode:
                    kwargs["compile_config"] = self._compile_config()
                else:
                    kwargs["disable_compile"] = True
            return self.model.generate(**inputs, **kwargs)

    def _init_decode_thread(self) -> None:
        """Give the decode thread the CUDA-graph-tree state torch keeps per thread.

        torch 2.9's cudagraph trees (``mode="reduce-overhead"``) look their state up in a
        ``threading.local`` filled only on the thread that imported the module, and assert on any other
        Python thread (pytorch/pytorch#123177, fixed upstream by creating it lazily per thread - the
        same thing done here).
        """
        if not self.compile_decode:
            return
        try:
            from torch._inductor import cudagraph_trees
        except ImportError:  # pragma: no cover - torch without inductor
            return
        local = cudagraph_trees.local
        if not hasattr(local, "tree_manager_containers"):
            local.tree_manager_containers = {}
            local.tree_manager_locks = collections.defaultdict(threading.Lock)

    def _run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` where this mode generates: the caller's thread (eager) or the one decode thread (static)."""
        if self.decode_mode != "static":
            return fn()
        with self._lock:
            if self._decode_thread is None:
                self._decode_thread = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="colsmol-decode", initializer=self._init_decode_thread
                )
            pool = self._decode_thread
        return pool.submit(fn).result()

    def run_generate(self, inputs: dict[str, Any], max_new_tokens: int, **extra: Any) -> Any:
        """``model.generate(**inputs, ...)`` in this decode mode; returns what ``generate`` returns.

        ``extra`` goes to ``generate`` as is (``streamer``, ``min_new_tokens``, ``logits_processor``...).
        """
        return self._run(lambda: self._model_generate(inputs, max_new_tokens, **extra))

    def warmup(self, max_new_tokens: int = 8) -> float:
        """Run two short generations so compilation and CUDA graph capture happen now; returns seconds.

        The prompt is text only: the prefill (where images go) is never compiled, and decode steps are
        text-only whatever the prompt. The static cache is sized to ``static_cache_tokens``, the length
        later requests up to that size reuse. In static mode with compilation, a failure with
        ``fullgraph=True`` is retried with ``fullgraph=False``; if that fails too, decoding falls back to
        eager (logged as an error) so the service still answers.
        """
        t0 = time.perf_counter()
        self._ensure_loaded()
        inputs = self.build_inputs("Warm-up: say hello.", [])
        while True:
            try:
                for _ in range(2):  # the 1st call compiles and warms up the graph, the 2nd replays it
                    self.run_generate(inputs, max_new_tokens, min_new_tokens=max_new_tokens)
                break
            except Exception as exc:
                if not self.compile_decode:
                    raise
                if self.compile_fullgraph:
                    log.warning("compiled decode with fullgraph=True failed (%s); retrying with fullgraph=False", exc)
                    self.compile_fullgraph = False
                else:
                    log.error("compiled static decode failed (%s); falling back to eager decoding", exc)
                    self.decode_mode, self.compile_decode = "eager", False
                    self._caches.clear()
        self.warmed_up = True
        self.warmup_s = time.perf_counter() - t0
        log.info(
            "generator warm-up: %.1f s (decode=%s, compiled=%s, fullgraph=%s)",
            self.warmup_s,
            self.decode_mode,
            self.compile_decode,
            self.compile_fullgraph if self.compile_decode else None,
        )
        return self.warmup_s

    def precompute(self, pages: Sequence[Image.Image], page_ids: Sequence[str]) -> int:
        """Compute and keep the lean path's features of ``pages`` (e.g. at ingest), so questions over them pay for
        their text only; returns how many were computed. A no-op outside the lean modes."""
        self._ensure_loaded()
        if self._lean is None or self._lean_unsupported:
            return 0
        before = self.page_cache.misses
        for page, pid in zip(fit_pages(pages, self.image_longest_edge), page_ids, strict=True):
            self._lean.page_features(page, pid)
        return self.page_cache.misses - before

    # ------------------------------------------------------------------ generation
    def _stopping(self, stop: threading.Event | None) -> dict[str, Any]:
        """``generate`` kwargs that end decoding within one step once ``stop`` is set."""
        if stop is None:
            return {}
        from transformers import StoppingCriteria, StoppingCriteriaList

        event = stop

        class _StopOnEvent(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                import torch

                return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

        return {"stopping_criteria": StoppingCriteriaList([_StopOnEvent()])}

    def generate(
        self,
        question: str,
        images: Sequence[Image.Image],
        max_new_tokens: int = 256,
        stop: threading.Event | None = None,
        page_ids: Sequence[str] | None = None,
    ) -> str:
        """The answer text (special tokens removed, whitespace trimmed)."""
        with answering():
            inputs = self.build_inputs(question, images, page_ids)
            out = self.run_generate(inputs, max_new_tokens, **self._stopping(stop))
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return str(self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()

    def stream(
        self,
        question: str,
        images: Sequence[Image.Image],
        max_new_tokens: int = 256,
        stop: threading.Event | None = None,
        page_ids: Sequence[str] | None = None,
    ) -> Iterator[str]:
        """Yield text pieces as they are decoded; joined, they equal ``generate``'s text.

        Generation ends within one decode step once ``stop`` is set, or when this iterator is closed
        (a consumer that stops reading must not leave the model decoding for nobody).
        """
        from transformers import TextIteratorStreamer

        with answering():
            inputs = self.build_inputs(question, images, page_ids)
        stop = stop or threading.Event()
        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600.0
        )
        errors: list[BaseException] = []
        extra = self._stopping(stop)

        def run() -> None:
            try:
                with answering():
                    self.run_generate(inputs, max_new_tokens, streamer=streamer, **extra)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                errors.append(exc)
                streamer.end()

        # A short-lived thread waits for the generation (in static mode it queues on the decode thread).
        worker = threading.Thread(target=run, name="colsmol-generate", daemon=True)
        worker.start()
        try:
            first = True
            for piece in streamer:
                if first:
                    piece = piece.lstrip()
                    first = False
                if piece:
                    yield piece
        finally:
            stop.set()  # normal end: a no-op; early close: the decode loop ends at its next step
            worker.join()
        if errors:
            if isinstance(errors[0], ColsmolError):
                raise errors[0]
            raise ColsmolError(f"generation failed: {errors[0]}") from errors[0]

    def close(self) -> None:
        with self._lock:
            if self._decode_thread is not None:
                self._decode_thread.shutdown(wait=False, cancel_futures=True)
                self._decode_thread = None
            self._caches.clear()
            self.warmed_up = False
            self._lean = None
        self.page_cache.clear_memory()
        self._weights.clear()
