"""Checks the machine code of the decode GEMV kernels (csrc/cuda/decode_gemv.cuh) without a GPU.

For every instantiation, in every architecture the object holds (sm_80, sm_90a from
`make cuda-check`), from `cuobjdump -res-usage` and `cuobjdump -sass`:

* no stack frame and no local memory (a register spill or a run-time-indexed register array
  shows up as STACK / LOCAL > 0 and as LDL / STL in the SASS);
* the weight is read with 128-bit no-allocate loads (`LDG.E.NA...128`, from
  `ld.global.nc.L1::no_allocate`).

Exits 1 naming each kernel that fails, so `make cuda-check` (which runs this) fails in CI.
With --json, writes one row per kernel (format, dtype, template shape, registers, loads).

    python bench/sass_check.py build/cuda-check [--json bench/results/decode-ptxas-sm90a-DATE.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

KERNEL = "decode_gemv_kernel"
FORMATS = ("int8_channel", "int8_group", "int4_asym", "int4_sym", "codebook4", "fp8_channel")  # decode_gemv_plan.h
XTYPES = ("fp16", "bf16")


def find_cuobjdump() -> str:
    """cuobjdump from PATH, the CUDA toolkit beside nvcc, or the copy triton ships."""
    for cand in (shutil.which("cuobjdump"),):
        if cand:
            return cand
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = pathlib.Path(os.path.realpath(nvcc)).parent / "cuobjdump"
        if real.exists():
            return str(real)
    try:
        import triton

        cand = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    raise SystemExit("sass_check: cuobjdump not found (PATH, next to nvcc, or triton's backends/nvidia/bin)")


def describe(mangled: str) -> dict:
    """The template arguments of a decode_gemv_kernel<F, XT, ROWS, WARPS, UNROLL, MT> symbol."""
    args = [int(a) for a in re.findall(r"Li(\d+)E", mangled.split(KERNEL, 1)[1])]
    f, xt, rows, warps, unroll, tokens = args[:6]
    return {"format": FORMATS[f], "x": XTYPES[xt], "rows": rows, "warps": warps, "unroll": unroll, "tokens": tokens}


def parse_res_usage(text: str) -> dict[tuple[str, str], dict]:
    """{(arch, function): {"REG": .., "STACK": .., "LOCAL": .., ...}} from `cuobjdump -res-usage`."""
    out, arch, fn = {}, None, None
    for line in text.splitlines():
        if m := re.match(r"\s*arch = (\S+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):", line):
            fn = m.group(1)
        elif fn and "REG:" in line:
            out[(arch, fn)] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            fn = None
    return out


def parse_sass(text: str) -> dict[tuple[str, str], list[str]]:
    """{(arch, function): [instruction lines]} from `cuobjdump -sass`."""
    out, arch, fn = {}, None, None
    for line in text.splitlines():
        if m := re.match(r"\s*arch = (\S+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            fn = m.group(1)
            out[(arch, fn)] = []
        elif fn and re.match(r"\s*/\*[0-9a-f]{4}\*/", line):
            out[(arch, fn)].append(line)
    return out


def check(objects: list[pathlib.Path]) -> tuple[list[dict], list[str]]:
    tool = find_cuobjdump()
    rows, problems = [], []
    for obj in objects:
        res = parse_res_usage(subprocess.run([tool, "-res-usage", str(obj)], check=True, capture_output=True,
                                             text=True).stdout)
        sass = parse_sass(subprocess.run([tool, "-sass", str(obj)], check=True, capture_output=True,
                                         text=True).stdout)
        for (arch, fn), usage in sorted(res.items()):
            if KERNEL not in fn:
                continue
            code = sass.get((arch, fn), [])
            local = sum(bool(re.search(r"\b(LDL|STL)\b", ln)) for ln in code)
            ldg128_na = sum(bool(re.search(r"\bLDG\.E\.[\w.]*NA[\w.]*\.128\b", ln)) for ln in code)
            row = {"arch": arch, **describe(fn), "registers": usage.get("REG"), "stack_bytes": usage.get("STACK"),
                   "local_bytes": usage.get("LOCAL"), "ldl_stl": local, "ldg128_no_allocate": ldg128_na,
                   "function": fn}
            rows.append(row)
            name = f"{arch} {row['format']} {row['x']} rows={row['rows']} warps={row['warps']} " \
                   f"unroll={row['unroll']} tokens={row['tokens']}"
            if usage.get("STACK", 0) or usage.get("LOCAL", 0) or local:
                problems.append(f"{name}: stack {usage.get('STACK')} B, local {usage.get('LOCAL')} B, "
                                f"{local} LDL/STL (a spill or a run-time-indexed register array)")
            if not ldg128_na:
                problems.append(f"{name}: no 128-bit no-allocate weight load (LDG.E.NA...128) in the SASS")
    return rows, problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=pathlib.Path, nargs="?", default=pathlib.Path("build/cuda-check"),
                    help="an object file, or a build folder searched for decode_gemv*.cu.o (one per format)")
    ap.add_argument("--json", type=pathlib.Path, help="write the per-kernel summary here")
    args = ap.parse_args(argv)
    objects = [args.path] if args.path.is_file() else sorted(args.path.rglob("decode_gemv*.cu.o"))
    if not objects:
        print(f"sass_check: no decode_gemv*.cu.o under {args.path} (run make cuda-check)", file=sys.stderr)
        return 1
    rows, problems = check(objects)
    if not rows:
        problems.append(f"no {KERNEL} instantiation found in {', '.join(map(str, objects))}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        regs = [r["registers"] for r in rows]
        args.json.write_text(json.dumps({
            "date": datetime.date.today().isoformat(), "tool": "cuobjdump -res-usage / -sass",
            "objects": [str(o) for o in objects], "kernels": len(rows),
            "archs": sorted({r["arch"] for r in rows}), "max_registers": max(regs, default=None),
            "spilling_or_local": sum(1 for r in rows if r["stack_bytes"] or r["local_bytes"] or r["ldl_stl"]),
            "problems": problems, "rows": rows}, indent=1) + "\n")
    for p in problems:
        print(f"sass_check: {p}", file=sys.stderr)
    print(f"sass_check: {len(rows)} decode kernels checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
