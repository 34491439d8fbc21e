"""What the first-token change did on the full tier: legacy-mode results against new-mode ones.

Why this exists: docs/METHODS.md's full-tier first-token table comes from it (standard library
only, no model):

    python3 xtask/py/first_token_table.py docs/report-full-legacy/results docs/report-full/results

Per task, over the after-prefill configurations both runs hold (the quantizer KIVI and the
token selectors, which reuse the shared prefill): how many score every sample exactly as `full`
does, and give `full`'s every prediction, in each run (a trial stopped early counts on the samples
it ran); and, where both runs used the same trace, the mean over those configurations of the
score's change (new less legacy, on the samples the new trial ran, x100) and how many moved by
more than 5 points.
"""

import json
import os
import sys

AFTER_PREFILL = ["kivi-2bit", "kivi-4bit"] + [
    f"{family}-{ratio}x"
    for family in ("h2o", "snapkv", "pyramidkv", "tova", "knorm", "quest", "keydiff")
    for ratio in (2, 4, 6, 8)
]
TASKS = ["needle", "synthetic", "single-doc-qa", "multi-doc-qa", "summarization", "few-shot", "code"]


def trials(folder, task):
    """The task's trials of a results folder, by method (a per-task list file or per-trial files)."""
    path = os.path.join(folder, f"{task}.json")
    if os.path.exists(path):
        return {r["method"]: r for r in json.load(open(path))}
    out = {}
    for name in os.listdir(folder):
        if name.endswith(f"__{task}.json"):
            r = json.load(open(os.path.join(folder, name)))
            out[r["method"]] = r
    return out


def same_as_full(rows, methods):
    full = {s["id"]: s for s in rows["full"]["samples"]}
    scores = sum(all(s["score"] == full[s["id"]]["score"] for s in rows[m]["samples"]) for m in methods)
    predictions = sum(
        all(s["prediction"] == full[s["id"]]["prediction"] for s in rows[m]["samples"]) for m in methods
    )
    return scores, predictions


def main():
    legacy_dir, new_dir = sys.argv[1], sys.argv[2]
    print("| task | configurations | scores = full, legacy | new | predictions = full, legacy | new "
          "| mean score change | moved > 5 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for task in TASKS:
        old, new = trials(legacy_dir, task), trials(new_dir, task)
        if "full" not in old or "full" not in new:
            continue
        methods = [m for m in AFTER_PREFILL if m in old and m in new]
        (os_, op), (ns, np_) = same_as_full(old, methods), same_as_full(new, methods)
        if old["full"]["provenance"]["trace"] == new["full"]["provenance"]["trace"]:
            shifts = []
            for m in methods:
                before = {s["id"]: s["score"] for s in old[m]["samples"]}
                ran = new[m]["samples"]
                shifts.append(100 * sum(s["score"] - before[s["id"]] for s in ran) / len(ran))
            change = f"{sum(shifts) / len(shifts):+.1f}"
            moved = f"{sum(abs(x) > 5 for x in shifts)}"
        else:
            change, moved = "another trace", ""
        print(f"| {task} | {len(methods)} | {os_} | {ns} | {op} | {np_} | {change} | {moved} |")


if __name__ == "__main__":
    main()
