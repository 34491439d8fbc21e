"""NVIDIA kvpress's presses on kvbench's recorded probes: the fixture tests/kvpress_parity.rs reads.

Invoked by `cargo xtask kvpress-parity`, which writes PROBES.json (per task: one layer's prompt
queries, keys and values, post-RoPE, its attention output weight, and per ratio the settings that
align kvpress with kvbench's documented choices) and then compares kvbench's methods with what this writes to FIXTURE.json.

    python kvpress_parity.py target/kvpress-parity/probes.json tests/data/kvpress_parity.json

Each press's own `compress` (its scoring, padding, budget rule and top-k) runs on the recorded
keys and values. The attention weights a press reads (SnapKV's window, TOVA's last query,
ObservedAttention's every query) are rows of the full causal softmax(q·k/√d) of the recorded
queries, float32: what the model's attention would hand the press, so no press needs the model.
Which positions a press kept is read back from the key rows it returns (or, for AdaKV, from the
pairs it masks). Beside them, the positions tied at its cut (scored as the lowest kept, to a
relative 1e-5: max-pooling makes exact ties by construction, and kvbench sums the same float32
terms in another order), among which any top-k may choose. Cases:
- "same": kvpress set to kvbench's documented settings, so the positions must be identical;
- "nested": kvpress's scores set as kvbench's, its own budget rule (PyramidKV);
- "overlap": kvpress as it ships, to show what kvbench's documented choices change.
ThinK's cases list key channels kept per kv head instead of positions ("of": "key-channels").
"""

import json
import sys
from importlib.metadata import version
from types import SimpleNamespace

import pandas
import torch
from torch.nn import functional as F

import kvpress.presses.duo_attention_press as duo_module
import kvpress.presses.expected_attention_press as expected_attention_press
from kvpress import (AdaKVPress, ChunkKVPress, CriticalKVPress, DuoAttentionPress, ExpectedAttentionPress, KeyDiffPress,
                     KnormPress, ObservedAttentionPress, PyramidKVPress, SnapKVPress, StreamingLLMPress, ThinKPress,
                     TOVAPress)

DUO_REACH = {}  # per task, kvpress's DuoAttention score of each kv head of the probed layer
ATTENTION = {}  # the current task's full attention weights [1, heads, n, n], and its queries [1, heads, n, d]


class RecordedWindow:
    """SnapKV's window attention taken from the recorded queries, not recomputed from hidden states."""

    def compute_window_attention(self, module, hidden_states, keys, window_size, position_embeddings):
        return ATTENTION["weights"][..., -window_size:, :-window_size]


class StockSnapKV(RecordedWindow, SnapKVPress):
    """kvpress's SnapKV as it ships (window 64, average-pool 5, each query head pooled, then the group's mean)."""


