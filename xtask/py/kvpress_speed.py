"""NVIDIA kvpress's pipeline, timed per (press, sample), on kvbench's model and prompts.

Why this exists: issue 23 asks how kvbench's time per method compares with kvpress's as a
user runs it. It is invoked by `cargo xtask kvpress-speed`, which times kvbench on the same
samples in the same run (rounds alternate the engines).

    python kvpress_speed.py --gguf MODEL.gguf --samples SAMPLES.json --methods full,snapkv-2x \
        --threads 2 --max-new-tokens 8 --json OUT.json

SAMPLES.json is a list of {"id", "context_text", "question_text", "context_ids",
"question_ids"}: kvbench's task samples, in SmolLM2's chat template. kvpress applies the
tokenizer's (the same) template itself, so each sample is split back into what a kvpress user
passes: the user turn's context, the question, and the assistant's answer prefix; the script
checks that kvpress's tokens are then exactly kvbench's, and stops if not. The model is the GGUF
loaded by transformers (dequantized to float32, the dtype a CPU user runs), attention "sdpa"
(transformers' default). Each press is called through
`pipeline("kv-press-text-generation")(context, question=..., answer_prefix=..., press=...,
max_new_tokens=...)`, which prefills the context, compresses it with the press (query-agnostic:
the question is read after), then decodes greedily. The time of that call is the per-(press,
sample) figure; one untimed call first warms the model up.
"""

import argparse
import importlib.metadata
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import kvpress  # noqa: F401  (registers the pipeline)

USER = "<|im_start|>user\n"
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
from kvpress import KeyDiffPress, KnormPress, PyramidKVPress, SnapKVPress, StreamingLLMPress, TOVAPress

PRESSES = {
    "snapkv": SnapKVPress,
    "tova": TOVAPress,
    "knorm": KnormPress,
    "streamingllm": StreamingLLMPress,
    "keydiff": KeyDiffPress,
    "pyramidkv": PyramidKVPress,
}


def press_for(name):
    """kvbench's method name (`snapkv-4x`) as a kvpress press; `full` is no press."""
    if name == "full":
        return None
    family, ratio = name.rsplit("-", 1)
    if family not in PRESSES or not ratio.endswith("x"):
        raise SystemExit(f"no kvpress press for {name!r}; have full and {sorted(PRESSES)} with -Nx")
    return PRESSES[family](compression_ratio=1.0 - 1.0 / float(ratio[:-1]))


def split(sample):
    """kvbench's templated sample as kvpress's arguments: (context, question, answer prefix)."""
    _system, user = sample["context_text"].split(USER, 1)
    question, prefix = sample["question_text"].split(ASSISTANT, 1)
    return user, question, prefix


def check_tokens(pipe, sample):
    """kvpress's tokens for the sample must be kvbench's."""
    context, question, prefix = split(sample)
    ids = pipe.preprocess(context, questions=[question], answer_prefix=prefix, max_context_length=1 << 20)
    ours = sample["context_ids"] + sample["question_ids"]
    theirs = ids["context_ids"][0].tolist() + ids["questions_ids"][0][0].tolist()
    if ours != theirs:
        raise SystemExit(f"{sample['id']}: kvpress tokenizes it differently ({len(theirs)} tokens, kvbench {len(ours)})")
    return len(theirs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--samples", required=True)
    ap.add_argument("--methods", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    folder, name = os.path.split(os.path.abspath(args.gguf))
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device="cpu")
    load_seconds = time.perf_counter() - started

    samples = json.load(open(args.samples))
    methods = args.methods.split(",")
    presses = {m: press_for(m) for m in methods}
    rows = []
    with torch.inference_mode():
        context, question, prefix = split(samples[0])
        pipe(context, question=question, answer_prefix=prefix, max_new_tokens=args.max_new_tokens)
        for sample in samples:
            tokens = check_tokens(pipe, sample)
            context, question, prefix = split(sample)
            for method in methods:
                t0 = time.perf_counter()
                out = pipe(
                    context,
                    question=question,
                    answer_prefix=prefix,
                    press=presses[method],
                    max_new_tokens=args.max_new_tokens,
                )
                seconds = time.perf_counter() - t0
                rows.append(
                    {"method": method, "sample": sample["id"], "tokens": tokens, "seconds": seconds, "answer": out["answer"]}
                )
    versions = {p: importlib.metadata.version(p) for p in ("kvpress", "transformers", "torch")}
    json.dump({"engine": "kvpress", "versions": versions, "load_seconds": load_seconds, "rows": rows}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
