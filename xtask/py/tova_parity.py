"""kvpress's TOVAPress on kvbench's recorded probes, against the positions kvbench's TOVA kept.

Why this exists: issue 22 asks whether TOVA losing the needle is TOVA or a defect. It is invoked
by `cargo xtask tova-parity`, which writes PROBES.json (per task: layer 15's post-RoPE keys of
the prompt per kv head, the last prompt query of every head, and the positions kvbench's
`tova-Nx` and `tova-pooled-Nx` kept per kv head).

    python tova_parity.py target/tova-parity/probes.json

kvpress's own code chooses: the last query's attention weights (softmax of q.k/sqrt(d) over the
prompt, float32, as the model's attention would hand them to the press) are passed to
`TOVAPress.compress` as `attentions`, with keys and values whose every channel holds the token's
position, so the gathered keys say which positions it kept. Printed: a markdown table per ratio.
"""

import json
import sys
from dataclasses import dataclass

import torch

from kvpress import TOVAPress


@dataclass
class Layer:
    """The one attribute of an attention module ScorerPress.compress reads."""

    head_dim: int


def kvpress_kept(task, ratio):
    n, h, kv, d = task["prompt"], task["heads"], task["kv_heads"], task["head_dim"]
    keys = torch.tensor(task["keys"], dtype=torch.float32).reshape(1, kv, n, d)
    query = torch.tensor(task["last_query"], dtype=torch.float32).reshape(1, h, 1, d)
    group = h // kv
    expanded = keys.repeat_interleave(group, dim=1)  # query head i reads kv head i // group
    attentions = torch.softmax(query @ expanded.transpose(-1, -2) / d**0.5, dim=-1)  # [1, h, 1, n]
    positions = torch.arange(n, dtype=torch.float32).reshape(1, 1, n, 1).expand(1, kv, n, d).contiguous()
    press = TOVAPress(compression_ratio=1.0 - 1.0 / ratio)
    kept, _ = press.compress(Layer(d), None, positions, positions, attentions, {})
    return [sorted(int(p) for p in kept[0, g, :, 0].tolist()) for g in range(kv)]


def main():
    data = json.load(open(sys.argv[1]))
    for ratio in data["ratios"]:
        print(f"\n{ratio}x: positions kept at each task's probe layer, kvpress's TOVAPress against kvbench's "
              f"tova-pooled-{ratio}x (the reference's granularity) and tova-{ratio}x (per kv head)\n")
        print("| task | prompt | kvpress keeps | tova-pooled: same positions | only kvpress | only kvbench "
              "| tova (per kv head): shared with kvpress | needle digits kept: kvpress / pooled / per head |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for task in data["tasks"]:
            theirs = kvpress_kept(task, ratio)
            pooled = task["kept"][f"tova-pooled-{ratio}x"]
            per_head = task["kept"][f"tova-{ratio}x"]
            kv = task["kv_heads"]
            same = sum(len(set(a) & set(b)) for a, b in zip(theirs, pooled))
            only_theirs = sum(len(set(a) - set(b)) for a, b in zip(theirs, pooled))
            only_ours = sum(len(set(b) - set(a)) for a, b in zip(theirs, pooled))
            shared = sum(len(set(a) & set(b)) for a, b in zip(theirs, per_head))
            total = sum(len(a) for a in theirs)
            needle = task["needle_positions"]
            if needle:
                def digits(kept):
                    return "".join("1" if p in kept[0] else "0" for p in needle)
                needle_cell = f"{digits(theirs)} / {digits(pooled)} / " + ",".join(
                    "".join("1" if p in per_head[g] else "0" for p in needle) for g in range(kv))
            else:
                needle_cell = ""
            print(f"| {task['task']} | {task['prompt']} | {total // kv} | {same // kv} | {only_theirs} | {only_ours} "
                  f"| {shared / max(total, 1):.2f} | {needle_cell} |")


if __name__ == "__main__":
    main()
