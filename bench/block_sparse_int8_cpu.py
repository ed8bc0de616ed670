"""Block-sparse int8 on CPU (issue #17): ``block_sparse_int8_linear`` against what a user would run instead.

Rows: the 4096 -> 11008 layer (Llama-7B's MLP up projection), 1 thread, a block size (64x64, 32x32,
16x16), a share of zero tiles (75%, 90%: exactly that many tiles dropped at random) and M rows of x
(1, 4, 16). Providers, timed interleaved (A B C D A B C D ..., ``slimops._measure.median_seconds``,
medians of ``--repeat`` calls after warm-up):

* ``fp32_linear``: dense fp32 ``F.linear`` on the pruned weight (the baseline: 180 MB of weights);
* ``block_sparse_fp32``: slimops ``block_sparse_linear`` on the same tiles in fp32;
* ``dense_int8_w8a16``: slimops ``weight_int8_linear`` on the dense int8 weight (int8 without the sparsity);
* ``block_sparse_int8``: this op, on the ISA ``auto`` picks.

Each provider's median is taken both in wall time and in the calling thread's CPU time
(:func:`wall_and_cpu_medians`: why both).

Each row also gives the output SQNR of ``block_sparse_int8`` against the float sparse layer it quantizes
(``block_sparse_fp32``'s output), on Gaussian weights. Target (issue #17): 64x64 at 75% zero tiles,
M = 1, >= 6x ``fp32_linear``.

NOTE: the development machine is shared (2 cores, other engineers' jobs running): absolute times
drift between runs; only the ratios within one row mean anything. Each row records the load.

Usage::

    python bench/block_sparse_int8_cpu.py [--repeat 30] [--rows quick|all] [--json bench/results/block-sparse-int8-cpu-<date>.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch
import torch.nn.functional as F

import slimops
from slimops import _measure
from slimops.info import cpu_name, versions
from slimops.nn import BlockSparseInt8Linear, BlockSparseLinear

K, N = 4096, 11008

# (block, zero-tile share, M): the target row first, then the other rows.
ALL_ROWS = (
    [(64, 0.75, m) for m in (1, 4, 16)]
    + [(64, 0.90, m) for m in (1, 4, 16)]
    + [(32, 0.75, 1), (16, 0.75, 1)]
)
QUICK_ROWS = ALL_ROWS[:1]


def pruned_weight(block: int, zero_share: float, seed: int = 0) -> torch.Tensor:
    """Gaussian [N, K] with exactly round(zero_share * tiles) tiles zeroed, chosen at random."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = N // block, K // block
    keep = torch.ones(rows * cols, dtype=torch.bool)
    keep[torch.randperm(rows * cols, generator=g)[: round(zero_share * rows * cols)]] = False
    mask = keep.reshape(rows, cols).repeat_interleave(block, 0).repeat_interleave(block, 1)
    return torch.randn(N, K, generator=g) * 0.02 * mask


def wall_and_cpu_medians(fns, *, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """Median wall and thread-CPU seconds of each of ``fns`` (1 thread: the call runs on this thread), interleaved.

    NOTE: why not only ``_measure.median_seconds`` (wall clock): on this shared 2-core machine at load 6-8 a
    call is descheduled for other processes' time slices, which inflates a 100 ms call (fp32 ``F.linear``,
    many slices) far more than a 1 ms one (few), and so inflates the ratio. The thread's CPU time leaves out
    the time it did not run; the weight streams still compete for memory bandwidth either way.
    """
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(warmup):
        for fn in fns:
            fn()
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            w0, c0 = time.perf_counter(), time.thread_time()
            fn()
            c1, w1 = time.thread_time(), time.perf_counter()
            wall[i].append(w1 - w0)
            cpu[i].append(c1 - c0)
    return [statistics.median(v) for v in wall], [statistics.median(v) for v in cpu]


def row(block: int, zero_share: float, m: int, repeat: int) -> dict:
    w = pruned_weight(block, zero_share)
    x = torch.randn(m, K, generator=torch.Generator().manual_seed(1))
    linear = torch.nn.Linear(K, N, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w)
    sparse = BlockSparseLinear.from_dense(linear, block=block)
    bsi8 = BlockSparseInt8Linear.from_block_sparse(sparse)
    q, scale, _ = slimops.ops.quantize_per_channel(w, 0, True)
    v, rp, ci, s = bsi8.values, bsi8.row_ptr, bsi8.col_idx, bsi8.weight_scale
    fns = {
        "fp32_linear": lambda: F.linear(x, w),
        "block_sparse_fp32": lambda: slimops.ops.block_sparse_linear(x, sparse.values, sparse.row_ptr, sparse.col_idx),
        "dense_int8_w8a16": lambda: slimops.ops.weight_int8_linear(x, q, scale),
        "block_sparse_int8": lambda: slimops.ops.block_sparse_int8_linear(x, v, rp, ci, s),
    }
    with torch.inference_mode():
        ref = fns["block_sparse_fp32"]()
        sqnr = _measure.sqnr_db(*_measure.signal_and_noise(ref, fns["block_sparse_int8"]()))
        load = os.getloadavg()[0]
        wall, cpu = wall_and_cpu_medians(list(fns.values()), warmup=3, repeats=repeat)
    t, c = dict(zip(fns, wall)), dict(zip(fns, cpu))
    return {
        "k": K, "n": N, "m": m, "block": f"{block}x{block}", "zero_tiles": zero_share,
        "stored_tiles": int(v.shape[0]), "threads": torch.get_num_threads(),
        "loadavg_1min_before": round(load, 2),
        "median_us": {name: round(sec * 1e6, 1) for name, sec in t.items()},
        "median_cpu_us": {name: round(sec * 1e6, 1) for name, sec in c.items()},
        "speedup_vs_fp32_linear": {name: round(t["fp32_linear"] / sec, 2) for name, sec in t.items()
                                   if name != "fp32_linear"},
        "cpu_time_speedup_vs_fp32_linear": {name: round(c["fp32_linear"] / sec, 2) for name, sec in c.items()
                                            if name != "fp32_linear"},
        "block_sparse_int8_vs": {name: round(t[name] / t["block_sparse_int8"], 2) for name in t
                                 if name != "block_sparse_int8"},
        "block_sparse_int8_vs_cpu_time": {name: round(c[name] / c["block_sparse_int8"], 2) for name in c
                                          if name != "block_sparse_int8"},
        "sqnr_db_vs_float_sparse": round(sqnr, 2),
        "weight_bytes": {"fp32_dense": w.numel() * 4, "block_sparse_fp32": sparse.values.numel() * 4,
                         "dense_int8": q.numel(), "block_sparse_int8": v.numel() + s.numel() * 4},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--rows", choices=("quick", "all"), default="all")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {
        "suite": "block-sparse-int8-cpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "versions": versions(),
        "cpu_isa_env": os.environ.get("SLIMOPS_CPU_ISA", "auto"),
        "note": "shared 2-core machine (other jobs running): interleaved medians of wall time and of thread CPU time (the "
                "CPU-time ratios leave out time-slicing, which inflates long calls more); only ratios within a row mean anything",
        "rows": [],
    }
    for block, zero_share, m in QUICK_ROWS if args.rows == "quick" else ALL_ROWS:
        r = row(block, zero_share, m, args.repeat)
        print(r, flush=True)
        out["rows"].append(r)
        if args.json:
            _measure.write_json(out, args.json, 2)
    return out


if __name__ == "__main__":
    main()
