"""Bad-input fuzzing of every ``torch.ops.slimops`` op, crash-proof.

A case takes a valid call from the op table (``tests/ops/op_db.py``), breaks one
argument in one way (a mutation below), and runs it. Cases run in a worker
process, one after another; a case that kills the worker (a segfault, an abort)
is counted as a crash and a fresh worker goes on with the next case, so one
crash never hides the rest.

Each case ends in one of:
- ``raised``: an exception whose message names the op's argument (``slimops.<op>``
  or an argument name from the schema): the wanted outcome for a bad call;
- ``unnamed``: an exception that names neither (it came from deep inside torch or a kernel);
- ``accepted``: the op returned, and the pure-PyTorch reference, run on the same
  inputs on the CPU, returned the same values: the mutation was a valid call (a
  strided view, an extra leading dim, NaN propagated the documented way);
- ``accepted-invalid``: the op returned where the reference raised: a bad call
  went through (an out-of-range index read out of bounds, a wrong shape broadcast);
- ``wrong``: the op returned values the reference disagrees with;
- ``crash`` / ``hang``: the worker died (signal or exit code) or ran past the time limit;
- ``documented``: a bad call that went through where DOCUMENTED below says why it may;
- ``harness``: this file failed to build or judge the case (a bug here, counted so it gets fixed).

All but ``raised``, ``accepted`` and ``documented`` are defects.

    python -m tests.ops.fuzz_ops --device cuda --cases 2000 --json fuzz-cuda.json
runs the GPU check of bench/gpu_check.sh; tests/ops/test_fuzz.py runs a CPU-sized
share of the same cases in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass

DEFECTS = ("unnamed", "accepted-invalid", "wrong", "crash", "hang", "harness")
SELF_TEST_CRASH = "__abort__"
MUTATIONS = ("dtype", "rank", "shape", "empty", "noncontiguous", "nonfinite", "index", "device", "scalar")


@dataclass(frozen=True)
class Case:
    op: str
    mutation: str
    seed: int


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str = ""


# ----------------------------------------------------------------- in the worker


def _tensor_slots(args) -> list[tuple[int, int | None]]:
    """(argument index, list element or None) of every tensor among ``args``."""
    import torch

    slots = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            slots.append((i, None))
        elif isinstance(a, (list, tuple)) and a and all(isinstance(t, torch.Tensor) for t in a):
            slots.extend((i, j) for j in range(len(a)))
    return slots


def _mutate_tensor(t, mutation: str, rng: random.Random, device: str):
    """``t`` broken one way, or None where the mutation does not apply to it."""
    import torch

    floating = t.is_floating_point()
    if mutation == "dtype":
        choices = [d for d in (torch.int32, torch.bool, torch.float64, torch.complex64, torch.int8, torch.float16,
                               torch.int64, torch.uint8) if d != t.dtype]
        return t.to(rng.choice(choices)) if t.numel() else None
    if mutation == "rank":
        kind = rng.choice(["unsqueeze", "flatten", "drop", "scalar"])
        if kind == "unsqueeze":
            return t.unsqueeze(0)
        if kind == "flatten" and t.dim() > 1:
            return t.reshape(-1)
        if kind == "drop" and t.dim() >= 1 and t.shape[0] > 0:
            return t[0]
        return t.reshape(-1)[:1].reshape(()) if t.numel() else None
    if mutation == "shape":
        if t.dim() == 0 or t.numel() == 0:
            return None
        d = rng.randrange(t.dim())
        if rng.random() < 0.5 and t.shape[d] > 1:
            return t.narrow(d, 0, t.shape[d] - 1)
        return torch.cat([t, t.narrow(d, 0, 1)], dim=d)
    if mutation == "empty":
        if t.dim() == 0:
            return None
        return t.narrow(rng.randrange(t.dim()), 0, 0)
    if mutation == "noncontiguous":
        if t.dim() == 0 or t.numel() == 0:
            return None
        # the same values through a last-dim stride of 2 (or column-major for 2-D)
        if t.dim() == 2 and rng.random() < 0.5:
            return t.t().contiguous().t()
        return torch.stack([t, t], dim=-1)[..., 0]
    if mutation == "nonfinite":
        if not floating or t.numel() == 0:
            return None
        out = t.contiguous().clone()
        flat = out.view(-1)
        for _ in range(rng.randint(1, 3)):
            flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf"), float("-inf")])
        return out
    if mutation == "index":
        if floating or t.dtype == torch.bool or t.numel() == 0:
            return None
        out = t.contiguous().clone()
        flat = out.view(-1)
        i = rng.randrange(flat.numel())
        info = torch.iinfo(t.dtype)
        kind = rng.choice(["big", "negative", "swap"])
        if kind == "big":
            flat[i] = info.max
        elif kind == "negative" and info.min < 0:
            flat[i] = -1 if rng.random() < 0.5 else info.min
        elif flat.numel() > 1:  # a decreasing pair (row_ptr must not decrease)
            j = (i + 1) % flat.numel()
            a, b = flat[i].item(), flat[j].item()
            if a == b:
                flat[i] = min(info.max, a + 5)
            else:
                flat[i], flat[j] = b, a
        else:
            flat[i] = info.max
        return out
    if mutation == "device":
        if device == "cpu":
            return None
        return t.cpu()
    raise ValueError(mutation)


def _mutate_scalar(a, rng: random.Random):
    import torch

    if isinstance(a, bool):
        return None
    if isinstance(a, int):
        return rng.choice([-1, 0, 10**9, -(2**40)])
    if isinstance(a, float):
        return rng.choice([float("nan"), -1.0, float("inf"), 0.0])
    if isinstance(a, torch.dtype):
        return rng.choice([torch.int8, torch.bool, torch.float64, torch.int32])
    return None


def build_call(case: Case, device: str):
    """The mutated arguments of ``case``, or None where the mutation does not apply."""
    import torch

    from tests.ops.op_db import OP_DB_BY_NAME

    info = OP_DB_BY_NAME[case.op]
    rng = random.Random(case.seed)
    dtype = rng.choice([d for d in info.dtypes if d != torch.bfloat16] or list(info.dtypes))
    samples = list(info.sample_inputs(device, dtype, seed=case.seed))
    args = list(rng.choice(samples).args)
    if case.mutation == "scalar":
        slots = [i for i, a in enumerate(args) if _mutate_scalar(a, random.Random(0)) is not None]
        if not slots:
            return None
        i = rng.choice(slots)
        args[i] = _mutate_scalar(args[i], rng)
        return args
    slots = _tensor_slots(args)
    rng.shuffle(slots)
    for i, j in slots:
        t = args[i] if j is None else args[i][j]
        bad = _mutate_tensor(t, case.mutation, rng, device)
        if bad is None:
            continue
        if j is None:
            args[i] = bad
        else:
            args[i] = list(args[i])
            args[i][j] = bad
        return args
    return None


def _names(op: str) -> list[str]:
    import torch

    schema = getattr(torch.ops.slimops, op).default._schema
    return [f"slimops.{op}"] + [a.name for a in schema.arguments]


def _to_cpu(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x


def _agree(got, want) -> bool:
    import torch

    if isinstance(got, (list, tuple)):
        return isinstance(want, (list, tuple)) and len(got) == len(want) and all(map(_agree, got, want))
    if not isinstance(got, torch.Tensor):
        return True
    if not isinstance(want, torch.Tensor) or got.shape != want.shape:
        return False
    g, w = got.detach().cpu().double(), want.detach().cpu().double()
    if g.numel() == 0:
        return True
    finite = torch.isfinite(w)
    # Where the reference is inf or NaN (a non-finite input), any non-finite value is as
    # good: inf * 0 and inf - inf give NaN in one summation order and inf in another.
    if not torch.equal(~finite, ~finite & ~torch.isfinite(g)):
        return False
    scale = w[finite].abs().max().item() if finite.any() else 1.0
    # Loose: this tells a valid call from a wrong one; op_db holds each op to its exact bound.
    close = torch.isclose(g, w, rtol=0.02, atol=0.02 * max(scale, 1e-30) + 1.0 * (not got.is_floating_point()))
    return bool((close | ~finite).all())


def _kept_only_block_sparse(x, values, row_ptr, col_idx, bias=None):
    """block_sparse_linear where only the kept tiles read x (a NaN under an absent tile stays out)."""
    import torch

    nnz, bn, bk = values.shape
    rows = row_ptr.numel() - 1
    out = x.double().new_zeros(*x.shape[:-1], rows * bn)
    block_row = torch.repeat_interleave(torch.arange(rows), (row_ptr[1:] - row_ptr[:-1]).long())
    for t in range(nnz):
        r, c = int(block_row[t]), int(col_idx[t])
        out[..., r * bn:(r + 1) * bn] += x[..., c * bk:(c + 1) * bk].double() @ values[t].double().t()
    return (out if bias is None else out + bias.double()).to(x.dtype)


def _kept_only_sparse24(x, values, meta, bias=None):
    """sparse24_linear where only the 2 stored weights of a group read x."""
    import torch

    n, half = values.shape
    shifts = torch.arange(0, 8, 2)
    idx = ((meta.long().unsqueeze(-1) >> shifts) & 3).reshape(n, half)  # [N, K/2] positions in the group
    cols = idx + 4 * (torch.arange(half) // 2)  # input index of every stored weight
    picked = x.double()[..., cols]  # [..., N, K/2]
    out = (picked * values.double()).sum(-1)
    return (out if bias is None else out + bias.double()).to(x.dtype)


# A NaN or inf input reaches a sparse layer's output through a stored weight; whether it also
# reaches it through an absent one (0 * inf = NaN) depends on the kernel: the block-sparse
# kernels and the GPU's mma.sp skip absent weights, the CPU 2:4 kernel multiplies a decoded
# dense weight (as the dense reference does). Either is accepted.
def _kept_only_sparse24_int8(x, values, meta, scale, bias=None):
    """sparse24_int8_linear where only the 2 stored weights of a group read x (its CPU kernel gathers them)."""
    return _kept_only_sparse24(x, values.double() * scale.double()[:, None], meta, bias)


KEPT_ONLY = {"block_sparse_linear": _kept_only_block_sparse, "sparse24_linear": _kept_only_sparse24,
             "sparse24_int8_linear": _kept_only_sparse24_int8}


def _kept_only_block_sparse_int8(x, values, row_ptr, col_idx, scale, bias=None):
    """block_sparse_int8_linear where only the kept tiles read x."""
    out = _kept_only_block_sparse(x.double(), values, row_ptr, col_idx) * scale.double()
    return (out if bias is None else out + bias.double()).to(x.dtype)


KEPT_ONLY["block_sparse_int8_linear"] = _kept_only_block_sparse_int8


# Outcomes that are documented behaviour, not defects: (op, mutation, device) -> why.
DOCUMENTED = {
    ("block_sparse_linear", "index", "cuda"): "on a GPU the index arrays are not read back per call (a device sync on "
    "every decode step); the kernel clamps row_ptr and skips out-of-range col_idx, so nothing is read out of bounds "
    "(csrc/sparse.cpp, kernels/block_sparse.py)",
}
DOCUMENTED[("block_sparse_int8_linear", "index", "cuda")] = DOCUMENTED[("block_sparse_linear", "index", "cuda")]


def run_case(case: Case, device: str, backend: str | None) -> Result:
    import torch

    if case.op == SELF_TEST_CRASH:  # proves a dying worker is counted (tests/ops/test_fuzz.py)
        os.abort()

    import slimops
    from tests.ops.op_db import OP_DB_BY_NAME

    args = build_call(case, device)
    if args is None:
        return Result(case, "n/a")
    reference_args = _to_cpu(args)
    op = getattr(torch.ops.slimops, case.op).default
    try:
        if backend:
            with slimops.use_backend(backend):
                got = op(*args)
        else:
            got = op(*args)
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001: every exception type is a valid way to refuse
        msg = f"{type(e).__name__}: {e}"
        if device == "cuda" and ("device-side assert" in msg or "CUDA error" in msg):
            return Result(case, "crash", "CUDA context lost: " + msg.splitlines()[0][:300])
        named = any(n in str(e) for n in _names(case.op))
        return Result(case, "raised" if named else "unnamed", msg.splitlines()[0][:300])
    try:
        want = OP_DB_BY_NAME[case.op].reference(*reference_args)
    except Exception as e:  # noqa: BLE001
        why = DOCUMENTED.get((case.op, case.mutation, device))
        if why:
            return Result(case, "documented", why)
        return Result(case, "accepted-invalid", f"the reference raised {type(e).__name__}: {str(e)[:200]}")
    if got is None or _agree(got, want):
        return Result(case, "accepted")
    if case.op in KEPT_ONLY and _agree(got, KEPT_ONLY[case.op](*reference_args)):
        return Result(case, "accepted")
    return Result(case, "wrong", "the op and the reference disagree")


def _worker(device: str, backend: str | None) -> None:
    os.environ.setdefault("TRITON_INTERPRET", "1" if device == "cpu" and backend == "triton" else "0")
    out = sys.stdout
    sys.stdout = sys.stderr  # only the protocol goes to the parent's pipe
    for line in sys.stdin:
        case = Case(**json.loads(line))
        out.write("start\n")
        out.flush()
        try:
            r = run_case(case, device, backend)
        except Exception as e:  # noqa: BLE001: a fault of this harness, not of the op
            r = Result(case, "harness", f"{type(e).__name__}: {e}"[:300])
        out.write(json.dumps({"outcome": r.outcome, "detail": r.detail}) + "\n")
        out.flush()


# ----------------------------------------------------------------- in the parent


def plan_cases(ops: list[str], n: int, seed: int = 0, mutations=MUTATIONS) -> list[Case]:
    """``n`` cases spread evenly over (op, mutation), seeds differing."""
    pairs = [(op, m) for op in ops for m in mutations]
    return [Case(op, m, seed * 1_000_003 + i) for i in range(n) for op, m in [pairs[i % len(pairs)]]]


class _Worker:
    def __init__(self, device: str, backend: str | None):
        cmd = [sys.executable, "-m", "tests.ops.fuzz_ops", "--worker", "--device", device]
        if backend:
            cmd += ["--backend", backend]
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=root)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def ask(self, case: Case, timeout: float) -> tuple[str, str]:
        self.proc.stdin.write(json.dumps(asdict(case)) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout + 120  # the first case also pays the imports
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.kill()
                return "hang", f"no answer in {timeout:.0f} s"
            if line is None:
                rc = self.proc.wait()
                return "crash", f"worker exit code {rc}" + (f" (signal {-rc})" if rc < 0 else "")
            if line == "start\n":
                deadline = time.monotonic() + timeout
                continue
            r = json.loads(line)
            return r["outcome"], r["detail"]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def fuzz(cases: list[Case], device: str, backend: str | None = None, timeout: float = 60.0) -> list[Result]:
    results, worker = [], None
    for case in cases:
        worker = worker or _Worker(device, backend)
        outcome, detail = worker.ask(case, timeout)
        results.append(Result(case, outcome, detail))
        if outcome in ("crash", "hang") or worker.proc.poll() is not None:
            worker.kill()
            worker = None
    if worker:
        worker.proc.stdin.close()
        worker.kill()
    return results


def summary(results: list[Result]) -> dict:
    ran = [r for r in results if r.outcome != "n/a"]
    return {
        "calls": len(ran),
        "outcomes": dict(Counter(r.outcome for r in ran)),
        "by_op": {op: dict(Counter(f"{r.case.mutation}:{r.outcome}" for r in ran if r.case.op == op))
                  for op in sorted({r.case.op for r in ran})},
        "defects": [{**asdict(r.case), "outcome": r.outcome, "detail": r.detail}
                    for r in ran if r.outcome in DEFECTS],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default=None, help="force a backend (cuda, triton); default: auto")
    p.add_argument("--cases", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        _worker(a.device, a.backend)
        return 0
    import platform

    from slimops.backend import OPS

    start = time.time()
    results = fuzz(plan_cases(sorted(OPS), a.cases, a.seed), a.device, a.backend)
    out = summary(results)
    out.update(device=a.device, backend=a.backend or "auto", seconds=round(time.time() - start, 1),
               host=platform.node(), date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if a.device == "cuda":
        import torch

        out["device_name"] = torch.cuda.get_device_name()
    text = json.dumps(out, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(json.dumps({k: out[k] for k in ("calls", "outcomes", "seconds")}))
    for d in out["defects"][:40]:
        print("DEFECT", d)
    return 1 if out["defects"] else 0


if __name__ == "__main__":
    sys.exit(main())
