"""One-token decode steps of SmolVLM's Llama text model, without ``generate``'s machinery: for CPUs.

On a CPU, transformers' decode step for SmolLM2-135M (30 layers) is dominated by what surrounds the
matrix-vector products: the ``DynamicCache`` concatenates every layer's keys and values into new tensors
each token (about 2-4 ms a token at 2k tokens of context, and fresh allocations that cost page faults),
and the module and mask machinery adds Python work per layer. :class:`LeanDecoder` runs the same
arithmetic over key/value buffers allocated once (grown in buckets), reusing the model's own weights.

``weights="fp32"`` repeats the eager step's operations one for one (same weights, same kernels, same
shapes), so its greedy tokens equal ``generate``'s (tested). ``weights="fp16"`` keeps fp16 copies of the
decoder's projection matrices and of the output head (query/key/value and gate/up fused): the
matrix-vector products, which read every weight once per token, move half the bytes; activations, the
key/value cache, norms and attention stay fp32. That is not exact: its agreement with eager is measured
(``bench/answer.py``) and stated in BENCHMARKS.md.

The prefill (the prompt, with the page features merged in) is not done here: it runs through the model's
own forward, and :meth:`LeanDecoder.start` copies the cache it filled.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

DecodeWeights = Literal["fp32", "fp16"]
#: Key/value buffers grow by this many positions at a time (a copy per growth, not per token).
KV_BUCKET = 256


class LeanDecoder:
    """Greedy-decode helper over ``text_model`` (a transformers ``LlamaModel``) and its ``lm_head``.

    Usage: ``start(cache, length)`` after the prefill, then ``step(token) -> logits (1, vocab)`` for each
    generated token, in order. Not thread-safe: one generation at a time.
    """

    def __init__(self, text_model: Any, lm_head: Any, weights: DecodeWeights = "fp32") -> None:
        import torch

        if weights not in ("fp32", "fp16"):
            raise ValueError(f"weights must be fp32 or fp16, got {weights!r}")
        cfg = text_model.config
        self.weights = weights
        self.text_model = text_model
        self.layers = list(text_model.layers)
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.scaling = self.head_dim**-0.5
        self.hidden = int(cfg.hidden_size)
        self.embed = text_model.get_input_embeddings()
        self.norm = text_model.norm
        self.rotary = text_model.rotary_emb
        self.lm_head = lm_head
        self.act = self.layers[0].mlp.act_fn
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self.length = 0
        self._half: list[tuple[torch.Tensor, ...]] = []
        self._head_half: torch.Tensor | None = None
        if weights == "fp16":
            with torch.no_grad():
                for layer in self.layers:
                    a, m = layer.self_attn, layer.mlp
                    qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).half()
                    gate_up = torch.cat([m.gate_proj.weight, m.up_proj.weight]).half()
                    self._half.append((qkv, a.o_proj.weight.half(), gate_up, m.down_proj.weight.half()))
                self._head_half = lm_head.weight.detach().half()

    # ------------------------------------------------------------------ cache
    @property
    def capacity(self) -> int:
        return int(self._k[0].shape[2]) if self._k else 0

    def _grow(self, needed: int) -> None:
        import torch

        cap = math.ceil(needed / KV_BUCKET) * KV_BUCKET
        for i in range(len(self.layers)):
            for bufs in (self._k, self._v):
                old = bufs[i] if i < len(bufs) else None
                ref = old if old is not None else self._k[0]
                new = torch.empty((ref.shape[0], self.n_kv, cap, self.head_dim), dtype=ref.dtype, device=ref.device)
                if old is not None:
                    new[:, :, : self.length].copy_(old[:, :, : self.length])
                    bufs[i] = new
                else:
                    bufs.append(new)

    def start(self, cache: Any, length: int, reserve: int = 0) -> None:
        """Take over the keys and values ``cache`` (a filled transformers ``DynamicCache``) holds for ``length``
        positions, with room for ``reserve`` more before the first growth."""
        import torch

        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        if len(keys) != len(self.layers) or int(keys[0].shape[2]) != length:
            raise ValueError(f"the cache holds {int(keys[0].shape[2])} positions in {len(keys)} layers, not {length}")
        cap = math.ceil((length + max(reserve, 1)) / KV_BUCKET) * KV_BUCKET
        self._k, self._v = [], []
        for k, v in zip(keys, values, strict=True):
            kb = torch.empty((k.shape[0], self.n_kv, cap, self.head_dim), dtype=k.dtype, device=k.device)
            vb = torch.empty_like(kb)
            kb[:, :, :length].copy_(k)
            vb[:, :, :length].copy_(v)
            self._k.append(kb)
            self._v.append(vb)
        self.length = length

    def release(self) -> None:
        self._k, self._v, self.length = [], [], 0

    # ------------------------------------------------------------------ one token
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, vocab)`` (float32) for ``token`` ``(batch, 1)`` at the next position; appends its keys
        and values to the cache."""
        if not self._k:
            raise RuntimeError("start() first: the decoder has no prefilled cache")
        if self.length + 1 > self.capacity:
            self._grow(self.length + 1)
        logits = self._step_half(token) if self.weights == "fp16" else self._step_exact(token)
        self.length += 1
        return logits

    def _step_exact(self, token: torch.Tensor) -> torch.Tensor:
        """The eager step's operations, one for one, over the preallocated cache."""
        import torch
        import torch.nn.functional as F

        p = self.length
        h = self.embed(token)
        cos, sin = self.rotary(h, torch.tensor([[p]], device=h.device))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        bsz = h.shape[0]
        for i, layer in enumerate(self.layers):
            a, m = layer.self_attn, layer.mlp
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(bsz, 1, -1, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(bsz, 1, -1, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(bsz, 1, -1, self.head_dim).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            kb, vb = self._k[i], self._v[i]
            kb[:, :, p : p + 1].copy_(k)
            vb[:, :, p : p + 1].copy_(v)
            o = F.scaled_dot_product_attention(
                q,
                kb[:, :, : p + 1],
                vb[:, :, : p + 1],
                dropout_p=0.0,
                scale=self.scaling,
                is_causal=False,
                enable_gqa=self.n_heads != self.n_kv,
            )
            o = a.o_proj(o.transpose(1, 2).contiguous().reshape(bsz, 1, -1).contiguous())
            h = h + o
            x = layer.post_attention_layernorm(h)
            h = h + m.down_proj(self.act(m.gate_proj(x)) * m.up_proj(x))
        h = self.norm(h)
        logits: torch.Tensor = self.lm_head(h[:, -1:, :])[:, -1, :].to(copy=True, dtype=torch.float32)
        return logits

    def _step_half(self, token: torch.Tensor) -> torch.Tensor:
        """fp16 weights, fp32 activations, fused projections and as few tensor operations as possible."""
        import torch
        import torch.nn.functional as F

        p = self.length
        h = self.embed(token).view(-1, self.hidden)  # (batch, hidden)
        bsz = h.shape[0]
        cos, sin = self.rotary(h, torch.tensor([[p]], device=h.device))  # (1, 1, head_dim)
        nq, nk = self.n_heads, self.n_kv
        half_dim = self.head_dim // 2
        for i, layer in enumerate(self.layers):
            qkv_w, o_w, gate_up_w, down_w = self._half[i]
            x = F.rms_norm(h, (self.hidden,), layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
            qkv = F.linear(x.half(), qkv_w).float().view(bsz, nq + 2 * nk, self.head_dim)
            qk = qkv[:, : nq + nk]
            qk = qk * cos + torch.cat((-qk[..., half_dim:], qk[..., :half_dim]), dim=-1) * sin
            self._k[i][:, :, p].copy_(qk[:, nq:])
            self._v[i][:, :, p].copy_(qkv[:, nq + nk :])
            # Query heads grouped by the key/value head they share (as transformers' pack_gqa), no mask needed.
            o = F.scaled_dot_product_attention(
                qk[:, :nq].reshape(bsz, nk, nq // nk, self.head_dim),
                self._k[i][:, :, : p + 1],
                self._v[i][:, :, : p + 1],
                scale=self.scaling,
            )
            h = h + F.linear(o.reshape(bsz, -1).half(), o_w).float()
            x = F.rms_norm(
                h,
                (self.hidden,),
                layer.post_attention_layernorm.weight,
                layer.post_attention_layernorm.variance_epsilon,
            )
            gate, up = F.linear(x.half(), gate_up_w).float().chunk(2, dim=-1)
            h = h + F.linear((self.act(gate) * up).half(), down_w).float()
        h = F.rms_norm(h, (self.hidden,), self.norm.weight, self.norm.variance_epsilon)
        assert self._head_half is not None
        return F.linear(h.half(), self._head_half).float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
