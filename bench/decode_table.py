"""The README's decode table (issue 12's headline GPU result), rendered from a ``slimops bench --suite decode`` JSON.

One line per slimops row of the JSON: the weight format, the layer's shape, M,
the bf16 ``nn.Linear`` and slimops times of the same case, their ratio, the bytes
the slimops layer moves, its bandwidth as a share of the same run's device copy,
and the issue's target with met / missed. Usage::

    python bench/decode_table.py bench/results/decode-h200-<date>.json            # prints the Markdown
    python bench/decode_table.py bench/results/decode-h200-<date>.json --readme README.md

``--readme`` replaces what lies between the README's ``<!-- decode-table:begin -->`` and
``<!-- decode-table:end -->`` lines (and nothing else).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- decode-table:begin -->", "<!-- decode-table:end -->"


def _num(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(doc: dict) -> str:
    """The Markdown: a line saying where and when it was measured, then the table."""
    rows = doc["rows"]
    if not rows:
        raise ValueError("the JSON holds no rows")
    first = rows[0]
    v = first["versions"]
    copy = [r for r in rows if r["provider"] == "torch-copy" and r["status"] == "ok"]
    copy_bw = sorted(r["gbps"] for r in copy)[len(copy) // 2] if copy else None
    head = (
        f"Measured on {first['device_name']} ({first['device']}), {first['date'][:10]}, torch {v.get('torch')}, "
        f"triton {v.get('triton')}, CUDA {v.get('cuda')}; {first['timer']}."
    )
    if copy_bw:
        head += f" Device copy in the same run: {copy_bw:,.0f} GB/s (median over the cases)."
    if first["device"] != "cuda":
        head += " **A CPU run: the timings test the plumbing only; the targets are for an H200.**"
    lines = [
        head,
        "",
        "| format | K→N | M | bf16 µs | slimops µs | × bf16 | MB moved | % copy BW | target | met |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_case.setdefault((r["op"], tuple(r["shape"])), {})[r["provider"]] = r
    for (op, (m, k, n)), providers in by_case.items():
        base = providers.get(first["baseline"])
        for name, r in providers.items():
            if not name.startswith("slimops"):
                continue
            fmt = op if name == "slimops-auto" or name == "slimops-cpu" else f"{op} ({name})"
            if r["status"] != "ok":
                lines.append(f"| {fmt} | {k}→{n} | {m} | {_num(base and base['median_us'], '.1f')} | "
                             f"{r['status']}: {str(r['reason'])[:80]} | | | | {r.get('target') or ''} | |")
                continue
            met = {True: "met", False: "**missed**", None: "-"}[r.get("target_met")]
            lines.append(
                f"| {fmt} | {k}→{n} | {m} | {_num(base and base.get('median_us'), '.1f')} | {r['median_us']:.1f} | "
                f"{_num(r['speedup_vs_baseline'], '.2f')} | {r['bytes'] / 1e6:.1f} | "
                f"{_num(r['frac_of_copy_bw'] and 100 * r['frac_of_copy_bw'], '.0f')} | {r.get('target') or ''} | "
                f"{met if r.get('target') else ''} |"
            )
    return "\n".join(lines) + "\n"


def replace_in_readme(readme: str, table: str) -> str:
    """``readme`` with the text between the BEGIN and END lines replaced by ``table``."""
    try:
        start = readme.index(BEGIN) + len(BEGIN)
        end = readme.index(END, start)
    except ValueError:
        raise ValueError(f"the README has no {BEGIN} ... {END} block") from None
    return readme[:start] + "\n" + table + readme[end:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", help="a slimops bench --suite decode JSON")
    p.add_argument("--readme", help="write the table into this README's decode-table block")
    a = p.parse_args(argv)
    doc = json.loads(Path(a.json).read_text())
    if not any(r.get("suite") == "decode" for r in doc.get("rows", [])):
        p.error(f"{a.json}: no rows of the decode suite (slimops bench --suite decode --json ...)")
    table = render(doc)
    if a.readme:
        path = Path(a.readme)
        path.write_text(replace_in_readme(path.read_text(), table))
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
