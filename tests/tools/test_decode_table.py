"""bench/decode_table.py renders the README's decode table from a decode-suite JSON (made here on the CPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from slimops.bench.harness import run_suite, write_json
from slimops.bench.suites import decode

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("decode_table", ROOT / "bench" / "decode_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cpu_json(tmp_path_factory):
    cases = [decode.decode_case(decode.W8A16, 1, 256, 384), decode.decode_case(decode.INT4, 16, 256, 384),
             decode.decode_case(decode.W8A8, 1, 256, 384)]
    rows = run_suite(decode.SUITE, "cpu", cases=cases, progress=False)
    path = tmp_path_factory.mktemp("j") / "decode.json"
    write_json(rows, str(path), ["bench", "--suite", "decode"])
    return path, rows


def test_one_line_per_slimops_row_with_its_numbers(table, cpu_json):
    path, rows = cpu_json
    md = table.render(json.loads(path.read_text()))
    lines = md.splitlines()
    assert "A CPU run" in lines[0] and "targets are for an H200" in lines[0]
    body = [line for line in lines if line.startswith(("| W8A16", "| int4", "| W8A8"))]
    assert len(body) == 3
    w8 = next(r for r in rows if r["op"] == decode.W8A16 and r["provider"] == "slimops-cpu")
    base = next(r for r in rows if r["op"] == decode.W8A16 and r["provider"] == "torch-bf16")
    cells = [c.strip() for c in body[0].strip("|").split("|")]
    assert cells[:6] == ["W8A16", "256→384", "1", f"{base['median_us']:.1f}", f"{w8['median_us']:.1f}",
                         f"{w8['speedup_vs_baseline']:.2f}"]
    assert cells[6] == f"{w8['bytes'] / 1e6:.1f}"
    assert cells[8] == decode.target(decode.W8A16, 1).text
    assert cells[9] == {True: "met", False: "**missed**", None: "-"}[w8["target_met"]]
    int4 = [c.strip() for c in body[1].strip("|").split("|")]
    assert int4[8] == "" and int4[9] == ""  # no target for int4 in issue 12
    w8a8 = next(r for r in rows if r["op"] == decode.W8A8 and r["provider"] == "slimops-cpu")
    assert isinstance(w8a8["target_met"], bool)  # a ratio-only target is known on the CPU too
    assert body[2].rstrip(" |").endswith("met" if w8a8["target_met"] else "**missed**")


def test_readme_block_is_replaced_and_nothing_else(table, cpu_json, tmp_path):
    path, _ = cpu_json
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{table.BEGIN}\nold table\n{table.END}\nafter\n")
    assert table.main([str(path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# x\nbefore\n{table.BEGIN}\n") and text.endswith(f"{table.END}\nafter\n")
    assert "old table" not in text and "| W8A16 | 256→384 | 1 |" in text
    with pytest.raises(ValueError, match="decode-table"):
        table.replace_in_readme("no block", "t")


def test_the_real_readme_has_the_block(table):
    text = (ROOT / "README.md").read_text()
    assert text.count(table.BEGIN) == 1 and text.count(table.END) == 1


def test_a_json_of_another_suite_is_refused(table, tmp_path):
    other = tmp_path / "o.json"
    other.write_text(json.dumps({"rows": [{"suite": "quant"}]}))
    with pytest.raises(SystemExit):
        table.main([str(other)])
