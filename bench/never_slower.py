"""The never-slower table: every slimops layer against the layer it replaces, same run.

For each slimops module (made the way a user makes it: ``slimops.convert`` of a
bf16 ``nn.Linear``, or the Pruner's masked layer), each Llama-7B shape and each
M, the median time of ``module(x)`` and of the bf16 ``nn.Linear`` it replaces,
interleaved (slimops._measure.median_seconds; on CUDA: events, cold L2). A row
whose ratio (baseline time / slimops time) is below ``--min-ratio`` (0.95) fails
the run: that shape class must be routed to the faster path.

Usage (GPU machine; bench/gpu_check.sh runs it)::

    python bench/never_slower.py --device cuda --json never-slower.json

Each row is written as soon as it is measured, so a time limit still leaves
the rows that finished. On the CPU it runs too (small shapes, fp32 baseline):
tests/tools/test_never_slower.py checks the table's shape there.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import slimops
from slimops import _measure
from slimops.nn import MaskedLinear

LLAMA_SHAPES = [(4096, 11008), (11008, 4096), (4096, 4096)]  # (in_features, out_features)
MS = [1, 16, 128, 4096]


def _convert(config) -> Callable[[nn.Linear, torch.Tensor], nn.Module]:
    def make(linear: nn.Linear, x: torch.Tensor) -> nn.Module:
        return slimops.convert(nn.Sequential(copy.deepcopy(linear)), config)[0]

    return make


def _int8_static(linear: nn.Linear, x: torch.Tensor) -> nn.Module:
    model = slimops.prepare(nn.Sequential(copy.deepcopy(linear)), slimops.Int8StaticConfig())
    with torch.no_grad():
        model(x)  # calibration on the timed input
    return slimops.convert(model, slimops.Int8StaticConfig())[0]


def _masked(linear: nn.Linear, x: torch.Tensor) -> nn.Module:
    w = linear.weight.detach().clone()
    mask = torch.rand(w.shape, device=w.device) < 0.5
    return MaskedLinear(nn.Parameter(w * mask), None if linear.bias is None else nn.Parameter(linear.bias.detach()),
                        mask)


def modules() -> dict[str, Callable[[nn.Linear, torch.Tensor], nn.Module]]:
    """name -> how a user makes that slimops layer from an ``nn.Linear``."""
    return {
        "Int8DynamicLinear": _convert(slimops.Int8DynamicConfig()),
        "Int8WeightOnlyLinear": _convert(slimops.Int8WeightOnlyConfig()),
        "Int8WeightOnlyLinear-g128": _convert(slimops.Int8WeightOnlyConfig(group_size=128)),
        "Int4WeightOnlyLinear-g128": _convert(slimops.Int4WeightOnlyConfig(group_size=128)),
        "CodebookWeightOnlyLinear-nf4-g64": _convert(slimops.CodebookWeightOnlyConfig()),
        "Fp8DynamicLinear": _convert(slimops.Fp8DynamicConfig()),
        "Int8StaticLinear": _int8_static,
        "HalfLinear": _convert(slimops.HalfConfig(torch.bfloat16)),
        "MaskedLinear": _masked,
        "BlockSparseLinear-75": _convert(slimops.SparseConfig(0.75, pattern="block", block_size=64)),
        "Sparse24Linear": _convert(slimops.SparseConfig(0.5, pattern="2:4")),
    }


def measure(names, shapes, ms, device, dtype, warmup, repeats, on_row) -> list[dict]:
    dev = torch.device(device)
    rows = []
    for k, n in shapes:
        torch.manual_seed(0)
        linear = nn.Linear(k, n, bias=True, device=dev, dtype=dtype)
        for name in names:
            for m in ms:
                x = torch.randn(m, k, device=dev, dtype=dtype)
                row = {"module": name, "in_features": k, "out_features": n, "m": m, "dtype": str(dtype)}
                try:
                    layer = modules()[name](linear, x)
                    with torch.inference_mode():
                        base_s, mod_s = _measure.median_seconds(
                            [lambda: linear(x), lambda: layer(x)], [dev, dev], warmup=warmup, repeats=repeats,
                            cuda_events=dev.type == "cuda")
                    row.update(layer=type(layer).__name__, baseline_us=base_s * 1e6, slimops_us=mod_s * 1e6,
                               ratio=base_s / mod_s)
                except Exception as e:  # noqa: BLE001: a row that cannot run is reported, not fatal
                    row.update(error=_measure.describe_error(e))
                rows.append(row)
                on_row(rows)
    return rows


def table(rows: list[dict], min_ratio: float) -> str:
    lines = [f"{'module':<27} {'shape':>12} {'M':>5} {'bf16 us':>9} {'slimops us':>10} {'ratio':>6}"]
    for r in rows:
        shape = f"{r['in_features']}->{r['out_features']}"
        if "error" in r:
            lines.append(f"{r['module']:<27} {shape:>12} {r['m']:>5}  ERROR {r['error'][:60]}")
            continue
        flag = "  BELOW" if r["ratio"] < min_ratio else ""
        lines.append(f"{r['module']:<27} {shape:>12} {r['m']:>5} {r['baseline_us']:>9.1f} {r['slimops_us']:>10.1f} "
                     f"{r['ratio']:>5.2f}x{flag}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modules", nargs="*", default=None, help="default: all of them")
    p.add_argument("--shapes", nargs="*", default=None, help="IN:OUT pairs; default: the Llama-7B shapes")
    p.add_argument("--m", nargs="*", type=int, default=MS)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--min-ratio", type=float, default=0.95)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    names = a.modules or list(modules())
    unknown = sorted(set(names) - set(modules()))
    if unknown:
        p.error(f"unknown modules {unknown}; choose from {list(modules())}")
    shapes = [tuple(int(v) for v in s.split(":")) for s in a.shapes] if a.shapes else LLAMA_SHAPES
    # The layer a user replaces: bf16 on a GPU; fp32 on a CPU (bf16 GEMMs there are not the baseline).
    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    meta = {
        "what": "slimops layer vs the nn.Linear it replaces, interleaved medians (bench/never_slower.py)",
        "device": a.device,
        "device_name": torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor(),
        "versions": {"torch": torch.__version__, "slimops": slimops.__version__, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "min_ratio": a.min_ratio,
    }

    def save(rows):
        if a.json:
            _measure.write_json({**meta, "rows": rows}, a.json, indent=1)

    rows = measure(names, shapes, a.m, a.device, dtype, a.warmup, a.repeats, save)
    print(table(rows, a.min_ratio))
    below = [r for r in rows if "error" in r or r["ratio"] < a.min_ratio]
    print(f"\n{len(rows) - len(below)} of {len(rows)} rows at or above {a.min_ratio}x")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