class AlignedSnapKV(RecordedWindow, SnapKVPress):
    """kvpress's SnapKV at kvbench's settings: window 32, max-pool 7 over the kv head's summed score."""

    def __init__(self, compression_ratio=0.0):
        super().__init__(compression_ratio=compression_ratio, window_size=32, kernel_size=7)

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        bsz, kv, k_len, _ = keys.shape
        group = module.config.num_attention_heads // kv
        weights = self.compute_window_attention(module, hidden_states, keys, self.window_size, None)
        scores = weights.mean(dim=-2).view(bsz, kv, group, k_len - self.window_size).mean(2)
        scores = F.max_pool1d(scores, kernel_size=self.kernel_size, padding=self.kernel_size // 2, stride=1)
        return F.pad(scores, (0, self.window_size), value=scores.max().item() + 1)


class StockPyramidKV(RecordedWindow, PyramidKVPress):
    """kvpress's PyramidKV as it ships (window 64, average-pool 5, beta 20)."""


class AlignedPyramidKV(RecordedWindow, PyramidKVPress):
    """kvpress's PyramidKV budget rule with kvbench's SnapKV scores."""

    def __init__(self, compression_ratio=0.0):
        super().__init__(compression_ratio=compression_ratio, window_size=32, kernel_size=7)

    score = AlignedSnapKV.score


class RecordedThinK(ThinKPress):
    """kvpress's ThinK with its window's (post-RoPE) queries taken from the recording, not recomputed."""

    def compute_window_queries(self, module, hidden_states, position_embeddings):
        return ATTENTION["queries"][:, :, -self.window_size:]


def think_channels(press, module, keys, values):
    """Per kv head, the key channels ThinK keeps (those it does not zero), and those tied at its cut."""
    hidden = torch.zeros(1, keys.shape[2], 1)
    pruned, _ = press.compress(module, hidden, keys.clone(), values, None,
                               {"hidden_states": hidden, "position_embeddings": None})
    kept = [sorted((pruned[0, g] != 0).any(dim=0).nonzero().flatten().tolist()) for g in range(keys.shape[1])]
    q = ATTENTION["queries"][:, :, -press.window_size:]
    group = q.shape[1] // keys.shape[1]
    q_norm = q.pow(2).mean(dim=2).view(1, keys.shape[1], group, keys.shape[3]).mean(2)
    scores = q_norm * keys.pow(2).mean(dim=2)
    return kept, ties(scores, kept, False)


def to_halves(x):
    """kvbench's GGUF layout (RoPE on adjacent pairs) to Hugging Face's (on halves), on the last axis."""
    d = x.shape[-1]
    return torch.cat([x[..., 0:d:2], x[..., 1:d:2]], dim=-1)


def rope_theta(d, base):
    """RoPE's frequency per channel pair, float64."""
    return base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)


def rope_tables(d, base):
    """Hugging Face's rotary embedding (halves layout) at kvbench's base, as a model's `rotary_emb`."""
    theta = rope_theta(d, base)

    def rotary_emb(x, position_ids):
        a = position_ids[0].double()[:, None] * theta[None, :]
        a = torch.cat([a, a], dim=-1)[None].float()
        return a.cos(), a.sin()

    return rotary_emb


def unrotate(x, base):
    """Post-RoPE rows `[..., n, d]` (kvbench's adjacent pairs, row i at position i) rotated back, in
    float64, then put in Hugging Face's halves layout."""
    n, d = x.shape[-2], x.shape[-1]
    angle = torch.arange(n, dtype=torch.float64)[:, None] * rope_theta(d, base)[None, :]
    cos, sin = angle.cos(), angle.sin()
    x = x.double()
    even, odd = x[..., 0::2], x[..., 1::2]
    pre = torch.empty_like(x)
    pre[..., 0::2], pre[..., 1::2] = even * cos + odd * sin, -even * sin + odd * cos
    return to_halves(pre.float())


def duo_attention_press(task, queries, keys, plan):
    """kvpress's DuoAttention with its own on-the-fly head scoring (`duo_attention_on_the_fly`),
    run on the recording instead of 50 BookSum chapters: a stand-in model whose one layer's
    `q_proj` and `k_proj` return the probe's queries and keys before RoPE (the queries from position
    4 on, as kvbench's statistics count them), whose `rotary_emb` is kvbench's RoPE, and whose
    tokenizer and dataset are stubs (the 50 "chapters" all the same recording). kvpress then
    ranks the heads and masks the streaming ones; the count of streaming heads and their sinks
    and window are kvbench's plan (`duoattention::Plan`), since kvbench budgets tokens, not heads."""
    n, h, kv, d = task["prompt"], task["heads"], task["kv_heads"], task["head_dim"]
    pre_q = unrotate(queries, task["rope_base"]).transpose(1, 2)[:, 4:].reshape(1, n - 4, h * d)
    pre_k = unrotate(keys, task["rope_base"]).transpose(1, 2).reshape(1, n, kv * d)
    attn = SimpleNamespace(head_dim=d, q_proj=lambda x: pre_q, k_proj=lambda x: pre_k)
    layer = SimpleNamespace(self_attn=attn, input_layernorm=lambda x: x)
    hidden = torch.zeros(1, n, 1)
    name = f"kvbench-probe/{task['task']}/{task['sample']}/{task['layer']}"
    config = SimpleNamespace(name_or_path=name, num_attention_heads=h, num_key_value_heads=kv, num_hidden_layers=1)
    stand_in = StandIn(config, SimpleNamespace(layers=[layer], rotary_emb=rope_tables(d, task["rope_base"])), hidden)
    duo_module.AutoTokenizer = SimpleNamespace(
        from_pretrained=lambda _: lambda text, return_tensors: SimpleNamespace(to=lambda device: {}))
    duo_module.load_dataset = lambda *a, **k: SimpleNamespace(
        to_pandas=lambda: pandas.DataFrame({"chapter": ["the recording"] * 50}))
    press = DuoAttentionPress(head_compression_ratio=plan["streaming"] / kv, on_the_fly_scoring=True)
    press.post_init_from_model(stand_in)
    assert int(press.streaming_mask.sum()) == plan["streaming"], (press.streaming_mask, plan)
    press.sink_size, press.recent_size = plan["sinks"], plan["recent"]
    # the scores it ranked by (cached by the stand-in's name: computed once)
    return press, duo_module.duo_attention_on_the_fly(stand_in)[0].tolist()


