"""int4 weight-only on CPU (issue #17): ``weight_int4_linear`` vs fp32 ``nn.Linear``.

Rows: the 4096 -> 11008 layer (Llama-7B's MLP up projection) at M = 1, 4, 16 rows, g128 asym,
1 thread. Providers, timed interleaved (A B C A B C ..., ``slimops._measure.median_seconds``,
medians of ``--repeat`` calls after warm-up): fp32 ``F.linear`` (the baseline; its 180 MB weight
streams from DRAM), slimops int4 on the ISA ``auto`` picks, and int4 with ``SLIMOPS_CPU_ISA=avx2``
forced. The fp32 call between two int4 calls evicts the 32 MB L3, so int4's 25 MB of weights
come mostly from DRAM too, as they would inside a model. Target (DESIGN.md): >= 3x fp32 at M = 1.

``--codebook`` adds ``weight_codebook4_linear`` (NF4 / k-means, g64 as CodebookWeightOnlyConfig's
default) to the same interleaved run: one table for the layer (``slimops_nf4``), one table per
output row (``slimops_codebook_per_row``, as k-means "row"; its 16 x 4 bytes per row are read with
the row) and NF4 with AVX2 forced. The suite is then "codebook4-cpu".

NOTE: the development machine is shared (2 cores, other engineers' jobs running): absolute times
drift between runs; only the ratios within one row mean anything. Each row records the load.

Usage::

    python bench/int4_cpu.py [--repeat 30] [--json bench/results/int4-cpu-<date>.json]
    python bench/int4_cpu.py --codebook [--json bench/results/codebook4-cpu-<date>.json]
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch
import torch.nn.functional as F

import slimops
from slimops import _measure
from slimops.info import cpu_name, versions
from slimops.nn.codebook import quantize_codebook4
from slimops.nn.int4 import quantize_int4

CPU = torch.device("cpu")


def _with_isa(isa: str, fn):
    def run():
        old = os.environ.get("SLIMOPS_CPU_ISA")
        os.environ["SLIMOPS_CPU_ISA"] = isa
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["SLIMOPS_CPU_ISA"]
            else:
                os.environ["SLIMOPS_CPU_ISA"] = old

    return run


def codebook_providers(x: torch.Tensor, w: torch.Tensor, group_size: int = 64) -> tuple[dict, dict]:
    """The codebook4 providers for ``x @ w^T`` and their stored bytes (indices + scales + table)."""
    qweight, nf4, scale = quantize_codebook4(w, group_size, "nf4")
    # the kernel's speed does not depend on the entries: a per-row table is NF4's repeated (no fit to time)
    per_row = nf4.expand(w.shape[0], 16).contiguous()
    layer = lambda: slimops.ops.weight_codebook4_linear(x, qweight, nf4, scale, group_size)  # noqa: E731
    fns = {
        "slimops_nf4": layer,
        "slimops_codebook_per_row": lambda: slimops.ops.weight_codebook4_linear(x, qweight, per_row, scale, group_size),
        "slimops_nf4_avx2": _with_isa("avx2", layer),
    }
    stored = qweight.numel() + scale.numel() * 4
    return fns, {"nf4_g64": stored + 64, "codebook_per_row_g64": stored + per_row.numel() * 4}


def row(m: int, k: int, n: int, group_size: int, repeat: int, codebook: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g) * 0.02
    x = torch.randn(m, k, generator=g)
    qweight, scale, zero = quantize_int4(w, group_size, "asym")
    int4 = lambda: slimops.ops.weight_int4_linear(x, qweight, scale, zero, group_size)  # noqa: E731
    fns = {"fp32_linear": lambda: F.linear(x, w), "slimops_int4": int4, "slimops_int4_avx2": _with_isa("avx2", int4)}
    weight_bytes = {"fp32": w.numel() * 4, "int4": qweight.numel() + (scale.numel() + zero.numel()) * 4}
    if codebook:
        codebook_fns, codebook_bytes = codebook_providers(x, w)
        fns.update(codebook_fns)
        weight_bytes.update(codebook_bytes)
    load = os.getloadavg()[0]
    secs = _measure.median_seconds(list(fns.values()), [CPU] * len(fns), warmup=3, repeats=repeat)
    t = dict(zip(fns, secs))
    return {
        "m": m, "k": k, "n": n, "group_size": group_size, "scheme": "asym", "threads": torch.get_num_threads(),
        "loadavg_1min_before": round(load, 2),
        "median_us": {name: round(s * 1e6, 1) for name, s in t.items()},
        "speedup_vs_fp32": {name: round(t["fp32_linear"] / s, 2) for name, s in t.items() if name != "fp32_linear"},
        "weight_bytes": weight_bytes,
    }


def _isa_flags() -> list[str]:
    """The x86 vector extensions this CPU reports (auto picks the AVX-512 path where avx512_vnni is listed)."""
    want = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return [w for w in want if w in flags]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--json", default=None)
    p.add_argument("--codebook", action="store_true", help="add the codebook4 (NF4 / k-means) providers")
    args = p.parse_args()
    torch.set_num_threads(1)

    out = {
        "suite": "codebook4-cpu" if args.codebook else "int4-cpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "versions": versions(),
        "cpu_isa_env": os.environ.get("SLIMOPS_CPU_ISA", "auto"),
        "cpu_flags": _isa_flags(),
        "note": "shared 2-core machine (other jobs running): interleaved medians; only ratios within a row mean anything",
        "rows": [],
    }
    for m in (1, 4, 16):
        r = row(m, 4096, 11008, 128, args.repeat, args.codebook)
        print(r)
        out["rows"].append(r)
        if args.json:
            _measure.write_json(out, args.json, 2)


if __name__ == "__main__":
    main()
