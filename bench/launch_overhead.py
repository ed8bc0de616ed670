"""Host launch cost against GPU time for the decode-sized quantized linears.

For each op, two timings of the same call on the same tensors:

* ``eager_us``: a loop of calls, synchronized once at the end. The GPU runs
  while the host queues the next call, so this is max(host cost, GPU time).
* ``graph_us``: the same calls captured once in a CUDA graph and replayed:
  GPU time alone, no Python or dispatcher per call.

Their ratio says whether a path is host bound (and a CUDA graph or a C++
launch would fix it) or slow on the GPU. Usage (on a GPU machine)::

    python bench/launch_overhead.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import slimops
from slimops import info


def _graph_us(fn, reps: int = 20, replays: int = 20) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * replays)


def _eager_us(fn, calls: int = 400) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e6 / calls


def _cases():
    k, n = 4096, 11008
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    w_scale = torch.rand(n, 1, device="cuda") * 1e-3
    for m in (1, 16):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        q, s = slimops.ops.quantize_per_token(x)
        yield f"quantize_per_token M={m}", None, lambda x=x: slimops.ops.quantize_per_token(x)
        yield f"int8_mm M={m}", None, lambda q=q, s=s: slimops.ops.int8_mm(q, w, s, w_scale, None, torch.bfloat16)
        yield f"int8_dynamic_linear M={m}", None, lambda x=x: slimops.ops.int8_dynamic_linear(x, w, w_scale)
        for backend in slimops.backend.built_gpu_backends():
            yield (f"weight_int8_linear M={m}", backend,
                   lambda x=x: slimops.ops.weight_int8_linear(x, w, w_scale.flatten()))
        wb = (w.to(torch.bfloat16) * w_scale.to(torch.bfloat16))
        yield f"bf16 F.linear M={m}", None, lambda x=x: torch.nn.functional.linear(x, wb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    rows = []
    for name, backend, fn in _cases():
        with slimops.use_backend(backend):
            eager, graph = _eager_us(fn), _graph_us(fn)
        row = {"op": name, "backend": backend or "auto", "eager_us": eager, "graph_us": graph,
               "host_bound": eager > 1.3 * graph}
        rows.append(row)
        print(f"{name:28} {row['backend']:7} eager {eager:8.1f} us   graph {graph:8.1f} us")
    if args.json:
        meta = {"device_name": info.device_name(torch.device("cuda")), "versions": info.versions(),
                "date": time.strftime("%Y-%m-%d")}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
