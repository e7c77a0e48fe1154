"""SmolVLM answers over page images, through transformers' ``AutoModelForImageTextToText``.

``generate`` returns the whole text; ``stream`` yields text pieces as they are decoded, through a
``TextIteratorStreamer`` fed by ``generate`` running on a worker thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.device import attn_implementation, model_dtype, resolve_device
from indexer.errors import ColsmolError, InvalidRequest
from indexer.models import from_pretrained_kwargs, load_or_explain

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

ENV_VAR = "COLSMOL_GENERATOR_MODEL"

SYSTEM_INSTRUCTION = (
    "Answer the question using only the document pages shown. "
    "If the pages do not contain the answer, say that the documents do not contain it."
)


class SmolVLMGenerator:
    """Vision-language generation with SmolVLM (any Idefics3-architecture checkpoint).

    Device, dtype and missing-model rules match the encoder: bf16 + SDPA on CUDA, fp32 on CPU, and a
    ``ModelUnavailable`` naming ``COLSMOL_GENERATOR_MODEL`` when the weights cannot be had.
    Decoding is greedy by default so the same question gives the same answer.
    """

    def __init__(
        self,
        model: str | Path = "HuggingFaceTB/SmolVLM-256M-Instruct",
        device: str = "auto",
        instruction: str = SYSTEM_INSTRUCTION,
        image_longest_edge: int | None = 1536,
    ) -> None:
        self.model_id = str(model)
        self.device = resolve_device(device)
        self.instruction = instruction
        self.image_longest_edge = image_longest_edge
        self._model: Any = None
        self._processor: Any = None
        self._lock = threading.Lock()

    def load(self) -> SmolVLMGenerator:
        with self._lock:
            if self._model is None:
                self._processor = load_or_explain(self._load_processor, self.model_id, "generator", ENV_VAR)
                self._model = load_or_explain(self._load_model, self.model_id, "generator", ENV_VAR)
        return self

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def processor(self) -> Any:
        self.load()
        return self._processor

    @property
    def model(self) -> Any:
        self.load()
        return self._model

    def _load_processor(self) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(self.model_id, **from_pretrained_kwargs())

    def _load_model(self) -> Any:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(
            self.model_id,
            **from_pretrained_kwargs(
                dtype=model_dtype(self.device), attn_implementation=attn_implementation(self.device)
            ),
        )
        return model.to(self.device).eval()

    # ------------------------------------------------------------------ prompting
    def build_inputs(self, question: str, images: Sequence[Image.Image]) -> Any:
        """Chat-formatted inputs: every page image, then the instruction and the question."""
        if not question or not question.strip():
            raise InvalidRequest("the question is empty")
        content: list[dict[str, str]] = [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": f"{self.instruction}\nQuestion: {question.strip()}"})
        messages = [{"role": "user", "content": content}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        kwargs: dict[str, Any] = {"text": prompt, "return_tensors": "pt"}
        if images:
            kwargs["images"] = [[img.convert("RGB") for img in images]]
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
        if max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens must be at least 1")
        tok = self.processor.tokenizer
        return {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
        }

    # ------------------------------------------------------------------ generation
    def generate(self, question: str, images: Sequence[Image.Image], max_new_tokens: int = 256) -> str:
        """The answer text (special tokens removed, whitespace trimmed)."""
        import torch

        inputs = self.build_inputs(question, images)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self._gen_kwargs(max_new_tokens))
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return str(self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()

    def stream(self, question: str, images: Sequence[Image.Image], max_new_tokens: int = 256) -> Iterator[str]:
        """Yield text pieces as they are decoded; joined, they equal ``generate``'s text."""
        import torch
        from transformers import TextIteratorStreamer

        inputs = self.build_inputs(question, images)
        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600.0
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**inputs, **self._gen_kwargs(max_new_tokens), streamer=streamer)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name="colsmol-generate", daemon=True)
        worker.start()
        first = True
        for piece in streamer:
            if first:
                piece = piece.lstrip()
                first = False
            if piece:
                yield piece
        worker.join()
        if errors:
            raise ColsmolError(f"generation failed: {errors[0]}") from errors[0]

    def close(self) -> None:
        with self._lock:
            self._model = None
            self._processor = None
