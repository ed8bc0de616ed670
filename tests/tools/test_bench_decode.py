"""The decode suite (issue 12) and the harness's interleaved timing and targets, on the CPU.

Nothing here measures speed: the CPU rows test the plumbing (every format made the
way a user makes it, its bytes counted from its tensors, the rows' targets, the JSON).
"""

from __future__ import annotations

import json

import pytest
import torch

from slimops.bench.harness import COPY_PROVIDER, Case, Provider, Suite, Target, run_suite
from slimops.bench.suites import decode, load_suites
from slimops.cli import main

FAST = dict(progress=False)


def test_gpu_cases_are_the_issue_table_ordered_by_tokens():
    cases = decode.cases("cuda", quick=False)
    got = {(c.op, c.shape) for c in cases}
    for k, n in decode.LLAMA_7B:
        for m in decode.TOKENS:
            for fmt in decode.FORMATS:
                assert ((fmt, (m, k, n)) in got) == (fmt != decode.MASKED or m == 4096), (fmt, m, k, n)
    assert len(cases) == len(got)
    tokens = [c.shape[0] for c in cases]
    assert tokens == sorted(tokens)  # a time limit cuts the large-M rows, not the decode ones
    quick = decode.cases("cuda", quick=True)
    assert quick and all(c.target is not None for c in quick)
    assert {(c.op, c.shape) for c in quick} == {(c.op, c.shape) for c in cases if c.target is not None}


@pytest.mark.parametrize(
    ("fmt", "m", "bounds"),
    [
        (decode.W8A16, 1, dict(min_speedup=2.0, max_us=16.0, min_frac_of_copy=0.7)),
        (decode.W8A16, 16, dict(min_speedup=2.0, max_us=16.0, min_frac_of_copy=0.7)),
        (decode.W8A16_G128, 16, dict(min_speedup=1.8)),
        (decode.W8A8, 1, dict(min_speedup=1.8)),
        (decode.W8A8, 128, dict(min_speedup=1.3)),
        (decode.W8A16, 256, dict(min_speedup=1.3)),
        (decode.FP8, 16, dict(min_speedup=1.6)),
        (decode.W8A16, 4096, dict(min_speedup=1.0)),
        (decode.S24, 16, dict(min_speedup=1.5)),
        (decode.S24, 4096, dict(min_speedup=1.0, against="torch-2:4")),
        (decode.BLOCK90, 1, dict(min_speedup=4.0)),
        (decode.BLOCK75, 4096, dict(min_speedup=2.5)),
        (decode.MASKED, 4096, dict(min_speedup=1 / 1.15)),
    ],
)
def test_targets_are_the_issues(fmt, m, bounds):
    t = decode.target(fmt, m)
    for name, value in bounds.items():
        assert getattr(t, name) == pytest.approx(value) if isinstance(value, float) else getattr(t, name) == value
    assert decode.target(decode.INT4, 1) is None  # issue 12 sets none for int4
    assert decode.target(decode.BLOCK75, 1) is None and decode.target(decode.BLOCK90, 4096) is None


def _row(provider, us, frac=None):
    return {"provider": provider, "status": "ok", "median_us": us, "frac_of_copy_bw": frac, "baseline": "base"}


def test_target_met_checks_every_bound():
    t = Target("x", min_speedup=2.0, max_us=16.0, min_frac_of_copy=0.7)
    base = _row("base", 30.0)
    assert t.met(_row("slimops-auto", 15.0, 0.75), [base]) is True
    assert t.met(_row("slimops-auto", 15.5, 0.75), [base]) is False  # 1.94x
    assert t.met(_row("slimops-auto", 10.0, 0.69), [base]) is False  # bandwidth
    assert t.met(_row("slimops-auto", 14.0, 0.8), [_row("base", 100.0)]) is True
    assert Target("x", max_us=16.0).met(_row("slimops-auto", 16.5), []) is False
    assert t.met(_row("slimops-auto", 10.0, None), [base]) is None  # no copy row: not known
    assert t.met(_row("slimops-auto", 10.0, 0.8), []) is None  # no baseline: not known
    other = Target("x", min_speedup=1.0, against="torch-2:4")
    assert other.met(_row("slimops-auto", 10.0), [base, _row("torch-2:4", 9.0)]) is False
    assert other.met(_row("slimops-auto", 10.0), [base, _row("torch-2:4", 11.0)]) is True


