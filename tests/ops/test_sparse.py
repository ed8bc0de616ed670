"""Masked and block-sparse linears: every implementation against the float64 reference, plus the op contract."""

from __future__ import annotations

import pytest
import torch

import slimops
from slimops.reference import sparse as ref
from tests.backends import (
    EPS,
    IMPLS,
    TRITON_ONLY,
    _interp,
    assert_within,
    gen,
    get_impl,
    random_rows,
    skip_missing,
    skip_unsupported,
)

pytestmark = pytest.mark.usefixtures("poison_empty")


@pytest.fixture(params=IMPLS)
def impl(request):
    return get_impl(request.param)


def _mask(n, k, density, seed):
    return torch.rand(n, k, generator=gen(seed)) < density


def _bound(a_abs_mm, exact, dtype, k):
    """fp32 accumulation of k products of inputs of ``dtype``, then one rounding to ``dtype``."""
    return (k + 2) * EPS[torch.float32] * a_abs_mm * 1.01 + EPS[dtype] * exact.abs() * 1.01 + 2.0**-24


# ---------------------------------------------------------------- masked_linear

MASKED_CASES = [((m, 37), 17, 0.5) for m in range(1, 18)] + [((2, 3, 64), 5, 0.1), ((123, 16), 33, 0.9), ((4, 5), 1, 0.5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("xshape,n,density", MASKED_CASES)
def test_masked_linear_forward_and_grads(impl, xshape, n, density, dtype):
    skip_missing(impl, "masked_linear")
    skip_unsupported(impl, dtype)
    k = xshape[-1]
    x = random_rows(xshape, dtype, "cpu", seed=n + k) * 2**-6
    w = torch.randn(n, k, generator=gen(n)).to(dtype)
    mask = _mask(n, k, density, seed=k)
    bias = torch.randn(n, generator=gen(3)).to(dtype)
    grad = random_rows((*xshape[:-1], n), dtype, "cpu", seed=7) * 2**-6
    d = lambda t: t.to(impl.device)  # noqa: E731
    y = impl.masked_linear(d(x), d(w), d(mask), d(bias))
    gx = impl.masked_linear_grad_input(d(grad), d(w), d(mask))
    gw = impl.masked_linear_grad_weight(d(grad), d(x), d(mask))
    assert y.shape == (*xshape[:-1], n) and y.dtype == dtype
    assert gx.shape == x.shape and gx.dtype == dtype and gw.shape == (n, k) and gw.dtype == dtype
    wm = (w.double() * mask).abs()
    exact = ref.masked_linear(x.double(), w.double(), mask, bias.double())
    assert_within(y, exact, _bound(x.double().abs() @ wm.t(), exact, dtype, k) + EPS[dtype] * bias.double().abs(),
                  "masked_linear")
    exact_gx = ref.masked_linear_grad_input(grad.double(), w.double(), mask)
    assert_within(gx, exact_gx, _bound(grad.double().abs() @ wm, exact_gx, dtype, n), "grad_input")
    exact_gw = ref.masked_linear_grad_weight(grad.double(), x.double(), mask)
    rows = x.numel() // k
    mag = grad.reshape(-1, n).double().abs().t() @ x.reshape(-1, k).double().abs()
    assert_within(gw, exact_gw, _bound(mag, exact_gw, dtype, rows), "grad_weight")
    assert (gw.cpu()[~mask] == 0).all(), "pruned weights must get an exact zero gradient"


@pytest.mark.parametrize("layout", ["sliced", "transposed", "stepped"])
def test_masked_linear_strided_inputs(impl, layout):
    skip_missing(impl, "masked_linear")
    x = random_rows((9, 48), torch.float32, "cpu", seed=1, layout=layout)
    w = torch.randn(20, 48, generator=gen(2)).t().contiguous().t()  # a non-contiguous weight too
    mask = _mask(20, 48, 0.3, 3)
    y = impl.masked_linear(x.to(impl.device), w.to(impl.device), mask.to(impl.device), None)
    exact = ref.masked_linear(x.double(), w.double(), mask)
    assert_within(y, exact, _bound(x.double().abs() @ (w.double() * mask).abs().t(), exact, torch.float32, 48),
                  f"masked_linear {layout}")


def test_masked_linear_autograd_matches_reference():
    x = torch.randn(6, 40, dtype=torch.float64).float().requires_grad_()
    w = torch.randn(12, 40).requires_grad_()
    b = torch.randn(12).requires_grad_()
    mask = _mask(12, 40, 0.4, 5)
    y = slimops.ops.masked_linear(x, w, mask, b)
    (y * torch.arange(12)).sum().backward()
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = x64 @ (w64 * mask).t() + b64
    (y64 * torch.arange(12)).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), w64.grad * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
])
def test_pruned_weights_stay_zero_through_optimizer_steps(make_opt):
    w = torch.randn(16, 24)
    mask = _mask(16, 24, 0.5, 9)
    w = (w * mask).requires_grad_()
    opt = make_opt([w])
    for step in range(5):
        x = torch.randn(8, 24, generator=gen(step))
        loss = slimops.ops.masked_linear(x, w, mask).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (w.detach()[~mask] == 0).all()
    assert (w.detach()[mask] != 0).any()


