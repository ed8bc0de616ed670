"""MaskedLinear, BlockSparseLinear and Sparse24Linear: outputs against F.linear on the masked weight,
masked gradients through optimizers, packed state_dicts, torch.compile, and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops.conversion import Unsupported
from slimops.nn import BlockSparseLinear, MaskedLinear, Sparse24Linear


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linear(k: int, n: int, seed: int = 0, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def _block_mask(n: int, k: int, b: int, density: float, seed: int) -> torch.Tensor:
    tiles = torch.rand(n // b, k // b, generator=_gen(seed)) < density
    return tiles.repeat_interleave(b, 0).repeat_interleave(b, 1)


def _mask_2_4(n: int, k: int, seed: int) -> torch.Tensor:
    """Keep 2 random positions in every group of 4 inputs."""
    order = torch.rand(n, k // 4, 4, generator=_gen(seed)).argsort(-1)[..., :2]
    return torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, order, True).reshape(n, k)


# ---------------------------------------------------------------- MaskedLinear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("xshape", [(1, 37), (5, 37), (2, 3, 37)])
def test_masked_linear_matches_linear_on_masked_weight(xshape, bias):
    lin = _linear(37, 23, bias=bias)
    mask = torch.rand(23, 37, generator=_gen(1)) < 0.3
    m = MaskedLinear.from_float(lin, mask)
    x = torch.randn(*xshape, generator=_gen(2))
    torch.testing.assert_close(m(x), F.linear(x, lin.weight.detach() * mask, lin.bias))
    assert (m.weight[~mask] == 0).all(), "from_float zeros the pruned weights in place"
    assert m.weight is lin.weight, "the parameters are shared with the wrapped layer"
    assert m.sparsity == pytest.approx(1 - mask.float().mean().item())


def test_masked_linear_gradients_are_masked():
    lin = _linear(16, 8)
    mask = torch.rand(8, 16, generator=_gen(3)) < 0.5
    m = MaskedLinear.from_float(lin, mask)
    x = torch.randn(4, 16, generator=_gen(4), requires_grad=True)
    m(x).pow(2).sum().backward()

    ref_w = (lin.weight.detach() * mask).requires_grad_(True)
    ref_b = lin.bias.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    F.linear(x2, ref_w, ref_b).pow(2).sum().backward()
    torch.testing.assert_close(m.weight.grad, ref_w.grad * mask)
    assert (m.weight.grad[~mask] == 0).all()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(m.bias.grad, ref_b.grad)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=1e-2),
    ],
    ids=["sgd-momentum-wd", "adamw-wd", "adam"],
)
def test_pruned_weights_stay_exactly_zero_through_optimizer_steps(make_opt):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    masks = [torch.rand(16, 12, generator=_gen(5)) < 0.4, torch.rand(3, 16, generator=_gen(6)) < 0.4]
    model[0] = MaskedLinear.from_float(model[0], masks[0])
    model[2] = MaskedLinear.from_float(model[2], masks[1])
    opt = make_opt(model.parameters())
    kept_before = [m.weight.detach()[m.mask].clone() for m in (model[0], model[2])]
    for step in range(6):
        x = torch.randn(8, 12, generator=_gen(10 + step))
        loss = F.cross_entropy(model(x), torch.randint(3, (8,), generator=_gen(20 + step)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m, before in zip((model[0], model[2]), kept_before):
        assert (m.weight.detach()[~m.mask] == 0).all(), "a pruned weight moved off zero"
        assert not torch.equal(m.weight.detach()[m.mask], before), "kept weights should train"


def test_masked_linear_set_mask_and_to_linear():
    lin = _linear(8, 4)
    m = MaskedLinear.from_float(lin)
    assert m.mask.all() and m.sparsity == 0
    mask = torch.rand(4, 8, generator=_gen(7)) < 0.5
    m.set_mask(mask)
    assert torch.equal(m.mask, mask) and (lin.weight[~mask] == 0).all()
    dense = m.to_linear()
    assert type(dense) is nn.Linear and dense.weight is not m.weight
    x = torch.randn(3, 8, generator=_gen(8))
    torch.testing.assert_close(dense(x), m(x))
    assert set(m.state_dict()) == {"weight", "bias", "mask"}


def test_masked_linear_bad_input():
    lin = _linear(8, 4)
    with pytest.raises(ValueError, match="mask.*torch.bool"):
        MaskedLinear.from_float(lin, torch.ones(4, 8))
    with pytest.raises(ValueError, match=r"mask shape \(8, 4\)"):
        MaskedLinear.from_float(lin, torch.ones(8, 4, dtype=torch.bool))
    m = MaskedLinear.from_float(lin)
    with pytest.raises(ValueError, match="mask"):
        m.set_mask(torch.ones(4, 7, dtype=torch.bool))
    with pytest.raises(Unsupported, match="MultiheadAttention"):
        MaskedLinear.from_float(nn.MultiheadAttention(8, 2).out_proj)


# ---------------------------------------------------------------- BlockSparseLinear


@pytest.mark.parametrize("block", [16, 32, (16, 32)])
@pytest.mark.parametrize("m_rows", [1, 5, 17])
def test_block_sparse_linear_matches_masked_weight(block, m_rows):
    lin = _linear(64, 96)
    bn, bk = (block, block) if isinstance(block, int) else block
    tiles = torch.rand(96 // bn, 64 // bk, generator=_gen(9)) < 0.4
    mask = tiles.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    mod = BlockSparseLinear.from_dense(lin, mask, block)
    assert mod.values.shape == (int(tiles.sum()), bn, bk), "only the kept tiles are stored"
    assert mod.density == pytest.approx(tiles.float().mean().item())
    x = torch.randn(m_rows, 64, generator=_gen(10))
    torch.testing.assert_close(mod(x), F.linear(x, lin.weight.detach() * mask, lin.bias))
    torch.testing.assert_close(mod.to_dense(), lin.weight.detach() * mask)


def test_block_sparse_from_masked_linear_and_without_mask():
    lin = _linear(32, 32)
    mask = _block_mask(32, 32, 16, 0.5, seed=11)
    masked = MaskedLinear.from_float(lin, mask)  # zeros the pruned tiles in lin.weight too
    from_masked = BlockSparseLinear.from_dense(masked, block=16)
    from_zeros = BlockSparseLinear.from_dense(lin, block=16)  # no mask: the all-zero tiles are skipped
    x = torch.randn(3, 32, generator=_gen(12))
    for mod in (from_masked, from_zeros):
        assert mod.values.shape[0] == int(mask[::16, ::16].sum())
        torch.testing.assert_close(mod(x), masked(x))


def test_block_sparse_state_dict_holds_packed_data():
    mask = _block_mask(64, 32, 16, 0.5, 13)
    mod = BlockSparseLinear.from_dense(_linear(32, 64, seed=0), mask, 16)
    sd = mod.state_dict()
    assert set(sd) == {"values", "row_ptr", "col_idx", "bias"}
    assert sd["row_ptr"].dtype == torch.int32 and sd["col_idx"].dtype == torch.int32
    skeleton = BlockSparseLinear.from_dense(_linear(32, 64, seed=1), mask, 16)  # same layout, other values
    skeleton.load_state_dict(sd)
    x = torch.randn(2, 32, generator=_gen(14))
    torch.testing.assert_close(skeleton(x), mod(x))


def test_block_sparse_bad_input():
    lin = _linear(40, 64)
    with pytest.raises(ValueError, match="block_n must be one of"):
        BlockSparseLinear.from_dense(lin, block=48)
    with pytest.raises(ValueError, match="must divide"):
        BlockSparseLinear.from_dense(lin, block=16)  # 40 inputs
    with pytest.raises(ValueError, match="mask shape"):
        BlockSparseLinear.from_dense(_linear(32, 32), torch.ones(16, 32, dtype=torch.bool), 16)


# ---------------------------------------------------------------- Sparse24Linear


@pytest.mark.parametrize("m_rows", [1, 3, 16])
def test_sparse24_linear_matches_masked_weight(m_rows):
    lin = _linear(64, 24)
    mask = _mask_2_4(24, 64, seed=15)
    mod = Sparse24Linear.from_dense(lin, mask)
    assert mod.values.shape == (24, 32)
    assert set(mod.state_dict()) == {"values", "meta", "bias"}
    x = torch.randn(m_rows, 64, generator=_gen(16))
    torch.testing.assert_close(mod(x), F.linear(x, lin.weight.detach() * mask, lin.bias))
    # A MaskedLinear brings its own mask.
    torch.testing.assert_close(Sparse24Linear.from_dense(MaskedLinear.from_float(lin, mask))(x), mod(x))


def test_sparse24_refuses_a_weight_that_is_not_2_4():
    with pytest.raises((ValueError, RuntimeError), match="2:4"):
        Sparse24Linear.from_dense(_linear(64, 8))


# ---------------------------------------------------------------- torch.compile


def test_modules_compile_fullgraph():
    lin = _linear(64, 32)
    masked = MaskedLinear.from_float(_linear(64, 32), torch.rand(32, 64, generator=_gen(17)) < 0.5)
    block = BlockSparseLinear.from_dense(lin, _block_mask(32, 64, 16, 0.5, 18), 16)
    s24 = Sparse24Linear.from_dense(lin, _mask_2_4(32, 64, 19))
    x = torch.randn(4, 64, generator=_gen(20))
    for mod in (masked, block, s24):
        torch._dynamo.reset()
        compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), mod(x))
    # Training through the compiled masked layer keeps the gradient masked.
    torch._dynamo.reset()
    compiled = torch.compile(masked, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    assert (masked.weight.grad[~masked.mask] == 0).all()


def test_slimops_exports():
    assert slimops.nn.MaskedLinear is MaskedLinear
    assert slimops.nn.BlockSparseLinear is BlockSparseLinear
    assert slimops.nn.Sparse24Linear is Sparse24Linear
