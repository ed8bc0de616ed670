"""The H200 sweep of ``block_sparse_int8_linear``'s CUDA C++ decode kernel (issue #17): which config, and
whether it beats Triton.

The CUDA kernel (csrc/cuda/block_sparse_int8.cu) is compiled in a few (warps per CTA, tile rows per
thread) configs, listed as ``kConfigs`` there and as :data:`CONFIGS` here; ``SLIMOPS_BSI8_CUDA_CONFIG=<i>``
picks one per call. For each case (Llama-7B shape, block, zero-tile share, M, dtype), this times, interleaved
with CUDA events and a cold L2 (``slimops._measure.median_seconds(cuda_events=True)``):

* ``bf16_linear``: dense ``F.linear`` on the pruned weight in x's dtype (what the user replaces);
* ``triton``: the op with Triton forced (the current default on GPUs);
* ``cuda[i]``: the op with the CUDA C++ kernel forced, config ``i``;

and checks every CUDA config's output against Triton's (max |diff| / max |ref|). It writes one JSON with
the device name, versions and date; each case is written as soon as it is measured (a time limit still
leaves the finished ones). The table decides ``kDefaultConfig`` and the op's rule in csrc/ops.cpp.

Usage (GPU machine)::

    python bench/block_sparse_int8_sweep.py --json $OUT/block-sparse-int8-sweep.json [--quick]

``--dry-run`` prints the cases without running anything (any machine; tests/tools/test_bench_bsi8.py).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import sys

import torch
import torch.nn.functional as F

# What csrc/cuda/block_sparse_int8.cu compiles (kConfigs), in its order: (warps per CTA, tile rows per thread).
CONFIGS = [(4, 2), (8, 2), (4, 4)]

SHAPES = [(4096, 11008), (11008, 4096)]  # (in_features K, out_features N)
BLOCKS = [64, 32, 16]
ZERO_SHARES = [0.75, 0.90]
MS = [1, 4, 8, 16]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cases(quick: bool, dtypes: list[str], ms: list[int]) -> list[dict]:
    shapes = SHAPES[:1] if quick else SHAPES
    blocks = BLOCKS[:1] if quick else BLOCKS
    return [
        {"k": k, "n": n, "block": b, "zero_tiles": z, "m": m, "dtype": d}
        for (k, n), b, z, m, d in itertools.product(shapes, blocks, ZERO_SHARES, ms, dtypes)
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="where to write the results (default: print only)")
    p.add_argument("--quick", action="store_true", help="4096 -> 11008 and 64x64 blocks only")
    p.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="repeatable; default bf16")
    p.add_argument("--m", action="append", type=int, help="rows of x, repeatable, 1..16; default 1 4 8 16")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--dry-run", action="store_true", help="print the cases and exit")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ["bf16"]
    args.m = args.m or MS
    bad = [m for m in args.m if not 1 <= m <= 16]
    if bad:
        p.error(f"--m must be in 1..16 (the CUDA kernel's decode sizes), got {bad}")
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    return args


def _pruned(k: int, n: int, block: int, zero_share: float, dtype, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rows, cols = n // block, k // block
    keep = torch.ones(rows * cols, dtype=torch.bool)
    keep[torch.randperm(rows * cols, generator=g)[: round(zero_share * rows * cols)]] = False
    mask = keep.reshape(rows, cols).repeat_interleave(block, 0).repeat_interleave(block, 1)
    return (torch.randn(n, k, generator=g) * 0.02 * mask).to(device=device, dtype=dtype)


def _with_config(i: int, fn):
    def run():
        os.environ["SLIMOPS_BSI8_CUDA_CONFIG"] = str(i)
        try:
            return fn()
        finally:
            del os.environ["SLIMOPS_BSI8_CUDA_CONFIG"]

    return run


def measure(case: dict, repeat: int) -> dict:
    import slimops
    from slimops import _measure
    from slimops.nn import BlockSparseInt8Linear

    dev = torch.device("cuda")
    dtype = DTYPES[case["dtype"]]
    w = _pruned(case["k"], case["n"], case["block"], case["zero_tiles"], dtype, dev)
    x = torch.randn(case["m"], case["k"], device=dev, dtype=dtype)
    linear = torch.nn.Linear(case["k"], case["n"], bias=False, device=dev, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(w)
    layer = BlockSparseInt8Linear.from_float(linear, block=case["block"])
    args = (x, layer.values, layer.row_ptr, layer.col_idx, layer.weight_scale)

    def forced(backend):
        def run():
            with slimops.use_backend(backend):
                return slimops.ops.block_sparse_int8_linear(*args)

        return run

    fns = {"bf16_linear": lambda: F.linear(x, w), "triton": forced("triton")}
    fns.update({f"cuda[{i}]": _with_config(i, forced("cuda")) for i in range(len(CONFIGS))})
    ref = fns["triton"]().float()
    errors = {}
    for name in fns:
        if name.startswith("cuda"):
            out = fns[name]().float()
            errors[name] = round((out - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30), 6)
    secs = _measure.median_seconds(list(fns.values()), [dev] * len(fns), warmup=5, repeats=repeat, cuda_events=True)
    t = dict(zip(fns, secs))
    return {
        **case,
        "stored_tiles": int(layer.values.shape[0]),
        "median_us": {name: round(s * 1e6, 2) for name, s in t.items()},
        "speedup_vs_bf16_linear": {name: round(t["bf16_linear"] / s, 2) for name, s in t.items() if name != "bf16_linear"},
        "max_rel_diff_vs_triton": errors,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    todo = cases(args.quick, args.dtype, args.m)
    if args.dry_run:
        for c in todo:
            print(c)
        print(f"{len(todo)} cases x {len(CONFIGS)} CUDA configs {CONFIGS}")
        return 0
    if not torch.cuda.is_available():
        print("block_sparse_int8_sweep: needs a CUDA device (use --dry-run to list the cases)", file=sys.stderr)
        return 2
    import slimops
    from slimops import _measure
    from slimops.info import versions

    if not slimops._build._C.with_cuda:
        print("block_sparse_int8_sweep: this slimops build has no CUDA kernels", file=sys.stderr)
        return 2
    out = {
        "suite": "block-sparse-int8-sweep",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "versions": versions(),
        "configs": [{"index": i, "warps": w, "rows_per_thread": r} for i, (w, r) in enumerate(CONFIGS)],
        "rows": [],
    }
    for c in todo:
        r = measure(c, args.repeat)
        print(r, flush=True)
        out["rows"].append(r)
        if args.json:
            _measure.write_json(out, args.json, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
