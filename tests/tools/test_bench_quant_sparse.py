"""The quant and sparse bench suites run end to end on tiny cases (CPU); nothing here measures speed."""

from __future__ import annotations

import pytest

from slimops.bench.harness import run_suite
from slimops.bench.suites import load_suites
from slimops.bench.suites import quant, sparse

FAST = dict(min_time=0.002, progress=False)


def test_suites_are_discovered_with_their_targets_shapes():
    suites = load_suites()
    assert {"quant", "sparse"} <= set(suites)
    gpu = {(c.op, c.shape) for c in quant.cases("cuda", quick=False)}
    for k, n in quant.LLAMA_7B:
        for m in quant.TOKENS:
            assert (quant.W8A8, (m, k, n)) in gpu and (quant.W8A16, (m, k, n)) in gpu
    assert (quant.W8A8, (8192, 8192, 8192)) in gpu
    quick = {(c.op, c.shape) for c in quant.cases("cuda", quick=True)}
    assert (quant.W8A8, (4096, 4096, 11008)) in quick and (quant.W8A16, (16, 11008, 4096)) in quick


@pytest.mark.parametrize("case", [
    quant.linear_case(quant.W8A8, 3, 64, 48),
    quant.linear_case(quant.W8A16, 1, 128, 32),
    quant.linear_case(quant.W8A16, 5, 128, 32, group_size=64),
    quant.linear_case(quant.FP8, 2, 64, 32),
], ids=lambda c: f"{c.op}-{c.params}")
def test_quant_tiny_cases(case):
    rows = run_suite(quant.SUITE, "cpu", cases=[case], providers=["torch-bf16", "slimops-cpu"], **FAST)
    by = {r["provider"]: r for r in rows}
    assert by["torch-bf16"]["status"] == "ok" and by["slimops-cpu"]["status"] == "ok", rows
    assert by["slimops-cpu"]["tflops"] > 0


@pytest.mark.parametrize("case", [
    sparse.sparse_case(sparse.MASKED, 8, 64, 64, 0.5),
    sparse.sparse_case(sparse.BLOCK, 3, 128, 128, 0.75),
], ids=lambda c: f"{c.op}")
def test_sparse_tiny_cases(case):
    rows = run_suite(sparse.SUITE, "cpu", cases=[case], providers=["torch-dense", "slimops-cpu"], **FAST)
    by = {r["provider"]: r for r in rows}
    assert by["torch-dense"]["status"] == "ok" and by["slimops-cpu"]["status"] == "ok", rows
