"""What the GPU backend choice costs per call, measured on the host.

On a GPU, ``torch.ops.slimops.<op>`` reaches a Python CUDA-key kernel that
calls ``slimops.backend.choose`` and then the CUDA C++ or Triton launcher. This
script isolates that extra path on any machine (no GPU needed):

* ``choose``: the selection function alone (ContextVar read + rule lookup);
* ``python kernel``: the dispatcher entering a Python kernel that runs
  ``choose`` and then the C++ kernel, minus calling the C++ kernel directly.

The second figure is what a CUDA call pays on top of its launch. Usage::

    python bench/dispatch_overhead.py [--json bench/results/dispatch-overhead-<host>.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import timeit

import torch

import slimops
from slimops import backend


def per_call_us(fn, number=20000, repeat=7) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    x = torch.randn(1, 8)
    direct = torch.ops.slimops.quantize_per_token.default

    # A private op whose CPU kernel is Python, shaped like the real CUDA-key kernel.
    lib = torch.library.Library("slimops_overhead", "DEF")
    lib.define("quantize_per_token(Tensor x) -> (Tensor, Tensor)")

    def py_kernel(t):
        backend.choose("quantize_per_token", t.numel())
        return direct(t)

    lib.impl("quantize_per_token", py_kernel, "CPU")
    via_python = torch.ops.slimops_overhead.quantize_per_token.default

    # choose() must see both backends to take the rule path, as on a GPU machine.
    slimops._build.HAS_CUDA_KERNELS = slimops._build.HAS_TRITON = True
    t_choose = per_call_us(lambda: backend.choose("quantize_per_token", 8))
    t_direct = per_call_us(lambda: direct(x))
    t_python = per_call_us(lambda: via_python(x))
    row = {
        "what": "slimops GPU backend choice, host overhead per call",
        "choose_us": round(t_choose, 3),
        "cpp_op_us": round(t_direct, 3),
        "python_kernel_op_us": round(t_python, 3),
        "added_us": round(t_python - t_direct, 3),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(row, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
