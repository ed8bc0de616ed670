"""Bad-input fuzzing of every op on the CPU (tests/ops/fuzz_ops.py), crash-proof.

Every case runs in a worker process, so a segfault is counted, not fatal. Here:
a CI-sized share of the cases, on the C++ kernels and on the Triton launchers
(interpreted); bench/gpu_check.sh runs 2,000 on CUDA.
"""

from __future__ import annotations

import pytest

from slimops.backend import OPS
from tests.ops import fuzz_ops

OPS_SORTED = sorted(OPS)


def _check(results):
    s = fuzz_ops.summary(results)
    assert not s["defects"], "\n".join(map(str, s["defects"]))
    # The cases reached every op, and each op refused at least one of them.
    refused = {r.case.op for r in results if r.outcome == "raised"}
    assert refused == set(OPS_SORTED), f"no bad call refused by {set(OPS_SORTED) - refused}"
    return s


def test_cpu_kernels_refuse_bad_calls_without_crashing():
    cases = fuzz_ops.plan_cases(OPS_SORTED, 4 * len(OPS_SORTED) * len(fuzz_ops.MUTATIONS), seed=1)
    s = _check(fuzz_ops.fuzz(cases, "cpu"))
    assert s["calls"] >= 400


def test_triton_launchers_refuse_bad_calls_without_crashing():
    triton_ops = sorted(name for name, op in OPS.items() if op["triton"])
    cases = fuzz_ops.plan_cases(triton_ops, 2 * len(triton_ops) * len(fuzz_ops.MUTATIONS), seed=2)
    results = fuzz_ops.fuzz(cases, "cpu", backend="triton")
    s = fuzz_ops.summary(results)
    assert not s["defects"], "\n".join(map(str, s["defects"]))
    assert s["calls"] >= 150


def test_a_crashing_case_is_counted_and_the_next_case_still_runs():
    cases = [fuzz_ops.Case("quantize_per_token", "dtype", 0), fuzz_ops.Case(fuzz_ops.SELF_TEST_CRASH, "dtype", 0),
             fuzz_ops.Case("quantize_per_token", "dtype", 1)]
    results = fuzz_ops.fuzz(cases, "cpu")
    assert [r.outcome for r in results] == ["raised", "crash", "raised"]
    assert "signal 6" in results[1].detail  # SIGABRT


@pytest.mark.parametrize("mutation", fuzz_ops.MUTATIONS)
def test_every_mutation_applies_somewhere(mutation):
    if mutation == "device":
        pytest.skip("moves a CUDA argument to the CPU: runs in the GPU fuzz (bench/gpu_check.sh)")
    applied = [op for op in OPS_SORTED if fuzz_ops.build_call(fuzz_ops.Case(op, mutation, 3), "cpu") is not None]
    assert applied, f"mutation {mutation!r} applied to no op"
