"""Where ONNX Runtime's time went: per graph and operator type, from its profiling JSON.

Why this exists: docs/PERF.md's profiles of a trial come from it (standard library only).
`KVBENCH_ORT_PROFILE=PREFIX` makes every kvbench session write `PREFIX-prefill_<date>.json` and
`PREFIX-decode_<date>.json` when the runtime is dropped; this sums the node events' durations.

    python3 xtask/py/ort_profile_summary.py PREFIX-*.json

Prints, per file, the total node time, then each operator type's milliseconds and share of it
(custom operators by their kernel names: KvAttention, Q4Linear, Q8Linear, ...; shares under 0.5%
left out).
"""

import collections
import json
import sys


def main():
    for path in sys.argv[1:]:
        events = json.load(open(path))
        per_op = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                per_op[e.get("args", {}).get("op_name", "?")] += e.get("dur", 0)
        total = sum(per_op.values())
        print(f"{path}: {total / 1e3:.0f} ms in nodes")
        for op, us in per_op.most_common():
            if us / max(total, 1) >= 0.005:
                print(f"  {op:<24} {us / 1e3:10.0f} ms  {100 * us / max(total, 1):5.1f}%")


if __name__ == "__main__":
    main()
