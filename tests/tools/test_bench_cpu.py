"""The ``cpu`` bench suite: its cases cover the issue's table, every provider runs, rows carry SQNR.

Nothing here measures speed (timings are as short as the timer allows).
"""

from __future__ import annotations

import pytest
import torch

from slimops.bench.harness import run_suite
from slimops.bench.suites import load_suites
from slimops.bench.suites.cpu import LINEAR_SHAPES, SUITE, _conv1d_as_linear, linear_case

FAST = dict(min_time=0.003, progress=False)


def test_cpu_suite_is_discovered_and_interleaves():
    assert load_suites()["cpu"] is SUITE
    assert SUITE.baseline == "torch-fp32" and SUITE.rounds > 1
    names = {p.name for p in SUITE.providers}
    assert {"torch-fp32", "torch-ao-dynamic", "slimops-w8a8", "slimops-w8a16"} <= names


def test_cpu_cases_cover_the_issue_table():
    cases = SUITE.cases("cpu", False)
    linear = {(c.shape, c.params) for c in cases if c.op == "linear"}
    for k, n in ((768, 3072), (4096, 4096), (4096, 11008)):
        for m in (1, 16, 128):
            for t in (1, 2):
                assert ((m, k, n), f"threads={t}") in linear
    assert set(LINEAR_SHAPES) == {(768, 3072), (4096, 4096), (4096, 11008)}
    models = {(c.op, c.params) for c in cases if c.op != "linear"}
    assert {(name, f"threads={t}") for name in ("gpt2", "gpt2(conv1d->linear)", "bert") for t in (1, 2)} == models


def test_tiny_linear_end_to_end():
    threads = torch.get_num_threads()
    try:
        rows = run_suite(SUITE, "cpu", cases=[linear_case(5, 256, 24, threads=1)], **FAST)
    finally:
        torch.set_num_threads(threads)
    by = {r["provider"]: r for r in rows}
    assert set(by) == {p.name for p in SUITE.providers}
    for name, r in by.items():
        if name == "torch-ao-dynamic" and r["status"] == "skipped":
            continue  # a torch without the x86 / fbgemm engine
        assert r["status"] == "ok", (name, r["reason"])
        assert r["threads"] == 1 and r["params"] == "threads=1"
        assert r["speedup_vs_baseline"] > 0
    assert by["torch-fp32"]["extra"] is None
    for name in ("slimops-w8a8", "slimops-w8a16", "slimops-w8a16-g128"):
        extra = by[name]["extra"]
        assert extra["isa"] in ("avx512vnni", "avxvnni", "avx2", "generic")
        # Per-token int8 activations and per-channel int8 weights: ~40 dB on Gaussian data.
        assert extra["sqnr_db"] > (30 if name == "slimops-w8a8" else 38), (name, extra)


def test_conv1d_as_linear_keeps_the_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        want = model(ids).logits
        swapped = _conv1d_as_linear(model)
        got = swapped(ids).logits
    assert not any(type(m).__name__ == "Conv1D" for m in swapped.modules())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
