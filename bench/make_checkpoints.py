"""Write full-size random-weight checkpoints with the exact architecture of the real models.

No machine here reaches the Hugging Face hub, so benchmarks run on random weights with the real
shapes: SigLIP-base patch16/512 vision tower, SmolLM2-135M text model, scale factor 4 (64 image
tokens per 512 px tile), processor longest edge 2048 with 512 px tiles. Throughput then matches
vidore/colSmol-256M and SmolVLM-256M-Instruct even though the outputs mean nothing.

    python bench/make_checkpoints.py OUT_DIR      # writes OUT_DIR/encoder and OUT_DIR/generator
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.checkpoints import CHAT_TEMPLATE, build_tokenizer  # noqa: E402

VOCAB = 49_280  # SmolVLM's vocabulary size
TILE, PATCH, SCALE, LONGEST = 512, 16, 4, 2048
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2  # 64


def full_config(tokenizer):  # -> Idefics3Config
    from transformers import Idefics3Config

    return Idefics3Config(
        vision_config={  # SigLIP base, patch 16, 512 px
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": TILE,
            "patch_size": PATCH,
        },
        text_config={  # SmolLM2-135M
            "model_type": "llama",
            "vocab_size": VOCAB,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "rope_theta": 100_000.0,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": True,
        },
        scale_factor=SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def full_processor(tokenizer, cls):
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    ip = Idefics3ImageProcessorPil(
        size={"longest_edge": LONGEST}, max_image_size={"longest_edge": TILE}, do_image_splitting=True
    )
    return cls(image_processor=ip, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()

    import torch
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from transformers import Idefics3ForConditionalGeneration, Idefics3Processor

    torch.manual_seed(0)
    t = time.perf_counter()
    tok = build_tokenizer()
    cfg = full_config(tok)
    enc = ColIdefics3(cfg)
    enc.save_pretrained(args.out / "encoder")
    full_processor(tok, ColIdefics3Processor).save_pretrained(args.out / "encoder")
    n_enc = sum(p.numel() for p in enc.parameters())
    del enc
    gen = Idefics3ForConditionalGeneration(cfg)
    gen.generation_config.eos_token_id = tok.eos_token_id
    gen.generation_config.pad_token_id = tok.pad_token_id
    gen.save_pretrained(args.out / "generator")
    full_processor(tok, Idefics3Processor).save_pretrained(args.out / "generator")
    n_gen = sum(p.numel() for p in gen.parameters())
    print(f"encoder {n_enc / 1e6:.0f}M params, generator {n_gen / 1e6:.0f}M params -> {args.out} "
          f"in {time.perf_counter() - t:.0f}s")


if __name__ == "__main__":
    main()