class StandIn:
    """A callable stand-in for a model (`model(**inputs, output_hidden_states=True)`)."""

    def __init__(self, config, model, hidden):
        self.config, self.device, self.model, self.hidden = config, "cpu", model, hidden

    def __call__(self, **_):
        return SimpleNamespace(hidden_states=(self.hidden, self.hidden))


def expected_attention_inputs(module, queries, keys, base):
    """Point kvpress's Expected Attention at the recording: its pre-RoPE queries (the recorded
    post-RoPE ones rotated back, in float64) and its model's RoPE tables, both in Hugging Face's
    layout, so that kvpress's own statistics, averaged rotation and scores run unchanged."""
    pre = unrotate(queries, base)
    expected_attention_press.get_prerope_query_states = lambda module, h: pre[:, :, -h.shape[1]:]
    module.rotary_emb = rope_tables(queries.shape[3], base)
    return to_halves(keys)


def kept_rows(original, returned):
    """Per kv head, the ascending positions of `original`'s rows that `returned` holds."""
    out = []
    for g in range(original.shape[1]):
        index = {tuple(row.tolist()): i for i, row in enumerate(original[0, g])}
        out.append(sorted(index[tuple(row.tolist())] for row in returned[0, g]))
    return out


def ranking_scores(press, module, hidden, keys, values, attentions, kwargs):
    """What the press ranks positions by, per kv head and position (a chunk's score for each of its tokens)."""
    if isinstance(press, AdaKVPress):
        scores = press.press.score(module, hidden, keys, values, attentions, kwargs)
        n_kept = max(1, int(keys.shape[2] * (1 - press.compression_ratio)))
        n_safe = max(1, int(n_kept * press.alpha_safeguard))
        top = torch.topk(scores, n_safe, dim=-1).indices
        return scores.scatter(-1, top, torch.finfo(scores.dtype).max)
    if isinstance(press, ChunkKVPress):
        scores = press.press.score(module, hidden, keys, values, attentions, kwargs).sum(dim=1)[0]
        n, c = keys.shape[2], press.chunk_length
        means = torch.stack([scores[s:s + c].mean() for s in range(0, n, c)])
        per_token = means.repeat_interleave(c)[:n]
        return per_token.expand(keys.shape[1], n).unsqueeze(0)
    return press.score(module, hidden, keys, values, attentions, kwargs)


def ties(scores, kept, layer_wide):
    """Per kv head, the positions scored as the lowest kept one (to 1e-5): where a top-k may choose either way."""
    s = scores[0]
    lows = [s[g, kept[g]].min().item() for g in range(s.shape[0])]
    if layer_wide:
        lows = [min(lows)] * len(lows)
    # equal up to float32 rounding: kvbench sums the same terms in another order
    return [sorted(((s[g] - lows[g]).abs() <= 1e-5 * abs(lows[g])).nonzero().flatten().tolist())
            for g in range(s.shape[0])]


