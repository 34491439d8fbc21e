"""Greedy-decoding reference from llama.cpp (via llama-cpp-python).

Why this exists: kvbench implements its own inference for the same GGUF
model; this script gives an independent reference for its numerics. For
every golden prompt it records llama.cpp's token ids, its greedy (pure
argmax, no sampler chain, no repeat penalty) continuation and, at every
greedy step, the top-5 logits, so that a test can tell a real disagreement
from a near-tie that llama.cpp's own kernels resolve differently between
batched and one-token evaluation. It is invoked by `cargo xtask golden`.

    python llama_reference.py --gguf MODEL.gguf --prompts DIR --out FILE.json [--n-predict 16]
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import llama_cpp

EOS_ID = 2  # <|im_end|> for SmolLM2


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def last_logits(llm):
    """Logits of the last evaluated position (copied out of llama.cpp's buffer)."""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def open_model(gguf, threads, n_ctx=8192):
    """llama.cpp on `gguf` as both references run it: batch 512, last logits only."""
    return llama_cpp.Llama(
        model_path=gguf, n_ctx=n_ctx, n_batch=512, n_threads=threads,
        n_threads_batch=threads, logits_all=False, verbose=False,
    )


def greedy(llm, prompt_ids, n_predict, stop=(EOS_ID,)):
    llm.reset()  # n_tokens = 0; eval() then drops the whole KV cache
    llm.eval(prompt_ids)
    logits = last_logits(llm)
    out, steps_top5 = [], []
    for _ in range(n_predict):
        top5 = np.argsort(-logits, kind="stable")[:5]
        steps_top5.append([[int(i), round(float(logits[i]), 5)] for i in top5])
        tok = int(np.argmax(logits))
        out.append(tok)
        if tok in stop:
            break
        llm.eval([tok])
        logits = last_logits(llm)
    return out, steps_top5


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompts", required=True, help="directory of *.txt prompts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-predict", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    llm = open_model(args.gguf, args.threads)
    results = []
    for path in sorted(Path(args.prompts).glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        print(f"{path.stem}: {len(ids)} prompt tokens ...", file=sys.stderr, flush=True)
        out, steps_top5 = greedy(llm, ids, args.n_predict)
        out_text = llm.detokenize(out, special=True).decode("utf-8", errors="replace")
        print(f"  -> {out_text!r}", file=sys.stderr, flush=True)
        results.append({
            "name": path.stem,
            "prompt_ids": ids,
            "output_ids": out,
            "output_text": out_text,
            "steps_top5": steps_top5,
        })

    doc = {
        "model_sha256": sha256(args.gguf),
        "llama_cpp_python_version": llama_cpp.__version__,
        "n_predict": args.n_predict,
        "prompts": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
