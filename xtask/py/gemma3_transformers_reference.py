"""Hugging Face transformers' Gemma 3 in float64 on the same GGUF, fed the same token ids.

Its GGUF loader dequantizes the weights (its GGUF *tokenizer* conversion is wrong for this file,
so the ids come from the prompts file, made with kvbench's tokenizer, which equals llama.cpp's).

    python gemma3_transformers_reference.py --gguf MODEL.gguf --prompts IDS.json --out FILE.json [--n-predict 16]

IDS.json: {"name": [token ids, BOS included], ...}. Output as gemma3_numpy_reference.py's.
"""

import json
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
import transformers
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemma3_numpy_reference import parse_args  # noqa: E402  (the same arguments)


def main():
    args = parse_args()
    torch.set_num_threads(int(os.environ.get("KVBENCH_TORCH_THREADS", "1")))
    folder, name = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float64)
    model.eval()
    prompts = json.load(open(args.prompts))
    results = []
    with torch.no_grad():
        for pname, ids in prompts.items():
            input_ids = torch.tensor([ids])
            out = model.generate(
                input_ids,
                max_new_tokens=args.n_predict,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                eos_token_id=1,
                pad_token_id=0,
            )
            new = out.sequences[0, len(ids) :].tolist()
            tops = []
            for scores in out.scores:
                v, i = torch.topk(scores[0], 5)
                tops.append([[int(a), float(b)] for a, b in zip(i.tolist(), v.tolist())])
            results.append({"name": pname, "prompt_ids": ids, "output_ids": new, "top5": tops})
            print(pname, len(ids), new, flush=True)
    doc = {
        "engine": f"transformers {transformers.__version__}, torch {torch.__version__}, float64, GGUF loader",
        "prompts": results,
    }
    json.dump(doc, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
