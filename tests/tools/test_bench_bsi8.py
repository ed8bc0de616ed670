"""bench/block_sparse_int8_sweep.py (the H200 sweep of the CUDA kernel) and bench/block_sparse_int8_cpu.py:
argument handling, the case list, the config list matching the kernel's, and a CPU row's fields.
Nothing here measures speed."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep():
    return _load("block_sparse_int8_sweep")


def test_configs_are_the_kernels(sweep):
    src = (ROOT / "csrc" / "cuda" / "block_sparse_int8.cu").read_text()
    listed = re.search(r"constexpr Config kConfigs\[\] = \{(.*?)\};", src).group(1)
    pairs = [tuple(int(v) for v in p) for p in re.findall(r"\{(\d+), (\d+)\}", listed)]
    assert pairs == sweep.CONFIGS


def test_dry_run_lists_the_cases(sweep, capsys):
    assert sweep.main(["--dry-run", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "8 cases x 3 CUDA configs" in out  # 1 shape x 1 block x 2 shares x 4 M x 1 dtype
    assert sweep.main(["--dry-run", "--dtype", "bf16", "--dtype", "fp16", "--m", "1"]) == 0
    assert "24 cases" in capsys.readouterr().out  # 2 shapes x 3 blocks x 2 shares x 1 M x 2 dtypes


@pytest.mark.parametrize("argv,message", [
    (["--m", "17"], "--m must be in 1..16"),
    (["--m", "0"], "--m must be in 1..16"),
    (["--repeat", "0"], "--repeat must be >= 1"),
    (["--dtype", "fp32"], "invalid choice"),
])
def test_bad_arguments_are_refused(sweep, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        sweep.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU-only machine gets")
def test_without_cuda_it_says_so(sweep, capsys):
    assert sweep.main(["--quick"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_cpu_bench_row_fields(monkeypatch):
    bench = _load("block_sparse_int8_cpu")
    monkeypatch.setattr(bench, "K", 256)
    monkeypatch.setattr(bench, "N", 512)
    r = bench.row(64, 0.75, 1, repeat=1)
    assert r["stored_tiles"] == 8  # exactly 25% of the 32 tiles
    assert set(r["median_us"]) == {"fp32_linear", "block_sparse_fp32", "dense_int8_w8a16", "block_sparse_int8"}
    assert r["sqnr_db_vs_float_sparse"] > 35
    assert r["weight_bytes"]["block_sparse_int8"] == 8 * 64 * 64 + 512 * 4


def test_accuracy_rows_compare_the_three_granularities(monkeypatch):
    import sys

    accuracy = _load("block_sparse_int8_accuracy")
    monkeypatch.setattr(sys.modules["block_sparse_int8_cpu"], "K", 256)
    monkeypatch.setattr(sys.modules["block_sparse_int8_cpu"], "N", 512)
    r = accuracy.granularity_row(32)
    assert (r["k"], r["n"], r["block"]) == (256, 512, "32x32")
    assert set(r["weight_sqnr_db"]) == {"per_row", "per_tile", "per_tile_row"}
    assert all(35 < v < 60 for v in r["weight_sqnr_db"].values()), r
