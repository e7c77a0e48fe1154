"""Random-weight ColSmolVLM / SmolVLM checkpoints built from config: tiny ones for tests, full-size for benchmarks.

No machine here reaches the Hugging Face hub, so the tests build real (tiny) Idefics3 models and
processors, save them with ``save_pretrained`` and load them back through the production
``from_pretrained`` path. The tokenizer is a byte-level BPE made with ``tokenizers`` that carries the
Idefics3 special tokens. Weights are random: outputs mean nothing, shapes and code paths are real.

Tiny geometry (kept small so CPU tests are fast, about 2 s to build): 32 px tiles, 8 px patches, scale
factor 2, so each tile is 4 image tokens; the processor resizes to a longest edge of 64 px, so a page
is at most 2 x 2 tiles + 1 global view.

Full size (:func:`build_full`, for ``bench/``): the real architecture, SigLIP-base patch16/512 vision
tower, SmolLM2-135M text model, scale factor 4 (64 image tokens per 512 px tile), processor longest
edge 2048 with 512 px tiles. Throughput then matches vidore/colSmol-256M and SmolVLM-256M-Instruct
even though the outputs mean nothing.
"""

from __future__ import annotations

from pathlib import Path

TILE = 32
PATCH = 8
SCALE = 2
LONGEST_EDGE = 64
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<end_of_utterance>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]

# SmolVLM's chat template: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant:".
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

_CORPUS = [
    "Query: what is the revenue in 2023? Describe the image.",
    "User: Assistant: The answer is on page two. The document does not contain the answer.",
    "invoice total amount due date tax table figure chart report summary annual quarterly",
    "the quick brown fox jumps over the lazy dog 0123456789 .,;:!?()[]{}<>-_=+*/%$#@&",
]
# A blank line is one token in SmolVLM's vocabulary, and llama.cpp's Idefics3 prompt builder looks it up by name
# ("\n\n" before the global image): the tiny generator's vocabulary has it too (tests serve it with llama.cpp).
_BLANK_LINES = "Sources:\n\n\n\n\n\n"


def build_tokenizer(out_dir: Path | None = None, blank_line_token: bool = False):  # -> PreTrainedTokenizerFast
    """A small byte-level BPE tokenizer with the Idefics3 special tokens (and ``"\\n\\n"`` as one token when
    ``blank_line_token``, as SmolVLM's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_CORPUS + ([_BLANK_LINES] if blank_line_token else [])) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        padding_side="left",
        model_max_length=4096,
    )
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast


def build_config(tokenizer):  # -> Idefics3Config
    from transformers import Idefics3Config

    vocab = len(tokenizer)
    return Idefics3Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TILE,
            "patch_size": PATCH,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": False,
        },
        scale_factor=SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_processor(tokenizer, processor_cls=None, longest_edge=LONGEST_EDGE, tile=TILE, image_seq_len=IMAGE_SEQ_LEN):
    """An Idefics3 processor, tiny geometry unless told; ``processor_cls`` may be ``ColIdefics3Processor``."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": longest_edge},
        max_image_size={"longest_edge": tile},
        do_image_splitting=True,
    )
    cls = processor_cls or Idefics3Processor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=CHAT_TEMPLATE,
    )


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def build_encoder(out_dir: Path, seed: int = 0) -> Path:
    """A merged tiny ColIdefics3 checkpoint + ColIdefics3Processor, saved in ``out_dir``."""
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor

    _seed(seed)
    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    model = ColIdefics3(config)
    model.save_pretrained(out_dir)
    build_processor(tokenizer, ColIdefics3Processor).save_pretrained(out_dir)
    return out_dir


def build_encoder_real_geometry(out_dir: Path, seed: int = 0) -> Path:
    """A tiny ColIdefics3 (the same small widths as :func:`build_encoder`) at the real page geometry: 512 px
    tiles, 16 px patches, scale factor 4 (64 tokens a tile), longest edge 2048 (17 tiles a Letter page).

    Its forward pass costs little, so an ingest with it measures the pipeline around the encoder (rendering,
    preprocessing at full size, page images, store writes) at the shapes the real model sees (``bench/ingest.py
    --tiny``)."""
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor

    _seed(seed)
    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    config.vision_config.image_size = FULL_TILE
    config.vision_config.patch_size = FULL_PATCH
    config.scale_factor = FULL_SCALE
    model = ColIdefics3(config)
    model.save_pretrained(out_dir)
    full_processor(tokenizer, ColIdefics3Processor).save_pretrained(out_dir)
    return out_dir


