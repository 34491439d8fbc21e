"""llama.cpp's (llama-cpp-python's) tokenization and greedy decoding of Gemma-3-270M.

Why this exists: the third reference for kvbench's Gemma 3 (issue 24), the engine users run
GGUFs with. It is invoked by `cargo xtask gemma-reference --engine llama`.

    python gemma3_llama_reference.py --gguf GEMMA.gguf --texts TEXTS.json --prompts IDS.json \
        --out FILE.json [--n-predict 16]

TEXTS.json is a list of {"name", "text"}: llama.cpp tokenizes each as a prompt (BOS added, as
the GGUF says; special tokens parsed), for the tokenizer check on varied text. IDS.json maps a
prompt name to kvbench's ids: from those exact ids llama.cpp decodes greedily (pure argmax, no
sampler chain) and records the top-5 logits of every step, so that a test can tell a
disagreement from a near-tie that llama.cpp's 8-bit activation rounding decides.
"""

import argparse
import json
import os
import sys

import llama_cpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_reference import greedy, open_model, sha256  # noqa: E402  (the SmolLM2 reference's, shared)

STOP = (1, 106)  # <eos>, <end_of_turn>


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--texts", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-predict", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    llm = open_model(args.gguf, args.threads, n_ctx=16384)
    texts = [
        {"name": t["name"], "text": t["text"], "ids": llm.tokenize(t["text"].encode("utf-8"), add_bos=True, special=True)}
        for t in json.load(open(args.texts))
    ]
    prompts = []
    for name, ids in sorted(json.load(open(args.prompts)).items()):
        print(f"{name}: {len(ids)} prompt tokens ...", file=sys.stderr, flush=True)
        out, steps_top5 = greedy(llm, ids, args.n_predict, stop=STOP)
        text = llm.detokenize(out).decode("utf-8", errors="replace")
        print(f"  -> {text!r}", file=sys.stderr, flush=True)
        prompts.append({"name": name, "output_ids": out, "output_text": text, "steps_top5": steps_top5})
    doc = {
        "model_sha256": sha256(args.gguf),
        "llama_cpp_python_version": llama_cpp.__version__,
        "n_predict": args.n_predict,
        "texts": texts,
        "prompts": prompts,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
