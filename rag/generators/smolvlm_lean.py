"""The CPU path of :class:`rag.generators.smolvlm.SmolVLMGenerator` (``decode="lean"`` / ``"lean-fp16"``).

What a question costs on a CPU with transformers' ``generate`` (full-size SmolVLM-256M, 2 cores): the
vision tower over every tile of every page (about 10 tiles a page at the 1,536 px budget, 1.5-2.7 s each),
then the prompt, then each token through the ``DynamicCache`` machinery. This path:

1. **Page features once** (:mod:`rag.generators.page_features`): each page's tiles go through the vision
   tower and connector alone, and the result is kept by page content (and on disk beside the page image
   when the pipeline gives page ids). A question over pages seen before pays for its text only; the
   pixels are not even re-tiled (the prompt's image tokens come from the cached tiling).
2. **Prefill** through the model's own text forward over the merged embeddings (transformers'
   ``inputs_merger``), exactly as ``generate`` does.
3. **Decode** by :class:`rag.generators.lean_decode.LeanDecoder` over a preallocated key/value cache:
   fp32 (the same tokens as eager) or fp16 weights (half the bytes per token; measured, not exact).

Batch 1 only; anything else (``pixel_values`` given, several prompts) goes to ``generate``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from indexer.errors import InvalidRequest
from rag.generators.lean_decode import DecodeWeights, LeanDecoder
from rag.generators.page_features import PageFeatureCache, PageFeatures, page_digest

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

#: The key ``build_inputs`` uses for the pages' merged features in lean mode (instead of ``pixel_values``).
FEATURES = "image_features"


def fp16_matmul_works() -> bool:
    """Whether this torch build multiplies fp16 matrices on the CPU (the fp16 decode weights need it)."""
    import torch
    import torch.nn.functional as F

    try:
        out = F.linear(torch.ones(1, 8, dtype=torch.float16), torch.ones(4, 8, dtype=torch.float16))
        return bool(torch.all(out == 8))
    except (RuntimeError, NotImplementedError):
        return False


#: Generation-config fields that make ``generate`` add logits processors to greedy decoding; the lean loop
#: applies none of them, so a checkpoint that sets one is answered by ``generate`` instead.
_PROCESSOR_FIELDS = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "exponential_decay_length_penalty": (None,),
}


def unsupported_generation_config(model: Any) -> list[str]:
    """The fields of ``model.generation_config`` the lean loop does not reproduce (empty: it gives eager's tokens)."""
    cfg = model.generation_config
    return [f for f, neutral in _PROCESSOR_FIELDS.items() if getattr(cfg, f, None) not in neutral]


def model_fingerprint(model_id: str, model: Any, geometry: dict[str, Any]) -> str:
    """What page features depend on besides the pixels: the model (its config and a sample of every vision and
    connector weight, so a retrained checkpoint under the same name does not reuse old features) and the tiling."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps({"model": model_id, **geometry}, sort_keys=True, default=str).encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, param in [*model.model.vision_model.named_parameters(), *model.model.connector.named_parameters()]:
            h.update(name.encode())
            h.update(param.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


class LeanRunner:
    """Page features through ``cache``, the prompt, prefill and greedy decode for one question (batch 1)."""

    def __init__(
        self, processor: Any, model: Any, cache: PageFeatureCache, weights: DecodeWeights, size: int | None
    ) -> None:
        self.processor = processor
        self.model = model
        self.cache = cache
        self.size = size
        self.decoder = LeanDecoder(model.model.text_model, model.lm_head, weights)
        # One key/value cache: generations on several threads take turns (a CPU runs one at a time anyway).
        self._generating = threading.Lock()

    # ------------------------------------------------------------------ inputs
    def page_features(self, image: Image.Image, page_id: str | None = None, size: int | None = None) -> PageFeatures:
        """``image`` (already fitted to the page budget) as the connector's output, from the cache or computed.

        ``size`` overrides the longest edge the processor resizes to (the tiling) for this image: a low-resolution
        overview of a page is one 512 px tile at ``size=512``.
        """
        size = size if size is not None else self.size
        digest = page_digest(image) + (f"@{size}" if size is not None else "")
        found = self.cache.get(digest, page_id)
        if found is not None:
            return found
        import torch

        kwargs: dict[str, Any] = {"return_tensors": "pt", "return_row_col_info": True}
        if size is not None:
            kwargs["size"] = {"longest_edge": size}
        px = self.processor.image_processor(images=[[image]], **kwargs)
        dtype, device = self.model.dtype, self.model.device
        with torch.inference_mode():
            out = self.model.model.get_image_features(
                px["pixel_values"].to(device=device, dtype=dtype),
                px["pixel_attention_mask"].to(device),
                return_dict=True,
            )
        features = PageFeatures(int(px["rows"][0][0]), int(px["cols"][0][0]), out.pooler_output[0].detach().clone())
        self.cache.put(digest, features, page_id)
        return features

    def build_inputs(
        self,
        prompt: str,
        images: Sequence[Image.Image],
        page_ids: Sequence[str | None] | None = None,
        sizes: Sequence[int | None] | None = None,
    ) -> dict[str, Any]:
        """Token ids of ``prompt`` (the chat template's text with one ``<image>`` per image) with each image's
        tokens spelled out as the processor does, and the images' features in prompt order.

        ``sizes`` gives an image its own tiling (see :meth:`page_features`): the hook for showing a page as a
        low-resolution overview plus the regions a search hit cited, each at full resolution.
        """
        import torch

        proc = self.processor
        ids = list(page_ids) if page_ids is not None else [None] * len(images)
        per_image = list(sizes) if sizes is not None else [None] * len(images)
        if len(ids) != len(images) or len(per_image) != len(images):
            raise InvalidRequest(f"{len(ids)} page ids and {len(per_image)} sizes for {len(images)} images")
        pages = [self.page_features(img, pid, size) for img, pid, size in zip(images, ids, per_image, strict=True)]
        parts = prompt.split(proc.image_token)
        if len(parts) != len(pages) + 1:
            raise InvalidRequest(f"the question may not contain {proc.image_token!r}")
        text = parts[0]
        for page, rest in zip(pages, parts[1:], strict=True):
            text += proc.replace_image_token({"rows": [[page.rows]], "cols": [[page.cols]]}, 0) + rest
        enc = proc.tokenizer(text, return_tensors="pt")
        inputs: dict[str, Any] = {
            "input_ids": enc["input_ids"].to(self.model.device),
            "attention_mask": enc["attention_mask"].to(self.model.device),
        }
        if pages:
            inputs[FEATURES] = torch.cat([p.features for p in pages]).to(self.model.device, self.model.dtype)
        return inputs

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        inputs: dict[str, Any],
        max_new_tokens: int,
        eos_token_id: int | Sequence[int] | None,
        *,
        streamer: Any = None,
        stopping_criteria: Any = None,
        logits_processor: Any = None,
        min_new_tokens: int = 0,
    ) -> torch.Tensor:
        """Greedy tokens after the prompt, as ``generate`` returns them: ``(1, prompt + new)``.

        ``streamer`` (``put``/``end``), ``stopping_criteria`` and ``logits_processor`` behave as in ``generate``;
        end-of-answer tokens are suppressed until ``min_new_tokens`` (as its ``MinNewTokensLengthLogitsProcessor``).
        """
        import torch
        from transformers import DynamicCache

        input_ids = inputs["input_ids"]
        if int(input_ids.shape[0]) != 1:
            raise ValueError("the lean path generates for one prompt at a time")
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        eos_t = torch.tensor(eos, device=input_ids.device, dtype=torch.long)
        model = self.model
        if streamer is not None:
            streamer.put(input_ids.cpu())
        try:
            with self._generating, torch.inference_mode():
                embeds = model.model.text_model.get_input_embeddings()(input_ids)
                features = inputs.get(FEATURES)
                if features is not None:
                    embeds = model.model.inputs_merger(
                        input_ids=input_ids, inputs_embeds=embeds, image_hidden_states=features
                    )
                cache = DynamicCache(config=model.config.text_config)
                out = model.model.text_model(
                    inputs_embeds=embeds,
                    attention_mask=inputs.get("attention_mask"),
                    past_key_values=cache,
                    use_cache=True,
                )
                logits = model.lm_head(out.last_hidden_state[:, -1:, :])[:, -1, :].to(copy=True, dtype=torch.float32)
                prompt_len = int(input_ids.shape[1])
                self.decoder.start(cache, prompt_len, reserve=max_new_tokens)
                del cache, out, embeds
                ids: torch.Tensor = input_ids
                for n in range(max_new_tokens):
                    if n < min_new_tokens and eos:
                        logits[:, eos_t] = float("-inf")
                    if logits_processor is not None:
                        logits = logits_processor(ids, logits)
                    token = torch.argmax(logits, dim=-1)
                    ids = torch.cat([ids, token[:, None]], dim=-1)
                    if streamer is not None:
                        streamer.put(token.cpu())
                    if eos and bool(torch.isin(token, eos_t).all()):
                        break
                    if stopping_criteria is not None and bool(stopping_criteria(ids, logits).all()):
                        break
                    if n + 1 < max_new_tokens:
                        logits = self.decoder.step(token[:, None])
            return ids
        finally:
            self.decoder.release()
            if streamer is not None:
                streamer.end()