def build_encoder_adapter(base_dir: Path, adapter_dir: Path, seed: int = 1) -> Path:
    """A PEFT LoRA adapter over the tiny base, laid out like ``vidore/colSmol-256M``.

    The LoRA ``B`` matrices are randomized (PEFT initializes them to zero), so the adapter really
    changes the output and a loader that forgot to apply it would be caught.
    """
    import torch
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from peft import LoraConfig, get_peft_model

    _seed(seed)
    base = ColIdefics3.from_pretrained(base_dir)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r".*(text_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(linear)$",
        init_lora_weights="gaussian",
    )
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(adapter_dir)
    # The adapter records where its base lives: a local dir here, a hub id for the real model.
    import json

    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    ColIdefics3Processor.from_pretrained(base_dir).save_pretrained(adapter_dir)
    return adapter_dir


def build_generator(out_dir: Path, seed: int = 2) -> Path:
    """A tiny Idefics3ForConditionalGeneration (SmolVLM's architecture) + processor."""
    from transformers import Idefics3ForConditionalGeneration

    _seed(seed)
    tokenizer = build_tokenizer(blank_line_token=True)
    config = build_config(tokenizer)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    build_processor(tokenizer).save_pretrained(out_dir)
    return out_dir


def build_all(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    enc = build_encoder(root / "encoder")
    adapter = build_encoder_adapter(enc, root / "encoder-adapter")
    gen = build_generator(root / "generator")
    return {"encoder": enc, "adapter": adapter, "generator": gen}


# ---------------------------------------------------------------------------------------------- full size
FULL_VOCAB = 49_280  # SmolVLM's vocabulary size
FULL_TILE, FULL_PATCH, FULL_SCALE, FULL_LONGEST = 512, 16, 4, 2048
FULL_IMAGE_SEQ_LEN = (FULL_TILE // FULL_PATCH) ** 2 // FULL_SCALE**2  # 64


def full_config(tokenizer):  # -> Idefics3Config
    """The real Idefics3 shapes of ColSmol-256M / SmolVLM-256M (SigLIP-base/512 + SmolLM2-135M)."""
    from transformers import Idefics3Config

    return Idefics3Config(
        vision_config={  # SigLIP base, patch 16, 512 px
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": FULL_TILE,
            "patch_size": FULL_PATCH,
        },
        text_config={  # SmolLM2-135M
            "model_type": "llama",
            "vocab_size": FULL_VOCAB,
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
        scale_factor=FULL_SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def full_processor(tokenizer, cls):
    """The real processor geometry (longest edge 2048, 512 px tiles) with the PIL reference image processor."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    ip = Idefics3ImageProcessorPil(
        size={"longest_edge": FULL_LONGEST}, max_image_size={"longest_edge": FULL_TILE}, do_image_splitting=True
    )
    return cls(image_processor=ip, tokenizer=tokenizer, image_seq_len=FULL_IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)


def build_full(out: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``out/encoder`` (ColIdefics3) and ``out/generator`` (Idefics3ForConditionalGeneration), full size."""
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from transformers import Idefics3ForConditionalGeneration, Idefics3Processor

    _seed(seed)
    tok = build_tokenizer()
    cfg = full_config(tok)
    enc = ColIdefics3(cfg)
    enc.save_pretrained(out / "encoder")
    full_processor(tok, ColIdefics3Processor).save_pretrained(out / "encoder")
    del enc
    # The generator's vocabulary has "\n\n" as one token, as SmolVLM's (llama.cpp's Idefics3 prompt builder looks
    # it up: bench/answer_llamacpp.py serves this checkpoint); the special tokens keep their ids.
    gen_tok = build_tokenizer(blank_line_token=True)
    gen = Idefics3ForConditionalGeneration(cfg)
    gen.generation_config.eos_token_id = gen_tok.eos_token_id
    gen.generation_config.pad_token_id = gen_tok.pad_token_id
    gen.save_pretrained(out / "generator")
    full_processor(gen_tok, Idefics3Processor).save_pretrained(out / "generator")
    return {"encoder": out / "encoder", "generator": out / "generator"}
