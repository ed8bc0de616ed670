"""bench/never_slower.py (the never-slower table gpu_check.sh runs on the GPU), checked on the CPU.

Timings here say nothing (a shared 2-core CPU, tiny shapes); what is tested is the
table: every module made the way a user makes it, every row measured or its error
shown, and the exit status failing a row below the threshold.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def never_slower():
    spec = importlib.util.spec_from_file_location("never_slower", ROOT / "bench" / "never_slower.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(mod, tmp_path, *extra):
    out = tmp_path / "ns.json"
    rc = mod.main(["--device", "cpu", "--shapes", "256:128", "--m", "1", "3", "--warmup", "1", "--repeats", "2",
                   "--json", str(out), *extra])
    return rc, json.loads(out.read_text())


def test_every_module_gets_a_measured_row(never_slower, tmp_path):
    rc, data = _run(never_slower, tmp_path, "--min-ratio", "0")
    rows = data["rows"]
    assert len(rows) == len(never_slower.modules()) * 2
    errors = [r for r in rows if "error" in r]
    assert not errors, errors
    assert rc == 0
    for r in rows:
        assert r["ratio"] > 0 and r["baseline_us"] > 0 and r["slimops_us"] > 0
    # the layers really are the slimops ones, not the dense layer left in place
    assert {r["layer"] for r in rows} == {"Int8DynamicLinear", "Int8WeightOnlyLinear", "Int4WeightOnlyLinear",
                                          "Fp8DynamicLinear",
                                          "Int8StaticLinear", "HalfLinear", "MaskedLinear", "BlockSparseLinear",
                                          "Sparse24Linear", "CodebookWeightOnlyLinear"}


def test_a_row_below_the_threshold_fails_the_run(never_slower, tmp_path):
    rc, data = _run(never_slower, tmp_path, "--modules", "Int8DynamicLinear", "--min-ratio", "1e9")
    assert rc == 1 and len(data["rows"]) == 2
