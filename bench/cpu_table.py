"""The README's CPU table from a ``slimops bench --suite cpu --json`` file, as Markdown.

    python bench/cpu_table.py bench/results/cpu-2026-12-02.json

One line per case: fp32's median, then each provider's speed-up over fp32 (same run),
W8A8 over torch.ao, and the SQNR of W8A8 and torch.ao against the float output.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _cell(r, digits=2, suffix="x"):
    if r is None or r["status"] != "ok":
        return "-"
    return f"{r['speedup_vs_baseline']:.{digits}f}{suffix}"


def main(path: str) -> None:
    rows = json.load(open(path))["rows"]
    cases = defaultdict(dict)
    for r in rows:
        cases[(r["op"], tuple(r["shape"]), r["params"])][r["provider"]] = r
    print("| case | threads | fp32 µs | torch.ao | W8A8 | W8A8 / torch.ao | W8A16 | W8A16 g128 | SQNR W8A8 / torch.ao (dB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (op, shape, params), by in cases.items():
        fp32, ao, w8a8 = by.get("torch-fp32"), by.get("torch-ao-dynamic"), by.get("slimops-w8a8")
        what = f"{shape[1]}→{shape[2]}, M = {shape[0]}" if op == "linear" else f"{op}, {shape[0]}×{shape[1]} tokens"
        ratio = "-"
        if ao and w8a8 and ao["status"] == w8a8["status"] == "ok":
            ratio = f"**{ao['median_us'] / w8a8['median_us']:.2f}x**"
        sqnr = "-"
        if ao and w8a8 and ao["extra"] and w8a8["extra"]:
            sqnr = f"{w8a8['extra']['sqnr_db']:.1f} / {ao['extra']['sqnr_db']:.1f}"
        print(
            f"| {what} | {params.removeprefix('threads=')} | {fp32['median_us']:,.0f} | {_cell(ao)} | {_cell(w8a8)} "
            f"| {ratio} | {_cell(by.get('slimops-w8a16'))} | {_cell(by.get('slimops-w8a16-g128'))} | {sqnr} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
