"""SmolVLM on llama.cpp for comparison with bench/answer.py --cpu: first token and decode rate over 3 pages.

The generator checkpoint is converted with llama.cpp's own converter (``--outtype``: the text model's GGUF
type; ``--mmproj-outtype``: the vision projector's, f16 by default) and served by llama-cpp-python's
OpenAI-compatible server, which is how colsmol's ``openai`` backend would use it. Each rep sends the pages
``OpenAIGenerator`` would send (JPEG ``data:`` URLs fitted to the 1,536 px budget) for freshly rendered pages (so
nothing is reused from a previous request), streamed, end-of-answer forbidden by ``logit_bias`` so that
``--new-tokens`` come back:

- TTFT: from the request (JPEG encoding included) to the first streamed chunk;
- decode tokens/s: (chunks - 1) / (last chunk - first chunk), llama-cpp-python sending one chunk a token.

``prompt tokens (1 page)`` (from the warm-up, a non-streamed request over one page) shows how many image tokens
llama.cpp made of a page: its own Idefics3 preprocessing picks the tile grid (it does not keep colsmol's budget).
The checkpoint needs ``"\\n\\n"`` as one token, as SmolVLM's vocabulary has (``bench/make_checkpoints.py`` writes
it so).

    OMP_WAIT_POLICY=passive python bench/answer_llamacpp.py --model /tmp/ckpt/generator \\
        --outtype q8_0,f16 --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pages_for(rep: int, n: int) -> list:
    from indexer.render import iter_file_pages
    from testkit.pdfs import LETTER, PageSpec, write_pdf

    with tempfile.TemporaryDirectory() as tmp:
        specs = [PageSpec(*LETTER, text=f"answer page {i} rep {rep}") for i in range(n)]
        path = write_pdf(Path(tmp) / "answer.pdf", specs)
        return [p.image for p in iter_file_pages(path, dpi=150)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--outtype", default="q8_0", help="comma-separated GGUF types of the text model")
    ap.add_argument("--mmproj-outtype", default="f16", help="GGUF type of the vision projector (f16, f32)")
    ap.add_argument("--pages", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import openai

    from bench.answer import QUESTIONS
    from rag.generators.openai import OpenAIGenerator
    from testkit.servers import LlamaCppServer, convert_to_gguf, llama_cpp_converter

    converter = llama_cpp_converter()
    if converter is None:
        raise SystemExit("llama.cpp's converter is not in the venv (scripts/setup.sh puts it there)")
    eos = json.loads((args.model / "generation_config.json").read_text()).get("eos_token_id")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in [t.strip() for t in args.outtype.split(",") if t.strip()]:
            model, mmproj = convert_to_gguf(args.model, Path(tmp) / outtype, converter, outtype, args.mmproj_outtype)
            log = Path(tmp) / f"{outtype}.log"
            with LlamaCppServer(model, mmproj, "smolvlm", log, n_ctx=8192, n_threads=args.threads) as server:
                gen = OpenAIGenerator(server.url, model="smolvlm", timeout_s=900, max_retries=0)
                client = openai.OpenAI(base_url=server.url, api_key="none", timeout=900, max_retries=0)
                bias = {str(eos): -100} if isinstance(eos, int) else {}
                # Warm-up (the server loads the vision projector on its first image) on one page, which also
                # gives a page's prompt tokens; a 3-page warm-up would cost as much as a rep.
                first = client.chat.completions.create(
                    model="smolvlm",
                    messages=gen.build_messages(QUESTIONS[0], pages_for(-1, 1)),  # type: ignore[arg-type]
                    max_tokens=1,
                )
                prompt_tokens = first.usage.prompt_tokens if first.usage else None
                ttft, rate = [], []
                for rep in range(args.reps):
                    pages = pages_for(rep, args.pages)
                    t0 = time.perf_counter()
                    messages = gen.build_messages(QUESTIONS[0], pages)
                    stream = client.chat.completions.create(
                        model="smolvlm",
                        messages=messages,  # type: ignore[arg-type]
                        max_tokens=args.new_tokens,
                        temperature=0,
                        logit_bias=bias,
                        stream=True,
                    )
                    times = [
                        time.perf_counter()
                        for chunk in stream
                        if chunk.choices and chunk.choices[0].delta.content is not None  # a token (role-only: not)
                    ]
                    ttft.append(times[0] - t0)
                    rate.append((len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan"))
                    print(f"{outtype} rep {rep}: TTFT {ttft[-1]:.1f} s, {len(times)} chunks, {rate[-1]:.1f} tok/s")
            rows.append(
                {
                    "outtype": outtype,
                    "mmproj_outtype": args.mmproj_outtype,
                    "prompt_tokens": prompt_tokens,
                    "ttft_s": ttft,
                    "decode_tok_s": rate,
                    "ttft_s_median": statistics.median(ttft),
                    "decode_tok_s_median": statistics.median(rate),
                }
            )
    print("| llama.cpp text model | prompt tokens (1 page) | TTFT (median) | decode tok/s (median) |")
    print("|---|---|---|---|")
    for r in rows:
        ttft, rate = r["ttft_s_median"], r["decode_tok_s_median"]
        print(f"| {r['outtype']}, mmproj {r['mmproj_outtype']} | {r['prompt_tokens']} | {ttft:.1f} s | {rate:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
