"""What the GPU backend choice costs per call, measured on the host.

On a GPU, ``torch.ops.slimops.<op>`` reaches the op table's CUDA-key kernel
(csrc/ops.cpp) that checks the arguments, calls ``slimops::choose`` and then
either the CUDA C++ launcher (no Python at all) or, when Triton is chosen, the
Triton launcher through Python. This script measures, on any machine (no GPU needed):

* ``cpp_op_us``: a C++-registered op called from Python end to end (the
  floor every torch.ops call pays; here the CPU kernel on 8 elements);
* ``choose_us``: ``slimops::choose`` as seen through pybind, minus a trivial
  pybind call: an upper bound on what the CUDA path adds (the kernel itself
  skips the name lookup this binding does);
* ``python_entry_us``: an op whose kernel is a Python function, minus the C++
  op: roughly what the Triton path pays to enter Python, on top of Triton's
  own launcher.
* ``op_to_launcher_us``: the whole real path from Python to a Triton launcher:
  the torch.ops call, the op's C++ checks and choice, the GIL and the call of a
  Python launcher (here on CPU tensors with Triton forced, and a stand-in
  launcher that returns precomputed outputs, so Triton's own launch is left
  out). The launchers trust the checks, so nothing else runs before the launch.

Usage::

    python bench/dispatch_overhead.py [--json bench/results/dispatch-overhead-<host>-<date>.json]
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
from slimops import _build


def per_call_us(fn, number=20000, repeat=9) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    x = torch.randn(1, 8)
    direct = torch.ops.slimops.quantize_per_token.default

    # A private op whose CPU kernel is Python, as the Triton path's is.
    lib = torch.library.Library("slimops_overhead", "DEF")
    lib.define("quantize_per_token(Tensor x) -> (Tensor, Tensor)")
    lib.impl("quantize_per_token", lambda t: direct(t), "CPU")
    via_python = torch.ops.slimops_overhead.quantize_per_token.default

    # Both backends "available" so choose() walks the rule path, as on a GPU machine.
    op = "slimops_overhead_op"
    _build._C._set_triton_impls({op: lambda *a: None})
    _build._C._set_triton_min_size(op, 1 << 20)
    t_choose = per_call_us(lambda: _build._C._choose(op, 8, True)) - per_call_us(_build._C._thread_backend)
    t_direct = per_call_us(lambda: direct(x))
    t_python = per_call_us(lambda: via_python(x))

    outputs = direct(x)
    _build._C._set_triton_impls({"quantize_per_token": lambda t: outputs}, on_cpu=True)
    with slimops.use_backend("triton"):
        t_triton = per_call_us(lambda: direct(x))
    _build._C._set_triton_impls({"quantize_per_token": None}, on_cpu=False)
    slimops.ops._triton.register_triton()  # the real launchers again, where they apply
    row = {
        "what": "slimops GPU backend choice, host overhead per call",
        "cpp_op_us": round(t_direct, 3),
        "choose_us": round(max(t_choose, 0.0), 3),
        "python_entry_us": round(t_python - t_direct, 3),
        "op_to_launcher_us": round(t_triton, 3),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "slimops": slimops.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(row, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
