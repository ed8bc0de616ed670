"""Every op of torch.ops.slimops, from the op test table (tests/ops/op_db.py):

- correctness of each sample on each implementation, against the reference, outputs poisoned;
- torch.library.opcheck on each implementation (the C++ kernels; Triton under the interpreter here);
- one torch.compile(fullgraph=True) test per op, and its backward where the wrapper has a gradient;
- the gradients of the differentiable wrappers, against float64 autograd of the reference;
- CUDA-graph capture and replay (``-m gpu``).
"""

from __future__ import annotations

import functools

import pytest
import torch

import slimops
from tests.backends import IMPL_MARKS, OPS, assert_within, get_impl
from tests.ops.op_db import OP_DB, OP_DB_BY_NAME, OpInfo, Sample, Tol

F32 = torch.float32
_DT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def test_every_op_has_an_entry():
    """A new op in csrc/ops.cpp fails here until it has a row in the test table (and vice versa)."""
    table = [op["name"] for op in slimops._C.ops]
    assert len(table) == len(set(table))
    assert sorted(OP_DB_BY_NAME) == sorted(table), "ops without a test entry, or entries without an op"
    assert len(OP_DB) == len(OP_DB_BY_NAME)
    for info in OP_DB:
        assert hasattr(torch.ops.slimops, info.name) and info.wrapper is getattr(slimops.ops, info.name)
        assert set(info.composes) <= set(OPS), info.name


# ---------------------------------------------------------------- helpers


def _device(impl: str) -> str:
    return "cuda" if impl in ("cuda", "triton") else "cpu"


def _map(fn, obj):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(fn, o) for o in obj)
    return obj


def _cpu_clone(obj):
    return _map(lambda t: t.detach().cpu().clone(), obj)


def _clone(obj):
    return _map(lambda t: t.detach().clone(), obj)