def run(press, module, keys, values, attentions):
    """Per kv head, the positions `press` kept, and those tied at its cut."""
    kept = kept_by(press, module, keys, values, attentions)
    hidden, kwargs = torch.zeros(1, keys.shape[2], 1), {"position_embeddings": None}
    scores = ranking_scores(press, module, hidden, keys, values, attentions, kwargs)
    return kept, ties(scores, kept, isinstance(press, (AdaKVPress, ChunkKVPress)))


def kept_by(press, module, keys, values, attentions):
    hidden = torch.zeros(1, keys.shape[2], 1)
    kwargs = {"position_embeddings": None}
    if isinstance(press, (AdaKVPress, DuoAttentionPress)):
        press.compress(module, hidden, keys, values, attentions, kwargs)
        _, heads, seq = module.masked_key_indices
        pruned = [set() for _ in range(keys.shape[1])]
        for h, s in zip(heads.tolist(), seq.tolist()):
            pruned[h].add(s)
        return [sorted(set(range(keys.shape[2])) - p) for p in pruned]
    kept_keys, _ = press.compress(module, hidden, keys, values, attentions, kwargs)
    return kept_rows(keys, kept_keys)


def cases(task, ratios):
    n, h, kv, d = task["prompt"], task["heads"], task["kv_heads"], task["head_dim"]
    queries = torch.tensor(task["queries"], dtype=torch.float32).reshape(1, n, h, d).transpose(1, 2)
    keys = torch.tensor(task["keys"], dtype=torch.float32).reshape(1, kv, n, d)
    values = torch.tensor(task["values"], dtype=torch.float32).reshape(1, kv, n, d)
    expanded = keys.repeat_interleave(h // kv, dim=1)  # query head i reads kv head i // group
    logits = queries @ expanded.transpose(-1, -2) / d**0.5
    logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    ATTENTION["weights"] = torch.softmax(logits, dim=-1)
    ATTENTION["queries"] = queries
    out_proj = torch.tensor(task["out_proj"], dtype=torch.float32)
    hidden = out_proj.numel() // (h * d)
    module = SimpleNamespace(head_dim=d, layer_idx=task["layer"], num_key_value_groups=h // kv,
                             o_proj=SimpleNamespace(weight=out_proj.reshape(hidden, h * d)),
                             config=SimpleNamespace(num_attention_heads=h, num_key_value_heads=kv, head_dim=d,
                                                    hidden_size=hidden, num_hidden_layers=task["layers"],
                                                    _attn_implementation="sdpa"))
    out = []
    for r in ratios:
        a = task["aligned"][str(r)]
        b = a["budget"]
        exact = 1.0 - (b + 0.5) / n  # int(n · (1 − ratio)) = b, kvbench's rounding of n / r
        stock = 1.0 - 1.0 / r
        chunked = 1.0 - (a["chunks_kept"] + 0.5) / a["chunks"]
        attn = ATTENTION["weights"]
        runs = [
            (f"knorm-{r}x", "KnormPress", "same", KnormPress(exact), None),
            (f"keydiff-{r}x", "KeyDiffPress", "same", KeyDiffPress(exact), None),
            (f"streamingllm-{r}x", f"StreamingLLMPress(n_sink={a['sinks']})", "same",
             StreamingLLMPress(exact, n_sink=a["sinks"]), None),
            (f"tova-pooled-{r}x", "TOVAPress", "same", TOVAPress(exact), attn),
            (f"snapkv-{r}x", "SnapKVPress(window_size=32, kernel_size=7), max-pool of the kv head's score", "same",
             AlignedSnapKV(exact), None),
            (f"snapkv-{r}x", "SnapKVPress as shipped (window 64, avg-pool 5)", "overlap", StockSnapKV(stock), None),
            (f"pyramidkv-{r}x", "PyramidKVPress's budget rule, kvbench's SnapKV scores", "nested",
             AlignedPyramidKV(stock), None),
            (f"pyramidkv-{r}x", "PyramidKVPress as shipped (window 64, avg-pool 5)", "overlap",
             StockPyramidKV(stock), None),
            (f"h2o-{r}x", "ObservedAttentionPress", "overlap", ObservedAttentionPress(stock), attn),
            (f"adakv-{r}x", "AdaKVPress(SnapKVPress at kvbench's settings)", "same",
             AdaKVPress(AlignedSnapKV(exact)), None),
            (f"adakv-{r}x", "AdaKVPress(SnapKVPress as shipped)", "overlap", AdaKVPress(StockSnapKV(stock)), None),
            (f"chunkkv-{r}x", "ChunkKVPress(SnapKVPress at kvbench's settings, chunk_length=20)", "same",
             ChunkKVPress(AlignedSnapKV(chunked), chunk_length=20), None),
            (f"chunkkv-{r}x", "ChunkKVPress(SnapKVPress as shipped, chunk_length=20)", "overlap",
             ChunkKVPress(StockSnapKV(stock), chunk_length=20), None),
            # below a first stage of 32 tokens, kvpress's top-k takes part of the window among
            # its tied scores: a choice among ties the "same" rule cannot follow (module doc)
            (f"criticalkv-{r}x", "CriticalKVPress(SnapKVPress at kvbench's settings)"
             + ("" if b // 2 >= 32 else ", first stage inside the window's tie"),
             "same" if b // 2 >= 32 else "overlap", CriticalKVPress(AlignedSnapKV(exact)), None),
            (f"criticalkv-{r}x", "CriticalKVPress(SnapKVPress as shipped)", "overlap",
             CriticalKVPress(StockSnapKV(stock)), None),
        ]
        for method, label, expect, press, attentions in runs:
            kept, tied = run(press, module, keys, values, attentions)
            out.append({"method": method, "press": label, "expect": expect, "kept": kept, "ties": tied,
                        "layer_wide": isinstance(press, (AdaKVPress, ChunkKVPress)),
                        "unit": press.chunk_length if isinstance(press, ChunkKVPress) else 1})
        # Expected Attention on the same keys in Hugging Face's channel order (positions do not
        # depend on it): kvpress's statistics, averaged RoPE and scores
        halves = expected_attention_inputs(module, queries, keys, task["rope_base"])
        kept, tied = run(ExpectedAttentionPress(exact), module, halves, values, None)
        out.append({"method": f"expected-attention-{r}x", "press": "ExpectedAttentionPress", "expect": "same",
                    "kept": kept, "ties": tied, "layer_wide": False, "unit": 1})
        # DuoAttention on its one-layer stand-in model (layer index 0 there): which heads stream
        # is kvpress's choice; the positions a head keeps follow from it, so no position ties
        duo, DUO_REACH[task["task"]] = duo_attention_press(task, queries, keys, a["duo"])
        solo = SimpleNamespace(**{**vars(module), "layer_idx": 0})
        kept = kept_by(duo, solo, keys, values, None)
        out.append({"method": f"duoattention-{r}x", "press": "DuoAttentionPress(on_the_fly_scoring=True) on the recording",
                    "expect": "same", "kept": kept, "ties": [[] for _ in kept], "layer_wide": False, "unit": 1})
        # ThinK keeps key channels, not positions: int(d · ratio) pruned, as kvbench's d − round(d / r)
        kept, tied = think_channels(RecordedThinK(key_channel_compression_ratio=stock), module, keys, values)
        out.append({"method": f"think-{r}x", "press": "ThinKPress(window_size=32), channels kept", "expect": "same",
                    "kept": kept, "ties": tied, "of": "key-channels"})
    return out


def main():
    data = json.load(open(sys.argv[1]))
    tasks = [{"task": t["task"], "sample": t["sample"], "layer": t["layer"], "prompt": t["prompt"],
              "cases": cases(t, data["ratios"]), "duo_reach": DUO_REACH[t["task"]]} for t in data["tasks"]]
    with open(sys.argv[2], "w") as f:
        json.dump({"kvpress": version("kvpress"), "tasks": tasks}, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
