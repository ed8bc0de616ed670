"""Host launch cost against GPU time for the decode-sized quantized linears.

For each op, two timings of the same call on the same tensors:

* ``eager_us``: a loop of calls, synchronized once at the end. The GPU runs
  while the host queues the next call, so this is max(host cost, GPU time).
* ``graph_us``: the same calls captured once in a CUDA graph and replayed:
  GPU time alone, no Python or dispatcher per call.

Their ratio says whether a path is host bound (and a CUDA graph or a C++
launch would fix it) or slow on the GPU. Rows: the decode ops, then one decode
layer per weight format (``slimops.bench.suites.decode.make_layer``, the layers
the decode suite times) and the bf16 ``nn.Linear`` they replace. Usage (on a
GPU machine)::

    python bench/launch_overhead.py --json out.json

``--device cpu`` runs the layer rows eagerly (no CUDA graph) on tiny shapes:
the plumbing test (tests/tools/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import slimops
from slimops import info
from slimops.bench.suites import decode


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


def _eager_us(fn, calls: int = 400, sync=torch.cuda.synchronize) -> float:
    for _ in range(10):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
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


def _layer_cases(device: torch.device, k: int, n: int, ms):
    """One decode layer per weight format (and the bf16 nn.Linear), as the decode suite makes them."""
    linear = nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16).requires_grad_(False)
    layers = {"bf16 nn.Linear": linear}
    for fmt in decode.FORMATS:
        if fmt == decode.MASKED:  # a training layer: its forward alone is not a decode step
            continue
        try:
            layers[fmt] = decode.make_layer(fmt, linear)
        except Exception as e:  # noqa: BLE001: a format that cannot be made is reported
            print(f"{fmt}: not made: {type(e).__name__}: {e}")
    for m in ms:
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        for fmt, layer in layers.items():
            yield f"{fmt} {k}->{n} M={m}", None, torch.no_grad()(lambda layer=layer, x=x: layer(x))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: the layer rows only, eager only (plumbing)")
    p.add_argument("--layer-shape", default="4096:11008", help="IN:OUT of the layer rows")
    p.add_argument("--m", nargs="+", type=int, default=[1, 16], help="tokens of the layer rows")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    k, n = (int(v) for v in args.layer_shape.split(":"))
    on_gpu = dev.type == "cuda"
    cases = list(_cases()) if on_gpu else []
    cases += list(_layer_cases(dev, k, n, args.m))
    rows = []
    for name, backend, fn in cases:
        with slimops.use_backend(backend):
            try:
                eager = _eager_us(fn) if on_gpu else _eager_us(fn, 20, sync=lambda: None)
                graph = _graph_us(fn) if on_gpu else None
            except Exception as e:  # noqa: BLE001: a call that fails (or cannot be captured) is a row
                print(f"{name:28} {backend or 'auto':7} FAILED: {type(e).__name__}: {str(e).strip()[:200]}")
                rows.append({"op": name, "backend": backend or "auto", "error": f"{type(e).__name__}: {e}"[:500]})
                continue
        row = {"op": name, "backend": backend or "auto", "eager_us": eager, "graph_us": graph,
               "host_bound": None if graph is None else eager > 1.3 * graph}
        rows.append(row)
        print(f"{name:28} {row['backend']:7} eager {eager:8.1f} us   graph "
              + ("-" if graph is None else f"{graph:8.1f} us"))
    if args.json:
        meta = {"device_name": info.device_name(dev), "versions": info.versions(),
                "date": time.strftime("%Y-%m-%d")}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
