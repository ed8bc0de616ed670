"""Input gradients of the inference linears: layers before a converted one still train.

Each module's ``x.grad`` is checked against the float64 ``g @ W_eff``, with ``W_eff``
rebuilt from the module's buffers by the reference helpers. The dynamic linears are
straight-through: their activation rounding counts as identity in backward.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimops
from slimops.nn import BlockSparseLinear, Fp8DynamicLinear, Int8DynamicLinear, Int8WeightOnlyLinear, Sparse24Linear
from slimops.reference.quant_mm import expand_group_scale
from slimops.reference.sparse import block_sparse_to_dense

OPS = torch.ops.slimops
XSHAPES = [(1, 64), (5, 64), (17, 64), (2, 3, 64)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linear(k: int, n: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n)


def _mask_2_4(n: int, k: int, seed: int) -> torch.Tensor:
    order = torch.rand(n, k // 4, 4, generator=_gen(seed)).argsort(-1)[..., :2]
    return torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, order, True).reshape(n, k)


def _block_mask(n: int, k: int, b: int, seed: int) -> torch.Tensor:
    tiles = torch.rand(n // b, k // b, generator=_gen(seed)) < 0.5
    tiles[0, 0] = True  # at least one tile kept
    tiles[-1] = False  # and one empty block row
    return tiles.repeat_interleave(b, 0).repeat_interleave(b, 1)


def _int8_weight_only(group_size):
    def build(lin):
        layer = Int8WeightOnlyLinear.from_float(lin, group_size=group_size)
        k = layer.qweight.shape[1]
        return layer, layer.qweight.double() * expand_group_scale(layer.weight_scale, k).double()

    return build


def _scaled(cls):
    def build(lin):
        layer = cls.from_float(lin)
        return layer, layer.qweight.double() * layer.weight_scale.double().reshape(-1, 1)

    return build


def _sparse24(lin):
    mask = _mask_2_4(*lin.weight.shape, seed=3)
    layer = Sparse24Linear.from_dense(lin, mask)
    # The compression is lossless: W_eff is the pruned dense weight itself.
    return layer, (lin.weight.detach() * mask).double()


def _block_sparse(lin):
    mask = _block_mask(*lin.weight.shape, 16, seed=4)
    layer = BlockSparseLinear.from_dense(lin, mask, 16)
    w_eff = block_sparse_to_dense(layer.values, layer.row_ptr, layer.col_idx, layer.in_features)
    assert torch.equal(w_eff, lin.weight.detach() * mask)
    return layer, w_eff.double()


BUILDERS = {
    "int8_weight_only": _int8_weight_only(None),
    "int8_weight_only_g32": _int8_weight_only(32),
    "int8_dynamic": _scaled(Int8DynamicLinear),
    "fp8_dynamic": _scaled(Fp8DynamicLinear),
    "sparse24": _sparse24,
    "block_sparse": _block_sparse,
}


def _assert_grad(got: torch.Tensor, g: torch.Tensor, w: torch.Tensor, what: str, rel: float = 1e-5) -> None:
    """``got`` within ``rel`` of ``g @ w`` relative to ``|g| @ |w|``, elementwise (no cancellation blind spot)."""
    exact = g.double() @ w
    bound = rel * (g.double().abs() @ w.abs()) + 1e-30
    err = (got.double() - exact).abs()
    assert got.shape == exact.shape and got.dtype == g.dtype, what
    assert bool((err <= bound).all()), f"{what}: max err/bound {(err / bound).max().item():.3g}"


@pytest.mark.parametrize("xshape", XSHAPES)
@pytest.mark.parametrize("kind", BUILDERS)
def test_input_grad_matches_dense_weight(kind, xshape):
    layer, w_eff = BUILDERS[kind](_linear(64, 48))
    assert layer.bias is not None and not layer.bias.requires_grad  # a buffer: no bias gradient to check
    x = torch.randn(xshape, generator=_gen(1)).requires_grad_()
    y = layer(x)
    g = torch.randn(y.shape, generator=_gen(2))
    y.backward(g)
    _assert_grad(x.grad, g, w_eff, kind)


def test_input_grad_keeps_x_dtype():
    layer, w_eff = BUILDERS["int8_weight_only_g32"](_linear(64, 48))
    x = torch.randn(5, 64, generator=_gen(1)).bfloat16().requires_grad_()
    y = layer(x)
    g = torch.randn(y.shape, generator=_gen(2)).bfloat16()
    y.backward(g)
    # bf16: W_eff and the result each rounded once (2^-9 relative), fp32 accumulation.
    _assert_grad(x.grad, g, w_eff, "bf16", rel=2**-7)


def _wrapper_args():
    """(typed wrapper, weight parts) for each linear, called directly so bias can require grad."""
    lin = _linear(64, 48)
    wi = Int8WeightOnlyLinear.from_float(lin, group_size=32)
    wd = Int8DynamicLinear.from_float(lin)
    wf = Fp8DynamicLinear.from_float(nn.Linear(64, 48))
    s24 = Sparse24Linear.from_dense(lin, _mask_2_4(48, 64, seed=3))
    bs = BlockSparseLinear.from_dense(lin, _block_mask(48, 64, 16, seed=4), 16)
    return {
        "weight_int8_linear": (slimops.ops.weight_int8_linear, (wi.qweight, wi.weight_scale)),
        "int8_dynamic_linear": (slimops.ops.int8_dynamic_linear, (wd.qweight, wd.weight_scale)),
        "fp8_dynamic_linear": (slimops.ops.fp8_dynamic_linear, (wf.qweight, wf.weight_scale)),
        "sparse24_linear": (slimops.ops.sparse24_linear, (s24.values, s24.meta)),
        "block_sparse_linear": (slimops.ops.block_sparse_linear, (bs.values, bs.row_ptr, bs.col_idx)),
    }


@pytest.mark.parametrize("name", list(_wrapper_args()))
def test_bias_only_grad(name):
    """Only the bias needing a gradient: the wrapper still takes the differentiable path.
    (x and bias together: the op test table's gradient tests, tests/ops/test_op_db.py.)"""
    fn, parts = _wrapper_args()[name]
    x = torch.randn(2, 3, 64, generator=_gen(1))
    bias = torch.randn(48, generator=_gen(5)).requires_grad_()
    y = fn(x, *parts, bias)
    g = torch.randn(y.shape, generator=_gen(2))
    y.backward(g)
    torch.testing.assert_close(bias.grad, g.sum((0, 1)), rtol=1e-6, atol=1e-6)


def test_no_gradient_needed_calls_the_op_directly():
    """The autograd wrapper is only entered when a gradient is needed (it costs Python time)."""
    fn, parts = _wrapper_args()["weight_int8_linear"]
    x = torch.randn(2, 64, generator=_gen(1))
    assert fn(x, *parts).grad_fn is None
    with torch.no_grad():
        assert fn(x.requires_grad_(), *parts).grad_fn is None
    assert fn(x, *parts).grad_fn is not None


def test_partially_converted_model_trains():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 32))
    slimops.convert(m, slimops.Int8WeightOnlyConfig(), filter_fn=lambda mod, f: f == "1")
    assert isinstance(m[1], Int8WeightOnlyLinear)
    x = torch.randn(4, 8, generator=_gen(1))
    m(x).sum().backward()
    assert m[0].weight.grad is not None

    # float64: dL/dW0 = (1 @ W1_eff)^T x, the same for every row of the batch.
    w1 = m[1].qweight.double() * expand_group_scale(m[1].weight_scale, 32).double()
    dh = torch.ones(4, 32, dtype=torch.float64) @ w1
    torch.testing.assert_close(m[0].weight.grad.double(), dh.t() @ x.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m[0].bias.grad.double(), dh.sum(0), rtol=1e-5, atol=1e-6)


def test_torch_compile_fullgraph_forward_backward():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), Int8WeightOnlyLinear.from_float(nn.Linear(64, 32), group_size=32))
    x = torch.randn(5, 16, generator=_gen(1))
    g = torch.randn(5, 32, generator=_gen(2))

    m(x).backward(g)
    eager = [p.grad.clone() for p in m[0].parameters()]
    m.zero_grad()

    compiled = torch.compile(m, fullgraph=True)
    compiled(x).backward(g)
    for got, want in zip((p.grad for p in m[0].parameters()), eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-6)
