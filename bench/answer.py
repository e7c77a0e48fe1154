"""SmolVLM answer latency: time to first token and decode tokens/s at batch 1, and batch-8 tokens/s.

The inputs are those of ``RAGPipeline.answer``: ``--pages`` Letter pages rendered at 150 dpi, shrunk to
``rag.generators.prompt.PAGE_LONGEST_EDGE``, one question, ``SmolVLMGenerator.build_inputs`` (chat template, Idefics3
tiling). Every generation is forced to exactly ``--new-tokens`` tokens (``min_new_tokens`` =
``max_new_tokens``), so a random-weight checkpoint that emits end-of-answer at once still decodes N tokens.
Measured in one run, median of ``--reps``:

- TTFT (stream): ``SmolVLMGenerator.stream`` from the call (inputs built inside) to the first text piece.
  Its streamer holds a partial word back, so with random weights generation is restricted to tokens
  that decode to one space-led word (the full-size random checkpoint has a 49,280-row head but a small
  test tokenizer, whose other ids decode to nothing, and random text may have no word boundary); the
  number of tokens decoded before that piece is reported (2 is what real text gives: the first word
  is held until the next starts).
- TTFT (token): ``model.generate`` on ``build_inputs`` with a streamer that only timestamps each token:
  from before ``build_inputs`` to the first generated token on the host.
- decode tokens/s at batch 1: (N - 1) / (last token - first token), same run as TTFT (token);
  also plain ``generate`` without a streamer: (N - 1) / (time(N tokens) - time(1 token)).
- batch 8: 8 questions over the same pages, left-padded into one ``generate`` call; total tokens/s
  = 8 N / time, and decode-only 8 (N - 1) / (time(N) - time(1)).

``--decode eager,static`` (the default) measures each decode mode of ``SmolVLMGenerator`` in turn, one
row each, with a fresh generator per mode (``load()`` includes the warm-up, i.e. compilation and CUDA
graph capture in static mode on CUDA; its time is reported as ``load_s`` / ``warmup_s``). ``eager`` is
transformers' plain ``generate``, the baseline. Every row also reports ``same_tokens_as_first_mode``:
how many of the N forced greedy tokens equal those of the first mode listed, from the start (bf16
compiled kernels may round differently, so a late divergence on random weights is not an error), and
on CUDA the torch.compile counters (unique graphs, graph breaks, CUDA graph skips).

On the GPU machine, with the full-size random checkpoint (bench/make_checkpoints.py):

    python bench/make_checkpoints.py /tmp/ckpt
    python bench/answer.py --model /tmp/ckpt/generator --decode eager,static --out answer.json

``--smoke`` runs tiny on CPU with whatever model is given, to check the script itself (static mode runs
there without compilation, which is only enabled on CUDA).

``--cpu`` (the CPU table): every ``--decode`` entry loaded once, then ``--reps`` rounds that each time every
entry in turn (one generation with a per-token timestamping streamer, inputs built inside the timing), and
nothing else (a CPU takes a minute per eager answer over 3
pages). An entry is a decode mode, optionally ``@EDGE`` (the page budget in px, default 1,536) or
``@regions`` (synthetic cited regions: each page as a 512 px overview plus one 512 x 512 crop of the fitted
page at full resolution, one tile each; lean modes only). Lean rows report TTFT twice: cold (the page
feature cache emptied before each rep: the question pays for the vision tower) and warm (the pages' features
cached: what a question over pages seen before, or precomputed at ingest, pays). Decode tokens/s is
(N - 1) / (last token - first token). ``same tokens`` compares the greedy ids with the first row's over the
same input (only rows with the first row's page budget). Ratios are against the first row (eager)::

    OMP_WAIT_POLICY=passive python bench/answer.py --model /tmp/ckpt/generator --device cpu \
        --cpu --decode eager,lean,lean-fp16,lean-fp16@1024,lean-fp16@regions --new-tokens 32 --reps 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = [
    "What was the total revenue in 2023?",
    "Which table lists the quarterly operating costs?",
    "Who signed the agreement on the last page?",
    "What is the due date of the invoice?",
    "Summarize the main finding of the report.",
    "How many employees did the company have at the end of the year?",
    "What does the chart on the second page show?",
    "Which tax rate applies to the amounts in the summary table?",
]


def answer_pages(n: int, dpi: int = 150) -> list:
    from indexer.render import iter_file_pages
    from rag.generators.prompt import fit_pages
    from testkit.pdfs import LETTER, PageSpec, write_pdf

    with tempfile.TemporaryDirectory() as tmp:
        path = write_pdf(Path(tmp) / "answer.pdf", [PageSpec(*LETTER, text=f"answer page {i}") for i in range(n)])
        pages = [p.image for p in iter_file_pages(path, dpi=dpi)]
    return fit_pages(pages)  # as every generator does with the pages it is given


class TokenTimes:
    """A generate() streamer that records when each generated token reaches the host (the first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:  # noqa: ANN001
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class WordsOnly:
    """Logits processor: only tokens that decode to one space-led word (" the", " total").

    With random weights the streamer would otherwise see ids the test tokenizer cannot decode, or
    text with no word boundary, and hold everything back to the end. A word per token makes the
    first piece appear as it does with real text: the streamer holds the first word until the next
    one starts, and ``stream`` drops the leading space, so the first piece comes after 2 tokens.
    """

    def __init__(self, tokenizer, vocab_size: int, device) -> None:  # noqa: ANN001
        import torch

        ok = torch.zeros(vocab_size, dtype=torch.bool)
        for i in range(min(len(tokenizer), vocab_size)):
            text = tokenizer.decode([i])
            ok[i] = len(text) > 1 and text[0] == " " and text[1:].isalnum()
        if not ok.any():
            raise SystemExit("the tokenizer has no space-led word tokens to restrict generation to")
        self.words = int(ok.sum())
        self.mask = (~ok).to(device)
        self.calls = 0

    def __call__(self, input_ids, scores):  # noqa: ANN001
        self.calls += 1
        return scores.masked_fill(self.mask[: scores.shape[-1]], float("-inf"))


def measure(args: argparse.Namespace, decode: str, pages: list, question: str, reference: list | None) -> dict:
    """One row: every measurement of the module docstring, with a fresh generator in ``decode`` mode."""
    import torch
    from transformers import LogitsProcessorList

    from indexer.models.device import resolve_device
    from rag.generators.smolvlm import SmolVLMGenerator

    if resolve_device(args.device).type == "cuda":
        from torch._dynamo.utils import counters

        torch._dynamo.reset()  # compiled graphs and counters of a previous mode do not leak into this row
        counters.clear()
    t_load = time.perf_counter()
    gen = SmolVLMGenerator(args.model, device=args.device, decode=decode).load()
    load_s = time.perf_counter() - t_load
    model, proc = gen.model, gen.processor
    tok = proc.tokenizer
    cuda = gen.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n = args.new_tokens
    forced = {"min_new_tokens": n, "max_new_tokens": n}

    def generate(inputs, new_tokens: int, **kw):
        out = gen.run_generate(inputs, new_tokens, min_new_tokens=new_tokens, **kw)
        sync()
        return out

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    inputs1 = gen.build_inputs(question, pages)
    prompt_tokens = int(inputs1["input_ids"].shape[1])
    out = generate(inputs1, n)  # warm-up, and check the forced length
    got = int(out.shape[1]) - prompt_tokens
    if got != n:
        raise SystemExit(f"{decode}: generate produced {got} new tokens, expected {n}")
    new_ids = out[0, prompt_tokens:].tolist()
    same = None
    if reference is not None:
        same = next((i for i, (a, b) in enumerate(zip(new_ids, reference, strict=False)) if a != b), len(new_ids))
    generate(inputs1, 1)

    # --- TTFT through SmolVLMGenerator.stream (the API's streaming path)
    limit = WordsOnly(tok, model.config.text_config.vocab_size, gen.device)
    base_kwargs = gen._gen_kwargs
    gen._gen_kwargs = lambda m: {**base_kwargs(m), **forced, "logits_processor": LogitsProcessorList([limit])}  # type: ignore[method-assign]
    stream_ttft, stream_total, steps_before_piece = [], [], []
    try:
        for _ in range(args.reps + 1):  # the first is a warm-up (the logits processor is new)
            limit.calls = 0
            t0 = time.perf_counter()
            first = None
            for _piece in gen.stream(question, pages, max_new_tokens=n):
                if first is None:
                    first = time.perf_counter() - t0
                    steps_before_piece.append(limit.calls)
            stream_total.append(time.perf_counter() - t0)
            stream_ttft.append(first if first is not None else float("nan"))
    finally:
        gen._gen_kwargs = base_kwargs  # type: ignore[method-assign]
    stream_ttft, stream_total, steps_before_piece = stream_ttft[1:], stream_total[1:], steps_before_piece[1:]

    # --- TTFT and decode rate per token (batch 1), inputs built inside the timing
    tok_ttft, tok_decode, build = [], [], []
    for _ in range(args.reps):
        times = TokenTimes()
        t0 = time.perf_counter()
        inputs = gen.build_inputs(question, pages)
        build.append(time.perf_counter() - t0)
        generate(inputs, n, streamer=times)
        tok_ttft.append(times.times[0] - t0)
        tok_decode.append((len(times.times) - 1) / (times.times[-1] - times.times[0]))

    # --- plain generate, batch 1: prefill (1 token) and N tokens
    t1 = [timed(lambda: generate(inputs1, 1)) for _ in range(args.reps)]
    tn = [timed(lambda: generate(inputs1, n)) for _ in range(args.reps)]

    med = statistics.median

    def rate(tokens: int, seconds: float) -> float | None:  # None when timing noise makes the difference <= 0
        return tokens / seconds if seconds > 0 else None

    row: dict = {
        "decode": decode,
        "decode_mode": gen.decode_mode,
        "compiled": gen.compile_decode,
        "fullgraph": gen.compile_fullgraph if gen.compile_decode else None,
        "load_s": load_s,
        "warmup_s": gen.warmup_s,
        "same_tokens_as_first_mode": same,
        "pages": args.pages,
        "page_px": list(pages[0].size),
        "prompt_tokens": prompt_tokens,
        "new_tokens": n,
        "reps": args.reps,
        "ttft_stream_ms": med(stream_ttft) * 1e3,
        "stream_tokens_before_first_piece": med(steps_before_piece) if steps_before_piece else None,
        "stream_word_tokens_allowed": limit.words,
        "stream_total_ms": med(stream_total) * 1e3,
        "ttft_token_ms": med(tok_ttft) * 1e3,
        "build_inputs_ms": med(build) * 1e3,
        "decode_tokens_per_s_b1_streamer": med(tok_decode),
        "prefill_generate_1_token_ms": med(t1) * 1e3,
        "generate_n_tokens_ms": med(tn) * 1e3,
        "decode_tokens_per_s_b1": rate(n - 1, med(tn) - med(t1)),
        "tokens_per_s_b1_end_to_end": n / med(tn),
        "batch": args.batch,
    }

    # --- plain generate, batch B: B questions over the same pages, left padded
    if args.batch > 0:
        try:
            tok.padding_side = "left"
            qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.batch)]
            prompts = []
            for q in qs:
                content = [{"type": "image"} for _ in pages] + [
                    {"type": "text", "text": f"{gen.instruction}\nQuestion: {q}"}
                ]
                prompts.append(
                    proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
                )
            inputs_b = proc(
                text=prompts, images=[[p.convert("RGB") for p in pages]] * args.batch, return_tensors="pt", padding=True
            )
            inputs_b = {k: v.to(gen.device) for k, v in inputs_b.items()}
            inputs_b["pixel_values"] = inputs_b["pixel_values"].to(model.dtype)
            outb = generate(inputs_b, n)  # warm-up (compiles the batch-B graph in static mode) + length check
            if int(outb.shape[1]) - int(inputs_b["input_ids"].shape[1]) != n:
                raise RuntimeError("batched generate did not produce the forced length")
            generate(inputs_b, n)
            b1 = [timed(lambda: generate(inputs_b, 1)) for _ in range(args.reps)]
            bn = [timed(lambda: generate(inputs_b, n)) for _ in range(args.reps)]
            row.update(
                {
                    "batch_prompt_tokens_padded": int(inputs_b["input_ids"].shape[1]),
                    "batch_generate_1_token_ms": med(b1) * 1e3,
                    "batch_generate_n_tokens_ms": med(bn) * 1e3,
                    "batch_tokens_per_s_total": args.batch * n / med(bn),
                    "batch_decode_tokens_per_s_total": rate(args.batch * (n - 1), med(bn) - med(b1)),
                }
            )
        except Exception as exc:  # a batch failure must not lose the batch-1 numbers of this mode
            row["batch_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            tok.padding_side = "right"
    if cuda:
        from torch._dynamo.utils import counters

        row["compile_unique_graphs"] = int(counters["stats"]["unique_graphs"])
        row["compile_graph_breaks"] = int(sum(counters["graph_break"].values()))
        row["cudagraph_skips"] = int(counters["inductor"]["cudagraph_skips"])
        row["peak_gpu_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    row["_new_ids"] = new_ids
    gen.close()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return row


def _views(pages: list, spec: str) -> tuple[list, list]:
    """Images and per-image tiling sizes for a ``@regions`` entry: per page a 512 px overview and one cited region
    (a 512 x 512 crop of the fitted page, below its top margin) at full resolution."""
    views, sizes = [], []
    for page in pages:
        overview = page.copy()
        overview.thumbnail((512, 512))
        w, h = page.size
        left, top = max(0, (w - 512) // 2), min(max(0, h - 512), h // 6)
        views += [overview, page.crop((left, top, left + min(512, w), top + min(512, h)))]
        sizes += [512, 512]
    return views, sizes


class CpuEntry:
    """One ``--decode`` entry of the CPU table: its generator, loaded once, and its measurements so far."""

    def __init__(self, args: argparse.Namespace, entry: str, pages: list, question: str) -> None:
        from transformers import LogitsProcessorList

        from rag.generators.smolvlm import SmolVLMGenerator

        self.entry, self.pages, self.question, self.n = entry, pages, question, args.new_tokens
        mode, _, self.variant = entry.partition("@")
        self.edge = int(self.variant) if self.variant.isdigit() else None
        kwargs = {"image_longest_edge": self.edge} if self.edge else {}
        t_load = time.perf_counter()
        self.gen = SmolVLMGenerator(args.model, device=args.device, decode=mode, **kwargs).load()
        self.load_s = time.perf_counter() - t_load
        if self.variant == "regions" and not self.gen.lean:
            raise SystemExit(f"{entry}: regions need a lean mode")
        limit = WordsOnly(self.gen.processor.tokenizer, self.gen.model.config.text_config.vocab_size, self.gen.device)
        self.extra = {"min_new_tokens": self.n, "logits_processor": LogitsProcessorList([limit])}
        self.cold: list[tuple[float, float]] = []
        self.warm: list[tuple[float, float]] = []
        self.ids: list[int] = []
        self.prompt_tokens = 0

    def _build(self):  # noqa: ANN202
        gen = self.gen
        if self.variant == "regions":
            views, sizes = _views(self.pages, self.variant)
            text = f"{gen.instruction}\nQuestion: {self.question}"
            content = [{"type": "image"} for _ in views] + [{"type": "text", "text": text}]
            messages = [{"role": "user", "content": content}]
            prompt = gen.processor.apply_chat_template(messages, add_generation_prompt=True)
            assert gen._lean is not None
            return gen._lean.build_inputs(prompt, views, sizes=sizes)
        return gen.build_inputs(self.question, self.pages)

    def rep(self) -> None:
        """One cold generation (the page-feature cache emptied first) and, in lean modes, one warm one."""
        for cold in (True, False) if self.gen.lean else (True,):
            if cold:
                self.gen.page_cache.clear_memory()
            times = TokenTimes()
            t0 = time.perf_counter()
            inputs = self._build()
            out = self.gen.run_generate(inputs, self.n, streamer=times, **self.extra)
            self.prompt_tokens = int(inputs["input_ids"].shape[1])
            ids = out[0, self.prompt_tokens :].tolist()
            if len(ids) != self.n:
                raise SystemExit(f"{self.entry}: {len(ids)} new tokens, expected {self.n}")
            self.ids = self.ids or ids
            rate = (len(times.times) - 1) / (times.times[-1] - times.times[0])
            (self.cold if cold else self.warm).append((times.times[0] - t0, rate))

    def row(self, reference: dict) -> dict:
        import torch

        med = statistics.median
        # Only rows over the first row's input compare (another budget or regions is another prompt).
        ref_variant, ref_ids = reference.setdefault("first", (self.variant, self.ids))
        same = None
        if self.variant == ref_variant:
            same = next((i for i, (a, b) in enumerate(zip(self.ids, ref_ids, strict=False)) if a != b), len(self.ids))
        both = self.cold + self.warm
        return {
            "entry": self.entry,
            "decode_mode": self.gen.decode_mode,
            "load_s": self.load_s,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.n,
            "reps": len(self.cold),
            "ttft_cold_ms": [c[0] * 1e3 for c in self.cold],
            "ttft_warm_ms": [w[0] * 1e3 for w in self.warm],
            "decode_tok_s": [r[1] for r in both],
            "ttft_cold_ms_median": med(c[0] for c in self.cold) * 1e3,
            "ttft_warm_ms_median": med(w[0] for w in self.warm) * 1e3 if self.warm else None,
            "decode_tok_s_median": med(r[1] for r in both),
            "same_tokens_as_first_row": same,
            "threads": torch.get_num_threads(),
        }


def cpu_table(args: argparse.Namespace, pages: list, question: str) -> None:
    """Every entry loaded once, then ``--reps`` rounds, each measuring every entry in turn: a change of load on a
    shared machine hits all entries of a round, not one row."""
    import torch

    entries = [CpuEntry(args, m.strip(), pages, question) for m in args.decode.split(",") if m.strip()]
    for r in range(args.reps):
        for e in entries:
            e.rep()
            print(
                f"round {r + 1}: {e.entry}: cold TTFT {e.cold[-1][0] * 1e3:.0f} ms"
                + (f", warm {e.warm[-1][0] * 1e3:.0f} ms" if e.warm else "")
                + f", decode {e.cold[-1][1]:.1f}"
                + (f" / {e.warm[-1][1]:.1f}" if e.warm else "")
                + " tok/s",
                flush=True,
            )
    reference: dict = {}
    rows = [e.row(reference) for e in entries]
    base = rows[0]
    today = date.today().isoformat()
    device = f"CPU ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads)"
    print(
        f"\n{args.pages} pages, {args.new_tokens} new tokens forced, median of {args.reps}, {device}, {today}\n"
        "| decode | prompt tokens | TTFT cold ms | vs eager | TTFT warm ms | vs eager | decode tok/s | vs eager "
        "| same greedy tokens |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        warm = r["ttft_warm_ms_median"]
        cold_ratio = r["ttft_cold_ms_median"] / base["ttft_cold_ms_median"]
        warm_s = "-" if warm is None else f"{warm:.0f}"
        warm_ratio = "-" if warm is None else f"{warm / base['ttft_cold_ms_median']:.3f}x"
        same = r["same_tokens_as_first_row"]
        same_s = "n/a (other input)" if same is None else f"{same}/{r['new_tokens']}"
        print(
            f"| {r['entry']} ({r['decode_mode']}) | {r['prompt_tokens']} | {r['ttft_cold_ms_median']:.0f} "
            f"| {cold_ratio:.2f}x | {warm_s} | {warm_ratio} "
            f"| {r['decode_tok_s_median']:.1f} | {r['decode_tok_s_median'] / base['decode_tok_s_median']:.2f}x "
            f"| {same_s} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"device": device, "date": today, "pages": args.pages, "rows": rows}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="generator checkpoint directory")
    ap.add_argument("--pages", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens every generation is forced to")
    ap.add_argument("--batch", type=int, default=8, help="batch size of the batched measurement; 0 skips it")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--decode",
        default="eager,static",
        help="comma-separated SmolVLMGenerator decode modes, one row each (eager = plain generate, the baseline)",
    )
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="the CPU table (see the module docstring)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.smoke:
        args.new_tokens, args.reps = 16, 2
    if args.cpu:
        cpu_table(args, answer_pages(args.pages), QUESTIONS[0])
        return
    from rag.generators.smolvlm import DECODE_MODES

    modes = [m.strip() for m in args.decode.split(",") if m.strip()]
    if not modes or any(m not in DECODE_MODES for m in modes):
        raise SystemExit(f"--decode takes a comma-separated list of {', '.join(DECODE_MODES)}; got {args.decode!r}")

    import torch

    pages = answer_pages(args.pages)
    question = QUESTIONS[0]
    rows: list[dict] = []
    reference = None
    for mode in modes:
        row = measure(args, mode, pages, question, reference)
        ids = row.pop("_new_ids")
        reference = ids if reference is None else reference
        rows.append(row)

    from indexer.models.device import resolve_device

    cuda = resolve_device(args.device).type == "cuda"
    device_name = (
        torch.cuda.get_device_name()
        if cuda
        else f"CPU ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads)"
    )
    result = {
        "device": device_name,
        "date": date.today().isoformat(),
        "model": args.model,
        "dtype": "bfloat16" if cuda else "float32",
        "torch": torch.__version__,
        "smoke": args.smoke,
        "rows": rows,
    }

    def f0(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0f}"

    r0 = rows[0]
    n = args.new_tokens
    print(
        f"\nanswer: {args.pages} pages {r0['page_px'][0]}x{r0['page_px'][1]} px, prompt {r0['prompt_tokens']} tokens, "
        f"{n} new tokens forced, median of {args.reps}; build_inputs (chat template, image tiling, copy to device) "
        f"{r0['build_inputs_ms']:.0f} ms of TTFT; stream's first piece came after "
        f"{r0['stream_tokens_before_first_piece']} decode steps"
    )
    for r in rows:
        extra = ""
        if "compile_unique_graphs" in r:
            extra = (
                f", compiled graphs {r['compile_unique_graphs']}, graph breaks {r['compile_graph_breaks']}, "
                f"cudagraph skips {r['cudagraph_skips']}, peak GPU {r['peak_gpu_mem_mib']:.0f} MiB"
            )
        print(
            f"{r['decode']}: mode in effect {r['decode_mode']} (compiled={r['compiled']}, fullgraph={r['fullgraph']}), "
            f"load {r['load_s']:.1f} s (warm-up {f0(r['warmup_s'] and r['warmup_s'] * 1e3)} ms), "
            f"same tokens as {rows[0]['decode']}: {r['same_tokens_as_first_mode']}/{n}{extra}"
            + (f"; batch error: {r['batch_error']}" if "batch_error" in r else "")
        )
    print(
        "\n| decode | pages | prompt tokens | TTFT stream ms | TTFT token ms | prefill ms (generate 1) "
        "| decode tok/s b1 (streamer / plain) "
        f"| tok/s b1 end to end ({n} new) | batch {args.batch} tok/s total "
        f"| batch {args.batch} decode tok/s total | device | date |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['decode']} | {args.pages} | {r['prompt_tokens']} | {r['ttft_stream_ms']:.0f} "
            f"| {r['ttft_token_ms']:.0f} "
            f"| {r['prefill_generate_1_token_ms']:.0f} "
            f"| {r['decode_tokens_per_s_b1_streamer']:.0f} / {f0(r['decode_tokens_per_s_b1'])} "
            f"| {r['tokens_per_s_b1_end_to_end']:.0f} | {f0(r.get('batch_tokens_per_s_total'))} "
            f"| {f0(r.get('batch_decode_tokens_per_s_total'))} | {device_name} | {result['date']} |"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
