"""Sweep of the decode GEMV kernel family (csrc/cuda/decode_gemv.cuh) on a GPU: every weight
format x variant x M x shape in one process, to choose the rules that route to it.

For each (shape, M, format) group the providers take turns (A B C ... A B C ...), each timed
with CUDA events after 256 MB is written (cold L2, slimops._measure.median_seconds), medians
over --repeats: every variant of the family (slimops._C._decode_gemv), bf16 (or fp16)
``torch.nn.functional.linear`` on the dense weight, and a device copy of the format's weight
bytes (the copy bandwidth the kernels are measured against, same run). Each variant's first
call is checked against the float64 reference (slimops.reference.decode_gemv); a wrong variant
is recorded as such and never chosen.

JSON (--json): one row per measurement and ``best``: per (format, M, shape) the fastest correct
variant, its time, its speed-up over the dense linear and its fraction of the copy bandwidth
(kernel bytes / time over 2 x weight bytes / copy time).

    python bench/decode_sweep.py --json $OUT/decode-sweep.json       (bench/gpu_check.sh)
    python bench/decode_sweep.py --dry-run                           (the plan and its time estimate)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import statistics
import sys
import time

import torch

SHAPES = ((4096, 11008), (11008, 4096), (4096, 4096))  # (K, N): Llama-7B up, down and square
MS = (1, 2, 4, 8, 16)
GROUP_SIZE = 128  # int8_group, int4 and codebook4 groups
# Per-timing cost on an H200 for the estimate: the 256 MB flush (~80 us) + launch and kernel.
EST_US_PER_TIMING = 130.0
EST_US_PER_CHECK = 600.0  # first call + a float32 GEMM against the reference + compare
EST_S_PER_LAYER = 1.5  # a random layer made on the CPU (randint / randn of up to 45 M weights), moved, dequantized


def parse_shape(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.lower().replace("->", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is K->N or KxN, e.g. 4096->11008; got {text!r}") from None
    if k < 16 or n < 1 or k % 16:
        raise argparse.ArgumentTypeError(f"a shape needs K >= 16, K % 16 == 0 and N >= 1; got {text!r}")
    return k, n


def parse_args(argv=None, formats=None, n_variants=None) -> argparse.Namespace:
    """The command line, checked against the family's formats and variant count (from slimops._C)."""
    if formats is None or n_variants is None:
        from slimops import _C

        formats = tuple(_C._decode_gemv_formats())
        n_variants = len(_C._decode_gemv_variants())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results here (required unless --dry-run)")
    ap.add_argument("--formats", default=",".join(formats), help=f"comma-separated, of {', '.join(formats)}")
    ap.add_argument("--variants", default="all", help=f"'all' or comma-separated ids in 0..{n_variants - 1}")
    ap.add_argument("--m", default=",".join(map(str, MS)), help="comma-separated rows M, each 1..16")
    ap.add_argument("--shapes", type=parse_shape, nargs="+", default=list(SHAPES), help="K->N shapes")
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and its time estimate, run nothing")
    args = ap.parse_args(argv)

    args.formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    bad = [f for f in args.formats if f not in formats]
    if bad or not args.formats:
        ap.error(f"--formats: unknown {bad or 'empty list'}; known: {', '.join(formats)}")
    if args.variants == "all":
        args.variants = tuple(range(n_variants))
    else:
        try:
            args.variants = tuple(int(v) for v in args.variants.split(","))
        except ValueError:
            ap.error(f"--variants: 'all' or integers, got {args.variants!r}")
        if not args.variants or any(not 0 <= v < n_variants for v in args.variants):
            ap.error(f"--variants: ids must be in 0..{n_variants - 1}, got {args.variants}")
    try:
        args.m = tuple(int(v) for v in args.m.split(","))
    except ValueError:
        ap.error(f"--m: integers, got {args.m!r}")
    if not args.m or any(not 1 <= m <= 16 for m in args.m):
        ap.error(f"--m: the decode kernels serve M = 1..16, got {args.m}")
    if args.repeats < 1 or args.warmup < 0:
        ap.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
    if not args.dry_run and not args.json:
        ap.error("--json PATH is required (or --dry-run)")
    return args


def plan(args) -> list[tuple]:
    """Every (shape, M, format) group, in run order."""
    return list(itertools.product(args.shapes, args.m, args.formats))


def estimate_seconds(args) -> float:
    """Wall-time estimate on an H200: timings (warm-up + repeats, per provider), first-call checks, layers."""
    groups = len(plan(args))
    providers = len(args.variants) + 2  # + linear, copy
    timings = groups * providers * (args.warmup + args.repeats)
    checks = groups * len(args.variants)
    layers = len(args.shapes) * len(args.formats)
    return (timings * EST_US_PER_TIMING + checks * EST_US_PER_CHECK) * 1e-6 + layers * EST_S_PER_LAYER