# ---------------------------------------------------------------- block-sparse


def _block_weight(n, k, bn, bk, density, seed, dtype=torch.float32):
    g = gen(seed)
    keep = torch.rand(n // bn, k // bk, generator=g) < density
    mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    return (torch.randn(n, k, generator=g) * mask).to(dtype), mask


@pytest.mark.parametrize("density", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("blocks", [(16, 16), (32, 16), (16, 32)])
def test_block_sparse_pack_matches_reference(density, blocks):
    bn, bk = blocks
    w, mask = _block_weight(64, 96, bn, bk, density, seed=bn + bk)
    for m in (None, mask):
        got = slimops.ops.block_sparse_pack(w, m, bn, bk)
        want = ref.block_sparse_pack(w, m, bn, bk)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and torch.equal(a, b)
        assert torch.equal(ref.block_sparse_to_dense(*got, 96), w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [*range(1, 18), 123])
def test_block_sparse_linear(impl, m, dtype):
    skip_missing(impl, "block_sparse_linear")
    skip_unsupported(impl, dtype)
    bn, bk = (16, 32) if m % 2 else (32, 16)
    w, _ = _block_weight(64, 96, bn, bk, density=0.4, seed=m, dtype=dtype)
    values, row_ptr, col_idx = ref.block_sparse_pack(w, None, bn, bk)
    x = random_rows((m, 96), dtype, "cpu", seed=m) * 2**-6
    bias = torch.randn(64, generator=gen(m)).to(dtype)
    d = lambda t: t.to(impl.device)  # noqa: E731
    y = impl.block_sparse_linear(d(x), d(values), d(row_ptr), d(col_idx), d(bias))
    assert y.shape == (m, 64) and y.dtype == dtype
    exact = ref.block_sparse_linear(x.double(), values.double(), row_ptr, col_idx, bias.double())
    bound = _bound(x.double().abs() @ w.double().abs().t(), exact, dtype, 96) + EPS[dtype] * bias.double().abs()
    assert_within(y, exact, bound, f"block_sparse_linear M={m}")


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_block_sparse_linear_empty_and_full(impl, density):
    skip_missing(impl, "block_sparse_linear")
    w, _ = _block_weight(32, 64, 16, 16, density, seed=4)
    packed = ref.block_sparse_pack(w, None, 16, 16)
    x = random_rows((2, 3, 64), torch.float32, "cpu", seed=5, layout="contiguous")
    y = impl.block_sparse_linear(x.to(impl.device), *(t.to(impl.device) for t in packed), None)
    exact = ref.block_sparse_linear(x.double(), packed[0].double(), packed[1], packed[2])
    assert y.shape == (2, 3, 32)
    assert_within(y, exact, _bound(x.double().abs() @ w.double().abs().t(), exact, torch.float32, 64), "full/empty")


# ---------------------------------------------------------------- contract

OPS = torch.ops.slimops


def _sample_args(device):
    d = lambda t: t.to(device)  # noqa: E731
    x = random_rows((5, 48), torch.float32, "cpu", seed=1) * 2**-4
    w, mask = torch.randn(32, 48, generator=gen(1)), _mask(32, 48, 0.5, 1)
    grad = torch.randn(5, 32, generator=gen(2))
    bw, _ = _block_weight(32, 48, 16, 16, 0.5, seed=3)
    packed = ref.block_sparse_pack(bw, None, 16, 16)
    return [
        (OPS.masked_linear.default, (d(x), d(w), d(mask), d(torch.randn(32)))),
        (OPS.masked_linear_grad_input.default, (d(grad), d(w), d(mask))),
        (OPS.masked_linear_grad_weight.default, (d(grad), d(x), d(mask))),
        (OPS.block_sparse_linear.default, (d(x), *(d(t) for t in packed), None)),
    ]


def test_opcheck_cpu():
    for op, args in _sample_args("cpu"):
        torch.library.opcheck(op, args)
    w, _ = _block_weight(32, 48, 16, 16, 0.5, seed=3)
    # block_sparse_pack's output size depends on the data: its fake uses a dynamic size.
    torch.library.opcheck(OPS.block_sparse_pack.default, (w, None, 16, 16),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.gpu
def test_opcheck_gpu():
    for op, args in _sample_args("cuda"):
        torch.library.opcheck(op, args)


@pytest.mark.skipif(not _interp, reason="needs triton and TRITON_INTERPRET=1")
def test_opcheck_triton_launchers_under_interpreter():
    # The real ops with Triton forced on CPU tensors: C++ checks, launcher and fake together.
    with slimops.use_backend("triton"):
        for op, args in _sample_args("cpu"):
            torch.library.opcheck(op, args)


def _train_step(x, w, mask, b):
    y = slimops.ops.masked_linear(x, w, mask, b)
    return y.relu().sum()


def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    compiled = torch.compile(_train_step, fullgraph=True)
    mask = _mask(16, 32, 0.5, 1)
    for rows in (5, 9, 3):
        x = torch.randn(rows, 32)
        w1, b1 = torch.randn(16, 32, requires_grad=True), torch.randn(16, requires_grad=True)
        w2, b2 = w1.detach().clone().requires_grad_(), b1.detach().clone().requires_grad_()
        compiled(x, w1, mask, b1).backward()
        _train_step(x, w2, mask, b2).backward()
        torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b1.grad, b2.grad, rtol=1e-6, atol=1e-6)
    w, _ = _block_weight(32, 64, 16, 16, 0.5, seed=2)
    packed = slimops.ops.block_sparse_pack(w, None, 16, 16)
    lin = torch.compile(slimops.ops.block_sparse_linear, fullgraph=True)
    x = torch.randn(7, 64)
    torch.testing.assert_close(lin(x, *packed), slimops.ops.block_sparse_linear(x, *packed), rtol=0, atol=0)


def _bad_inputs(device):
    d = lambda t: t.to(device)  # noqa: E731
    x, w, mask = d(torch.randn(4, 32)), d(torch.randn(16, 32)), d(torch.rand(16, 32) > 0.5)
    bw, _ = _block_weight(32, 32, 16, 16, 0.5, seed=3)
    v, rp, ci = (d(t) for t in ref.block_sparse_pack(bw, None, 16, 16))
    ml, bl = "masked_linear", "block_sparse_linear"
    return [
        (ml, (x, w, mask[:, :16], None), r"mask must have the weight's shape \[16, 32\]"),
        (ml, (x, w, mask.float(), None), "mask must be"),
        (ml, (x, w.half(), mask, None), "weight must have x's dtype"),
        (ml, (x[:, :16], w, mask, None), "mismatched K"),
        (ml, (x.int(), w, mask, None), "x must be float32, float16 or bfloat16"),
        (ml, (x, w, mask, d(torch.randn(3))), r"bias must have shape \[16\]"),
        (bl, (x, v, rp, ci.long(), None), "col_idx must be"),
        (bl, (x, v, rp.long(), ci, None), "row_ptr must be"),
        (bl, (x[:, :24], v, rp, ci, None), "must be a multiple of block_k"),
        (bl, (x, v.half(), rp, ci, None), "values must have x's dtype"),
        (bl, (x, v, rp, ci[:-1], None), r"col_idx must be \[nnz\]"),
    ]


def test_bad_input_gets_a_clear_error(impl):
    for name, args, pattern in _bad_inputs(impl.device):
        if impl.name == "cuda" and name in TRITON_ONLY:
            continue
        with pytest.raises((RuntimeError, ValueError), match=pattern):
            getattr(impl, name)(*args)
        with pytest.raises((RuntimeError, ValueError), match=f"slimops.{name}"):
            getattr(impl, name)(*args)


def test_bad_block_sizes_and_malformed_indices():
    w = torch.randn(48, 64)
    with pytest.raises(RuntimeError, match=r"block_n must be one of \(16, 32, 64, 128\), got 8"):
        slimops.ops.block_sparse_pack(w, None, 8, 16)
    with pytest.raises(RuntimeError, match="block 32x16 must divide the weight's shape"):
        slimops.ops.block_sparse_pack(w, None, 32, 16)
    with pytest.raises(RuntimeError, match="mask must be"):
        slimops.ops.block_sparse_pack(w, torch.ones(48, 64), 16, 16)
    v, rp, ci = slimops.ops.block_sparse_pack(w, None, 16, 16)
    x = torch.randn(2, 64)
    bad_col = ci.clone()
    bad_col[0] = 4
    with pytest.raises(RuntimeError, match=r"col_idx\[0\] = 4 is outside \[0, 4\)"):
        slimops.ops.block_sparse_linear(x, v, rp, bad_col)
    bad_rows = rp.clone()
    bad_rows[1] = 99
    with pytest.raises(RuntimeError, match="row_ptr must be non-decreasing"):
        slimops.ops.block_sparse_linear(x, v, bad_rows, ci)


def test_pruned_inf_and_nan_weights_contribute_nothing(impl):
    """The mask is a select: whatever a pruned weight holds, it adds exactly 0 (and its gradient is 0)."""
    skip_missing(impl, "masked_linear")
    w = torch.randn(8, 16, generator=gen(1))
    mask = _mask(8, 16, 0.5, 2)
    w[~mask] = float("inf")
    w[~mask & (torch.arange(16) % 2 == 0)] = float("nan")
    x, grad = torch.randn(3, 16, generator=gen(3)), torch.randn(3, 8, generator=gen(4))
    d = lambda t: t.to(impl.device)  # noqa: E731
    y = impl.masked_linear(d(x), d(w), d(mask), None).cpu()
    gx = impl.masked_linear_grad_input(d(grad), d(w), d(mask)).cpu()
    gw = impl.masked_linear_grad_weight(d(grad), d(x), d(mask)).cpu()
    assert torch.isfinite(y).all() and torch.isfinite(gx).all() and (gw[~mask] == 0).all()
    clean = torch.where(mask, w, torch.zeros_like(w))
    torch.testing.assert_close(y, x @ clean.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, grad @ clean, rtol=1e-5, atol=1e-5)
