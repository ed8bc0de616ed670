"""Masked and block-sparse linears: what the op test table (tests/ops/op_db.py) cannot say.

Pruned weights through optimizer steps, inf/NaN in pruned weights, bad block sizes, malformed
indices and bad input. The ops against the reference, their gradients, opcheck and torch.compile
run from the table.
"""

from __future__ import annotations

import pytest
import torch

import slimops
from slimops.reference import sparse as ref
from tests.backends import IMPLS, TRITON_ONLY, gen, get_impl, skip_missing
from tests.ops.op_db import OP_DB_BY_NAME

pytestmark = pytest.mark.usefixtures("poison_empty")


@pytest.fixture(params=IMPLS)
def impl(request):
    return get_impl(request.param)


def _mask(n, k, density, seed):
    return torch.rand(n, k, generator=gen(seed)) < density


# ---------------------------------------------------------------- masked_linear


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


def test_block_sparse_pack_round_trips():
    """The table holds block_sparse_pack to the reference; this holds the packed form to the weight
    (slimops.ops.block_sparse_to_dense), on the table's samples."""
    for sample in OP_DB_BY_NAME["block_sparse_pack"].sample_inputs("cpu", torch.float32, seed=0):
        w, mask, bn, bk = sample.args
        packed = slimops.ops.block_sparse_pack(w, mask, bn, bk)
        want = w if mask is None else w * mask
        assert torch.equal(slimops.ops.block_sparse_to_dense(*packed, w.shape[1]), want), sample.desc
        assert torch.equal(ref.block_sparse_to_dense(*packed, w.shape[1]), want), sample.desc


def _block_weight(n, k, bn, bk, density, seed, dtype=torch.float32):
    g = gen(seed)
    keep = torch.rand(n // bn, k // bk, generator=g) < density
    mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    return (torch.randn(n, k, generator=g) * mask).to(dtype), mask


# ---------------------------------------------------------------- contract

OPS = torch.ops.slimops


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