def test_interleaved_suite_takes_turns_and_fills_targets():
    calls = []

    def provider(name):
        def prepare(case, args):
            def fn():
                calls.append(name)

            fn.nbytes = 100 if name == "b" else None
            return fn

        return Provider(name, ("cpu",), prepare)

    case = Case("op", (1,), torch.float32, lambda d: (), nbytes=50, target=Target("never", min_speedup=1e9))
    easy = Case("op", (2,), torch.float32, lambda d: (), nbytes=50, target=Target("always", min_speedup=0.0))
    suite = Suite("t", "", lambda d, q: [case, easy], [provider("a"), provider("slimops-b")], baseline="a",
                  interleave=True)
    rows = run_suite(suite, "cpu", quick=True, **FAST)
    # One call each to check the provider alone, 3 warm-up rounds, then 20 timed rounds, in turn.
    first = calls[: len(calls) // 2]
    assert first[:2] == ["a", "slimops-b"] and first[2:] == ["a", "slimops-b"] * 23
    assert COPY_PROVIDER not in {r["provider"] for r in rows}  # the large copy is a GPU row
    by = {(r["shape"][0], r["provider"]): r for r in rows}
    assert by[1, "slimops-b"]["target"] == "never" and by[1, "slimops-b"]["target_met"] is False
    assert by[2, "slimops-b"]["target_met"] is True
    assert by[2, "a"]["target_met"] is None  # the baseline is not what the target is about
    assert by[1, "a"]["bytes"] == 50


def _tiny_rows(tmp_path, extra=()):
    out = tmp_path / "decode.json"
    rc = main(["bench", "--suite", "decode", "--device", "cpu", "--quick", "--json", str(out), *extra])
    return rc, json.loads(out.read_text())


def test_cli_runs_every_format_on_cpu(tmp_path):
    assert "decode" in load_suites()
    rc, doc = _tiny_rows(tmp_path)
    assert rc == 0
    rows = doc["rows"]
    assert {r["op"] for r in rows} == set(decode.FORMATS)
    bad = [r for r in rows if r["provider"] in ("torch-bf16", "slimops-cpu") and r["status"] != "ok"]
    assert not bad, bad
    for r in rows:
        assert r["suite"] == "decode" and r["versions"]["torch"] == torch.__version__ and r["date"]
        if r["status"] == "ok":
            assert r["median_us"] > 0 and r["speedup_vs_baseline"] > 0 and r["gbps"] > 0
    by = {(r["op"], tuple(r["shape"]), r["provider"]): r for r in rows}
    for (op, (m, k, n), provider), r in by.items():
        if provider != "slimops-cpu":
            continue
        dense = by[op, (m, k, n), "torch-bf16"]["bytes"]
        io = 2 * (m * k + m * n)
        if op == decode.MASKED:
            assert r["bytes"] == dense + n * k  # the dense step's bytes and the bool mask
            continue
        assert dense == io + 2 * n * k
        weight = r["bytes"] - io  # every tensor the layer holds
        expect = {decode.W8A16: 1, decode.W8A16_G128: 1, decode.W8A8: 1, decode.FP8: 1, decode.INT4: 0.5,
                  decode.S24: 1, decode.BLOCK75: 0.5, decode.BLOCK90: 0.2}[op]
        # the packed weight (1 byte an int8 / fp8, half an int4, the kept half of 2:4 bf16, the kept bf16
        # tiles, give or take one 64x64 tile), plus at most 25% for scales and indices
        tile = 2 * 64 * 64 if op in (decode.BLOCK75, decode.BLOCK90) else 0
        assert expect * n * k - tile <= weight <= 1.25 * expect * n * k + tile + 8 * n, (op, weight, n * k)
        t = decode.target(op, m)
        if t is not None:
            assert r["target"] == t.text
            # the CPU has no copy row: a target that needs the copy bandwidth is not known there
            assert r["target_met"] is None if t.min_frac_of_copy is not None else isinstance(r["target_met"], bool)


def test_cli_rejects_a_provider_the_suite_lacks(tmp_path):
    assert main(["bench", "--suite", "decode", "--device", "cpu", "--quick", "--providers", "nope"]) == 2