def weight_bytes(fmt: str, n: int, k: int) -> int:
    return n * (-(-k // 32) * 16 if fmt in ("int4_asym", "int4_sym", "codebook4") else k)


def run(args) -> dict:
    from slimops import _C, _measure
    from slimops.info import device_name, versions
    from slimops.reference.decode_gemv import dequantize, random_layer

    dev = torch.device("cuda")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    formats = tuple(_C._decode_gemv_formats())
    variants = {v["id"]: v for v in _C._decode_gemv_variants()}
    rows, gen = [], torch.Generator().manual_seed(0)
    layers: dict = {}
    start = time.perf_counter()
    for (k, n), m, fmt in plan(args):
        if (fmt, k, n) not in layers:
            layers.clear()  # one format's layer on the device at a time
            q, scale, zero, cb = random_layer(fmt, n, k, GROUP_SIZE, gen, device=dev)
            w = dequantize(fmt, q, scale, zero, cb, GROUP_SIZE, k).float()
            layers[(fmt, k, n)] = (q, scale, zero, cb, w, w.to(dtype))
        q, scale, zero, cb, w32, wdense = layers[(fmt, k, n)]
        x = torch.randn(m, k, device=dev, dtype=dtype)
        f = formats.index(fmt)
        gs = GROUP_SIZE if fmt != "int8_channel" and fmt != "fp8_channel" else k
        ref = x.float() @ w32.t()
        tol = (2.0**-7 if dtype == torch.bfloat16 else 2.0**-10) * ref.abs() + 1e-4 * (x.float().abs() @ w32.abs().t())
        wb = weight_bytes(fmt, n, k)
        src = torch.empty(wb, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        base = dict(format=fmt, m=m, k=k, n=n, dtype=args.dtype)

        fns, names = [lambda: dst.copy_(src), lambda: torch.nn.functional.linear(x, wdense)], ["copy", "linear"]
        for vid in args.variants:
            def call(vid=vid):
                return _C._decode_gemv(f, vid, x, q, scale, zero, cb, None, gs)
            try:
                out = call()
                err = (out.float() - ref).abs()
                ok = bool(torch.isfinite(out).all() and (err <= tol).all())
            except RuntimeError as e:  # e.g. a variant whose x stage exceeds shared memory
                rows.append({**base, "provider": f"v{vid}", **variants[vid], "status": "skipped",
                             "reason": str(e).splitlines()[0]})
                continue
            if not ok:
                rows.append({**base, "provider": f"v{vid}", **variants[vid], "status": "wrong",
                             "max_abs_error": float(err.max())})
                continue
            fns.append(call)
            names.append(f"v{vid}")
        secs = _measure.median_seconds(fns, [dev] * len(fns), warmup=args.warmup, repeats=args.repeats,
                                       cuda_events=True)
        t = dict(zip(names, secs))
        copy_gbps = 2 * wb / t["copy"] * 1e-9
        kernel_bytes = wb + scale.numel() * 4 + m * k * 2 + m * n * 2
        for name, s in t.items():
            row = {**base, "provider": name, "status": "ok", "median_us": s * 1e6}
            if name.startswith("v"):
                row.update(variants[int(name[1:])])
                row["gbps"] = kernel_bytes / s * 1e-9
                row["frac_of_copy_bw"] = row["gbps"] / copy_gbps
                row["speedup_vs_linear"] = t["linear"] / s
            rows.append(row)
        del src, dst
    elapsed = time.perf_counter() - start

    best = []
    key = lambda r: (r["format"], r["m"], r["k"], r["n"])  # noqa: E731
    ok_rows = sorted((r for r in rows if r["status"] == "ok" and r["provider"].startswith("v")), key=key)
    for group_key, group in itertools.groupby(ok_rows, key=key):
        b = min(group, key=lambda r: r["median_us"])
        best.append({k: b[k] for k in ("format", "m", "k", "n", "provider", "rows", "warps", "unroll", "ksplit",
                                        "median_us", "gbps", "frac_of_copy_bw", "speedup_vs_linear")})
    return {
        "what": "decode GEMV sweep (bench/decode_sweep.py): medians of CUDA-event times with a cold L2, providers "
                "interleaved per (shape, M, format) group",
        "device": device_name(dev), "cpu": None, "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv, "elapsed_s": elapsed, "estimate_s": estimate_seconds(args),
        "group_size": GROUP_SIZE, "rows": rows, "best": best,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    groups = len(plan(args))
    print(f"decode_sweep: {groups} (shape, M, format) groups x {len(args.variants)} variants "
          f"= {groups * len(args.variants)} kernel configurations; estimated {estimate_seconds(args):.0f} s on an H200")
    if args.dry_run:
        return 0
    if not torch.cuda.is_available():
        print("decode_sweep: needs a CUDA device (use --dry-run to see the plan)", file=sys.stderr)
        return 2
    from slimops import _C, _measure
    from slimops.info import cpu_name

    if not hasattr(_C, "_decode_gemv"):
        print("decode_sweep: slimops was built without CUDA kernels (slimops._C._decode_gemv is missing)",
              file=sys.stderr)
        return 2
    result = run(args)
    result["cpu"] = cpu_name()
    _measure.write_json(_measure.json_safe(result), args.json, indent=1)
    ok = sum(r["status"] == "ok" for r in result["rows"])
    wrong = sum(r["status"] == "wrong" for r in result["rows"])
    print(f"decode_sweep: {ok} timings, {wrong} wrong variants, {len(result['best'])} best rows in "
          f"{result['elapsed_s']:.0f} s -> {args.json}")
    for b in result["best"]:
        if b["m"] in (1, 16):
            print(f"  {b['format']:13s} M={b['m']:2d} {b['k']}->{b['n']}: {b['provider']} {b['median_us']:.1f} us, "
                  f"{b['frac_of_copy_bw']:.0%} of copy bandwidth, {b['speedup_vs_linear']:.2f}x linear")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
