"""llama.cpp (via llama-cpp-python) prefill/decode speed on the kvbench model.

Why this exists: an independent speed reference for kvbench, measured with
the same GGUF file and thread count. It is invoked by `cargo xtask`.

    python llama_perf.py --gguf MODEL.gguf --threads 2 --json

For n in --sizes (default 1024,4096): a fixed-seed prompt of n ordinary token ids is
evaluated in one llm.eval() call (chunked by n_batch=512 inside llama.cpp);
prefill tok/s = n / seconds. Then 64 greedy tokens are decoded one by one;
decode tok/s = 64 / seconds. Each is repeated --repeats times (default 3)
with a cleared KV cache; the median is reported, and every run under
"runs". Flash attention is off by default, as in
llama-cpp-python (llama.cpp's own CLI default is "auto"); --flash-attn turns
it on.
"""

import argparse
import json
import random
import statistics
import sys
import time

import numpy as np
import llama_cpp

N_DECODE = 64


def clear(llm):
    llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)


def timed_eval(llm, tokens):
    t0 = time.perf_counter()
    llm.eval(tokens)
    llama_cpp.llama_synchronize(llm.ctx)
    return time.perf_counter() - t0


def argmax_last(llm):
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))))


def run_once(llm, prompt):
    clear(llm)
    t_prefill = timed_eval(llm, prompt)
    t_decode = 0.0
    for _ in range(N_DECODE):
        t_decode += timed_eval(llm, [argmax_last(llm)])
    return len(prompt) / t_prefill, N_DECODE / t_decode


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--sizes", default="1024,4096",
                    help="prompt lengths, comma-separated (labelled 1k, 4k, 8k, ...)")
    ap.add_argument("--json", action="store_true", help="one-line JSON on stdout (default: indented)")
    args = ap.parse_args()

    sizes = [int(n) for n in args.sizes.split(",")]
    llm = llama_cpp.Llama(
        model_path=args.gguf, n_ctx=max(sizes) + N_DECODE + 64, n_batch=512, n_threads=args.threads,
        n_threads_batch=args.threads, flash_attn=args.flash_attn, verbose=False,
    )
    rng = random.Random(0)
    lo, hi = 100, llm.n_vocab() - 200  # stay clear of special/control tokens
    result = {
        "engine": "llama.cpp",
        "version": f"llama-cpp-python {llama_cpp.__version__}",
        "threads": args.threads,
        "flash_attn": args.flash_attn,
        "n_batch": 512,
    }
    run_once(llm, [rng.randrange(lo, hi) for _ in range(64)])  # warm-up
    labels = [f"{n // 1024}k" for n in sizes]
    for label, n in zip(labels, sizes):
        prompt = [rng.randrange(lo, hi) for _ in range(n)]
        runs = [run_once(llm, prompt) for _ in range(args.repeats)]
        for i, (p, d) in enumerate(runs):
            print(f"{label} run {i}: prefill {p:.1f} tok/s, decode {d:.1f} tok/s",
                  file=sys.stderr, flush=True)
        result[f"prefill_{label}"] = round(statistics.median(r[0] for r in runs), 2)
        result[f"decode_{label}"] = round(statistics.median(r[1] for r in runs), 2)
        result[f"prefill_{label}_runs"] = [round(r[0], 2) for r in runs]
        result[f"decode_{label}_runs"] = [round(r[1], 2) for r in runs]

    order = ["engine", "version", "threads", "flash_attn", "n_batch"] + [
        f"{kind}_{label}{runs}" for runs in ("", "_runs") for kind in ("prefill", "decode") for label in labels]
    out = {k: result[k] for k in order}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