def _flat(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if not isinstance(obj, (list, tuple)):
        return []
    out = []
    for o in obj:
        out.extend(_flat(o))
    return out


def _compared(info: OpInfo, args, out) -> list[torch.Tensor]:
    """The tensors a call is judged by: the mutated args, then the selected outputs."""
    got = [t for i in info.mutates for t in _flat(args[i])]
    outs = _flat(out)
    return got + [outs[j] for j in (range(len(outs)) if info.outputs is None else info.outputs)]


def _skip_dtype(info: OpInfo, impl: str, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not get_impl(impl).bf16:
        pytest.skip("bf16 is wrong under the Triton interpreter; tested on GPU")
    if _device(impl) == "cuda" and info.gpu_dtypes is not None and dtype not in info.gpu_dtypes:
        pytest.skip(f"the CUDA kernel of {info.name} takes {info.gpu_dtypes}")


@functools.lru_cache(maxsize=None)
def _count(name: str) -> int:
    return sum(1 for _ in OP_DB_BY_NAME[name].sample_inputs("cpu", F32, seed=0))


def _samples(info: OpInfo, device: str, dtype: torch.dtype, seed: int = 0) -> list[Sample]:
    samples = list(info.sample_inputs(device, dtype, seed=seed))
    assert len(samples) == _count(info.name), "the samples' number must not depend on device or dtype"
    return samples


def _first_dtype(info: OpInfo, impl: str) -> torch.dtype:
    ok = info.dtypes if _device(impl) == "cpu" or info.gpu_dtypes is None else info.gpu_dtypes
    return F32 if F32 in ok else ok[0]


def _check(info: OpInfo, sample: Sample, snapshot, args, out) -> None:
    """The call's compared tensors against the reference's (dtype, shape) and the exact values (bound)."""
    ref_args = _cpu_clone(snapshot)
    want = _compared(info, ref_args, info.reference(*ref_args))
    got = _compared(info, args, out)
    if info.exact is None:
        exact = [w.double() if w.is_floating_point() and w.dtype != torch.float8_e4m3fn else w for w in want]
    else:
        exact = _flat(info.exact(*_cpu_clone(snapshot)))
    slack = _flat(info.slack(*_cpu_clone(snapshot))) if info.slack is not None else []
    # slack covers the outputs, which come after the mutated args
    slack = [None] * (len(got) - len(slack)) + slack
    assert len(got) == len(want) == len(exact), f"{info.name} [{sample.desc}]: {len(got)} outputs"
    for i, (g, w, e, s) in enumerate(zip(got, want, exact, slack)):
        what = f"{info.name} [{sample.desc}] output {i}"
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what}: {g.dtype} {tuple(g.shape)}, want {w.dtype} {tuple(w.shape)}"
        g = g.cpu()
        if g.dtype == torch.float8_e4m3fn:
            diff = (g.view(torch.uint8) != w.view(torch.uint8)).sum().item()
            assert diff == 0, f"{what}: {diff} fp8 values differ from the reference"
        elif not g.is_floating_point():
            assert torch.equal(g, w), f"{what}: {(g != w).sum().item()} values differ from the reference"
        else:
            tol = info.tol[g.dtype]
            bound = tol.rtol * e.double().abs() + tol.atol + (0 if s is None else s)
            assert_within(g, e.double(), bound, what)


def _correctness_cases():
    for info in OP_DB:
        for impl in info.impls():
            for dtype in info.dtypes:
                for i in range(_count(info.name)):
                    yield pytest.param(info.name, impl, dtype, i, id=f"{info.name}-{impl}-{_DT[dtype]}-s{i}",
                                       marks=IMPL_MARKS[impl])


def _impl_cases(pred=lambda info: True, impls=None):
    for info in OP_DB:
        if not pred(info):
            continue
        for impl in info.impls():
            if impls is None or impl in impls:
                yield pytest.param(info.name, impl, id=f"{info.name}-{impl}", marks=IMPL_MARKS[impl])


@functools.lru_cache(maxsize=64)
def _cached_samples(name: str, device: str, dtype: torch.dtype) -> tuple[Sample, ...]:
    return tuple(_samples(OP_DB_BY_NAME[name], device, dtype))


# ---------------------------------------------------------------- correctness


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize("name,impl,dtype,index", list(_correctness_cases()))
def test_matches_reference(name, impl, dtype, index):
    info = OP_DB_BY_NAME[name]
    _skip_dtype(info, impl, dtype)
    device = _device(impl)
    # Ops that write their inputs get fresh samples; the others share them (read-only).
    samples = _samples(info, device, dtype) if info.mutates else _cached_samples(name, device, dtype)
    sample = samples[index]
    snapshot = _cpu_clone(sample.args)
    with slimops.use_backend(get_impl(impl).backend):
        out = info.wrapper(*sample.args)
    for t in _flat(out):
        assert t.device.type == device, f"{name} [{sample.desc}]: output on {t.device}"
    _check(info, sample, snapshot, sample.args, out)
    if not info.mutates:  # and it left its inputs alone
        for a, b in zip(_flat(sample.args), _flat(snapshot)):
            assert torch.equal(a.cpu(), b), f"{name} [{sample.desc}] wrote an input"


# ---------------------------------------------------------------- opcheck


@pytest.mark.parametrize("name,impl", list(_impl_cases()))
def test_opcheck(name, impl):
    """The C++ checks, the kernel (or the Triton launcher) and the fake agree, on the first and the
    last sample (the last one strided where the op has strided samples)."""
    info = OP_DB_BY_NAME[name]
    samples = _samples(info, _device(impl), _first_dtype(info, impl))
    with slimops.use_backend(get_impl(impl).backend):
        for sample in (samples[0], samples[-1]):
            kwargs = {} if info.opcheck_utils is None else {"test_utils": info.opcheck_utils}
            torch.library.opcheck(info.op, sample.args, **kwargs)


def _assert_same(g: torch.Tensor, w: torch.Tensor, tol, msg: str) -> None:
    if g.dtype == torch.float8_e4m3fn:  # no arithmetic on fp8: compare the bits
        assert g.dtype == w.dtype and torch.equal(g.view(torch.uint8), w.view(torch.uint8)), msg
    else:
        torch.testing.assert_close(g, w, rtol=tol.rtol, atol=tol.atol, equal_nan=True, msg=msg)


# ---------------------------------------------------------------- torch.compile


def _compile_samples(info: OpInfo, device: str) -> list[Sample]:
    # three shapes: recompiles or dynamic shapes, both must work
    samples = _samples(info, device, _first_dtype(info, "cpu" if device == "cpu" else "cuda"))
    return [samples[0], samples[len(samples) // 2], samples[-1]]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", [info.name for info in OP_DB])
def test_torch_compile_fullgraph(name, device):
    info = OP_DB_BY_NAME[name]
    torch._dynamo.reset()
    compiled = torch.compile(info.wrapper, fullgraph=True)
    for sample in _compile_samples(info, device):
        args_c, args_e = _clone(sample.args), _clone(sample.args)
        got, want = _compared(info, args_c, compiled(*args_c)), _compared(info, args_e, info.wrapper(*args_e))
        for g, w in zip(got, want, strict=True):
            _assert_same(g, w, Tol(), f"{name} [{sample.desc}]")


# ---------------------------------------------------------------- gradients


def _grad_run(info: OpInfo, args, call):
    """(output, grads of args[wrt]) of ``call(*args)`` with ``g`` the fixed random upstream gradient."""
    args = list(args)
    leaves = {}
    for i in info.grad.wrt:
        if args[i] is not None:
            args[i] = leaves[i] = args[i].detach().requires_grad_()
    out = call(*args)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out.backward(g.to(out.dtype).to(out.device))
    return out, g, {i: t.grad for i, t in leaves.items()}


def _grad_samples(info: OpInfo, impl: str) -> list[Sample]:
    samples = _samples(info, _device(impl), _first_dtype(info, impl))
    return samples[:4] + samples[-2:]


def _abs(a):
    if isinstance(a, torch.Tensor) and a.dtype not in (torch.bool, torch.uint8):
        return a.abs()
    return a


def _check_grads(info: OpInfo, sample: Sample, call, backend) -> None:
    """``call``'s gradients against float64 autograd of ``grad.fn``, elementwise within
    ``rtol * (the same gradient at |args| and |g|)``: no cancellation blind spot, and an exact
    zero where the weight is pruned."""
    with slimops.use_backend(backend):
        _, g, got = _grad_run(info, sample.args, call)
    args64 = [(a.detach().cpu().double() if a.is_floating_point() else a.cpu()) if isinstance(a, torch.Tensor) else a
              for a in sample.args]
    want = _grad_run_64(info, args64, g)
    mag = _grad_run_64(info, [_abs(a) for a in args64], g.abs(), info.grad.magnitude)
    assert set(got) == set(want) and got, f"{info.name} [{sample.desc}]: gradients for {set(got)}"
    for i in got:
        what = f"{info.name} [{sample.desc}] d/d args[{i}]"
        assert got[i].dtype == sample.args[i].dtype and got[i].shape == sample.args[i].shape, what
        assert_within(got[i], want[i], info.grad.rtol * mag[i] + 1e-30, what)


def _grad_run_64(info: OpInfo, args64, g, fn=None):
    args64 = list(args64)
    leaves = {}
    for i in info.grad.wrt:
        if args64[i] is not None:
            args64[i] = leaves[i] = args64[i].clone().requires_grad_()
    (fn or info.grad.fn)(*args64).backward(g)
    return {i: t.grad for i, t in leaves.items()}


@pytest.mark.parametrize("name,impl", list(_impl_cases(lambda info: info.grad is not None)))
def test_gradient(name, impl):
    info = OP_DB_BY_NAME[name]
    for sample in _grad_samples(info, impl):
        _check_grads(info, sample, info.wrapper, get_impl(impl).backend)


@pytest.mark.parametrize("name", [info.name for info in OP_DB if info.grad is not None])
def test_torch_compile_fullgraph_backward(name):
    """Forward and backward through torch.compile: the same gradients, held to the same bound."""
    info = OP_DB_BY_NAME[name]
    torch._dynamo.reset()
    compiled = torch.compile(info.wrapper, fullgraph=True)
    for sample in _compile_samples(info, "cpu"):
        _check_grads(info, sample, compiled, None)


# ---------------------------------------------------------------- CUDA graphs


def _copy_into(dst, src):
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, (list, tuple)):
        for d, s in zip(dst, src):
            _copy_into(d, s)


@pytest.mark.gpu
@pytest.mark.parametrize("name,impl", list(_impl_cases(lambda info: info.cuda_graph, impls=("cuda", "triton"))))
def test_cuda_graph_capture_and_replay(name, impl):
    """Captured once, replayed on new values in the same tensors: eager's result."""
    info = OP_DB_BY_NAME[name]
    dtype = torch.bfloat16 if torch.bfloat16 in (info.gpu_dtypes or info.dtypes) else _first_dtype(info, impl)
    fresh = _samples(info, "cuda", dtype, seed=1)
    backend = get_impl(impl).backend
    for index in (0, len(fresh) // 2):
        args = _samples(info, "cuda", dtype)[index].args
        with slimops.use_backend(backend):
            info.wrapper(*_clone(args))  # warm up: Triton compiles outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = info.wrapper(*args)
        _copy_into(args, fresh[index].args)
        before = _clone(args)
        graph.replay()
        torch.cuda.synchronize()
        with slimops.use_backend(backend):
            want_out = info.wrapper(*before)
        for g, w in zip(_compared(info, args, out), _compared(info, before, want_out), strict=True):
            _assert_same(g, w, info.tol[g.dtype], f"{name} [{fresh[index].desc}]")
