"""2:4 + int8 weight-only on CPU (issue #17): ``sparse24_int8_linear`` against the layers it replaces.

Rows: 4096 -> 11008 and 11008 -> 4096 (Llama-7B's MLP), M = 1, 4, 16 rows, 1 thread. One random
weight (std 0.02) pruned 2:4 by magnitude; every provider computes that pruned layer:
``fp32_linear`` (``F.linear`` on the dense 2:4 weight, the baseline), ``sparse24_fp32``
(slimops ``sparse24_linear`` on the fp32 values), ``w8a16_dense`` (slimops ``weight_int8_linear``,
the dense int8 layer a fallback would give) and ``sparse24_int8`` (this op, on the ISA ``auto`` picks).
Timed interleaved (A B C D A B C D ..., ``slimops._measure.median_seconds``, medians of
``--repeat`` calls after warm-up). Also per row: the output SQNR of the int8 layer against the
float 2:4 layer (float64), and the weight bytes of each format (bf16 dense for the file ratio).

NOTE: the development machine is shared (2 cores, other engineers' jobs running): absolute times
drift between runs; only the ratios within one row mean anything. Each row records the load.

Usage::

    python bench/sparse24_int8_cpu.py [--repeat 20] [--json bench/results/sparse24-int8-cpu-<date>.json]
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

CPU = torch.device("cpu")


def _pruned_2_4(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    w = torch.randn(n, k, generator=g) * 0.02
    groups = w.reshape(n, k // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    return (groups * keep).reshape(n, k)


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return round((10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())).item(), 2)


def row(m: int, k: int, n: int, repeat: int) -> dict:
    g = torch.Generator().manual_seed(0)
    w = _pruned_2_4(n, k, g)
    x = torch.randn(m, k, generator=g)
    values, meta = slimops.ops.sparse24_compress(w)
    qvalues, vscale, _ = slimops.ops.quantize_per_channel(values, 0, True)
    vscale = vscale.reshape(-1)
    qdense, dscale, _ = slimops.ops.quantize_per_channel(w, 0, True)
    fns = {
        "fp32_linear": lambda: F.linear(x, w),
        "sparse24_fp32": lambda: slimops.ops.sparse24_linear(x, values, meta),
        "w8a16_dense": lambda: slimops.ops.weight_int8_linear(x, qdense, dscale),
        "sparse24_int8": lambda: slimops.ops.sparse24_int8_linear(x, qvalues, meta, vscale),
    }
    load = os.getloadavg()[0]
    secs = _measure.median_seconds(list(fns.values()), [CPU] * len(fns), warmup=3, repeats=repeat)
    t = dict(zip(fns, secs))
    exact = x.double() @ w.double().t()
    return {
        "m": m, "k": k, "n": n, "threads": torch.get_num_threads(), "loadavg_1min_before": round(load, 2),
        "median_us": {name: round(s * 1e6, 1) for name, s in t.items()},
        "sparse24_int8_speedup_vs": {name: round(s / t["sparse24_int8"], 2) for name, s in t.items()
                                     if name != "sparse24_int8"},
        "sqnr_db_vs_float_2_4": {"sparse24_int8": _sqnr_db(exact, fns["sparse24_int8"]()),
                                 "w8a16_dense": _sqnr_db(exact, fns["w8a16_dense"]())},
        "weight_bytes": {"fp32_dense": w.numel() * 4, "bf16_dense": w.numel() * 2,
                         "sparse24_int8": qvalues.numel() + meta.numel() + vscale.numel() * 4},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    from int4_cpu import _isa_flags  # bench/ is the script's directory: the one list of ISA flags

    out = {
        "suite": "sparse24-int8-cpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "versions": versions(),
        "cpu_isa_env": os.environ.get("SLIMOPS_CPU_ISA", "auto"),
        "cpu_flags": _isa_flags(),
        "note": "shared 2-core machine (other jobs running): interleaved medians; only ratios within a row mean anything",
        "rows": [],
    }
    for k, n in ((4096, 11008), (11008, 4096)):
        for m in (1, 4, 16):
            r = row(m, k, n, args.repeat)
            print(r)
            out["rows"].append(r)
            if args.json:
                _measure.write_json(out, args.json, 2)
    b = out["rows"][0]["weight_bytes"]
    out["weight_bytes_ratio_vs_bf16"] = round(b["sparse24_int8"] / b["bf16_dense"], 4)
    if args.json:
        _measure.write_json(out, args.json, 2)


if __name__ == "__main__":
    main()
