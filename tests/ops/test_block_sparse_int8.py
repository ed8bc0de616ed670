"""block_sparse_int8_linear: what the op table cannot say. Every CPU instruction-set path and every
block shape against the float64 reference, bad input, the module (quantization, dequantize, compile,
input gradient), convert with no fallback, save/load bit for bit, and the report."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import slimops
from slimops.nn import BlockSparseInt8Linear, BlockSparseLinear, Int8WeightOnlyLinear
from slimops.reference.block_sparse_int8 import block_sparse_int8_linear
from slimops.reference.sparse import block_sparse_pack, block_sparse_to_dense
from tests.backends import gen

ISAS = ("auto", "avx512vnni", "avxvnni", "avx2", "generic")
BLOCKS = (16, 32, 64, 128)


def _parts(n, k, bn, bk, density, seed, empty_rows=()):
    """Random int8 tiles (from -127) kept with probability ``density`` (``empty_rows`` dropped), fp32 row scales."""
    g = gen(seed)
    keep = torch.rand(n // bn, k // bk, generator=g) < density
    for r in empty_rows:
        keep[r] = False
    mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    values, row_ptr, col_idx = block_sparse_pack(q, mask, bn, bk)
    scale = torch.rand(n, generator=g) * 0.01 + 0.001
    return values, row_ptr, col_idx, scale


def _bound(x, values, row_ptr, col_idx, scale, bias):
    """fp32 sums over K terms, the scale once and the bias once (the op_db row's bound, fp32 x)."""
    k = x.shape[-1]
    w = block_sparse_to_dense(values, row_ptr, col_idx, k).double().abs() * scale.double()[:, None]
    return (k + 3) * 2**-24 * (x.double().abs() @ w.t()) * 1.01 + 2**-24 * bias.double().abs()


def _call(isa, monkeypatch, *args):
    if isa != "auto":
        monkeypatch.setenv("SLIMOPS_CPU_ISA", isa)
    try:
        return slimops.ops.block_sparse_int8_linear(*args)
    except RuntimeError as e:
        if "does not support it" in str(e):
            pytest.skip(f"this CPU lacks {isa}")
        raise


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bn", BLOCKS)
@pytest.mark.parametrize("bk", BLOCKS)
def test_every_cpu_path_and_block_shape_matches_the_reference(monkeypatch, isa, bn, bk):
    n, k = 2 * bn, 3 * bk
    values, row_ptr, col_idx, scale = _parts(n, k, bn, bk, 0.6, seed=bn * 1000 + bk, empty_rows=(1,))
    bias = torch.randn(n, generator=gen(bn + bk))
    for m in (1, 2, 3, 4, 5, 6, 7, 8, 13, 16, 17, 40):  # every register block and its tails; the GEMM path
        x = torch.randn(m, k, generator=gen(m))
        got = _call(isa, monkeypatch, x, values, row_ptr, col_idx, scale, bias)
        want = block_sparse_int8_linear(x.double(), values, row_ptr, col_idx, scale, bias.double())
        assert got.dtype == x.dtype and got.shape == (m, n)
        assert ((got.double() - want).abs() <= _bound(x, values, row_ptr, col_idx, scale, bias)).all(), m
        # block row 1 has no tile: exactly the bias
        assert torch.equal(got[:, bn : 2 * bn], bias[bn : 2 * bn].expand(m, bn))


@pytest.mark.parametrize("isa", ISAS)
def test_decode_shape_64x64(monkeypatch, isa):
    # the benchmark's block at a real width, 75% zero tiles
    values, row_ptr, col_idx, scale = _parts(256, 4096, 64, 64, 0.25, seed=7)
    bias = torch.randn(256, generator=gen(8))
    for m in (1, 4, 16):
        x = torch.randn(m, 4096, generator=gen(m + 10))
        got = _call(isa, monkeypatch, x, values, row_ptr, col_idx, scale, bias)
        want = block_sparse_int8_linear(x.double(), values, row_ptr, col_idx, scale, bias.double())
        assert ((got.double() - want).abs() <= _bound(x, values, row_ptr, col_idx, scale, bias)).all(), m


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_round_once(dtype):
    values, row_ptr, col_idx, scale = _parts(64, 96, 32, 16, 0.5, seed=3)
    x = (torch.randn(5, 96, generator=gen(4)) * 0.1).to(dtype)
    got = slimops.ops.block_sparse_int8_linear(x, values, row_ptr, col_idx, scale)
    want = block_sparse_int8_linear(x.double(), values, row_ptr, col_idx, scale)
    assert got.dtype == dtype
    # one rounding to x's dtype after an fp32 sum
    bound = torch.finfo(dtype).eps * want.abs() + _bound(x.float(), values, row_ptr, col_idx, scale, torch.zeros(64))
    assert ((got.double() - want).abs() <= bound * 1.01).all()


def test_all_zero_weight_gives_the_bias():
    values, row_ptr, col_idx, scale = _parts(64, 64, 16, 16, 0.0, seed=1)
    assert values.shape[0] == 0
    bias = torch.randn(64, generator=gen(2))
    for m in (1, 17):
        got = slimops.ops.block_sparse_int8_linear(torch.randn(m, 64), values, row_ptr, col_idx, scale, bias)
        assert torch.equal(got, bias.expand(m, 64))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_a_non_finite_scale_reaches_its_row_even_without_tiles(backend):
    # the reference's 0 * inf = NaN; the Triton launcher's no-tile shortcut once gave 0 (tests/ops/fuzz_ops.py)
    from slimops.ops._triton import triton_usable

    if backend == "triton" and not triton_usable():
        pytest.skip("Triton's interpreter is not available")
    values, row_ptr, col_idx, scale = _parts(64, 64, 16, 16, 0.0, seed=1)
    scale[5] = float("inf")
    with slimops.use_backend(None if backend == "cpu" else "triton"):
        got = slimops.ops.block_sparse_int8_linear(torch.randn(3, 64), values, row_ptr, col_idx, scale)
    assert got[:, 5].isnan().all() and (got[:, :5] == 0).all() and (got[:, 6:] == 0).all()


def _err(fn):
    with pytest.raises(RuntimeError) as e:
        fn()
    return str(e.value)


def test_bad_input_names_the_argument():
    values, row_ptr, col_idx, scale = _parts(64, 96, 32, 16, 0.5, seed=1)
    x = torch.randn(3, 96)
    op = slimops.ops.block_sparse_int8_linear
    name = "block_sparse_int8_linear"
    assert f"{name}: values must be Char" in _err(lambda: op(x, values.float(), row_ptr, col_idx, scale))
    assert "values must be int8 [nnz, block_n, block_k]" in _err(lambda: op(x, values[0], row_ptr, col_idx, scale))
    assert "block_k must be one of (16, 32, 64, 128), got 8" in _err(
        lambda: op(x, values[:, :, :8], row_ptr, col_idx, scale))
    assert "x's K = 90 must be a multiple of block_k = 16" in _err(
        lambda: op(x[:, :90], values, row_ptr, col_idx, scale))
    assert "scale must be fp32 [64]" in _err(lambda: op(x, values, row_ptr, col_idx, scale[:32]))
    assert "scale must be Float" in _err(lambda: op(x, values, row_ptr, col_idx, scale.half()))
    assert "row_ptr must be Int" in _err(lambda: op(x, values, row_ptr.long(), col_idx, scale))
    assert "col_idx must be [nnz]" in _err(lambda: op(x, values, row_ptr, col_idx[:-1], scale))
    assert "x must be float32, float16 or bfloat16" in _err(lambda: op(x.double(), values, row_ptr, col_idx, scale))
    assert "bias must have shape [64]" in _err(lambda: op(x, values, row_ptr, col_idx, scale, torch.randn(7)))
    # the index contents (the shared BSR checks, with this op's name)
    bad = col_idx.clone()
    bad[0] = 6
    assert f"{name}: col_idx[0] = 6 is outside [0, 6)" in _err(lambda: op(x, values, row_ptr, bad, scale))
    bad_rp = row_ptr.clone()
    bad_rp[-1] += 1
    assert f"{name}: row_ptr must start at 0 and end at nnz" in _err(lambda: op(x, values, bad_rp, col_idx, scale))


# ----------------------------------------------------------------- the module and convert


def _pruned_linear(k=256, n=128, block=32, density=0.25, bias=True, dtype=torch.float32, seed=0):
    lin = nn.Linear(k, n, bias=bias, dtype=dtype)
    g = gen(seed)
    keep = torch.rand(n // block, k // block, generator=g) < density
    mask = keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05 * mask)
    return lin


def test_module_quantizes_like_dense_int8_on_the_kept_tiles():
    lin = _pruned_linear()
    sparse = BlockSparseLinear.from_dense(lin, block=32)
    layer = BlockSparseInt8Linear.from_block_sparse(sparse)
    dense_int8 = Int8WeightOnlyLinear.from_float(lin)
    assert layer.values.dtype == torch.int8 and layer.values.shape == sparse.values.shape
    assert torch.equal(layer.row_ptr, sparse.row_ptr) and torch.equal(layer.col_idx, sparse.col_idx)
    assert layer.weight_scale.shape == (128,) and layer.weight_scale.dtype == torch.float32
    # the same int8 weights and scales as dense per-channel int8 of the same pruned weight
    assert torch.equal(block_sparse_to_dense(layer.values, layer.row_ptr, layer.col_idx, 256), dense_int8.qweight)
    assert torch.equal(layer.weight_scale, dense_int8.weight_scale.reshape(-1))
    assert torch.equal(layer.dequantize(), dense_int8.dequantize())
    assert layer.weight.shape == (128, 256) and layer.weight.dtype == torch.float32
    x = torch.randn(5, 256, generator=gen(1))
    torch.testing.assert_close(layer(x), dense_int8(x), rtol=1e-5, atol=1e-5)
    assert "block=32x32" in repr(layer)


def test_compiled_module_matches_eager():
    layer = BlockSparseInt8Linear.from_float(_pruned_linear(), block=32)
    x = torch.randn(2, 7, 256, generator=gen(6))
    compiled = torch.compile(layer, fullgraph=True)
    assert torch.equal(compiled(x), layer(x))


def test_input_gradient_flows():
    layer = BlockSparseInt8Linear.from_float(_pruned_linear(), block=32)
    x = torch.randn(4, 256, generator=gen(7), requires_grad=True)
    layer(x).sum().backward()
    want = layer.dequantize().sum(0).expand(4, 256)
    assert torch.allclose(x.grad, want, rtol=1e-5, atol=1e-6)


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 128, dtype=dtype), nn.ReLU(), nn.Linear(128, 64, dtype=dtype))


def _sparse_int8(model):
    return [slimops.SparseConfig(0.75, pattern="block", block_size=32), slimops.Int8WeightOnlyConfig()]


def test_convert_sparse_then_int8_records_no_fallback():
    model = _model()
    x = torch.randn(3, 256)
    sparse_only = slimops.convert(_model(), slimops.SparseConfig(0.75, pattern="block", block_size=32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "converted through their dense weight" warning
        converted = slimops.convert(model, _sparse_int8(model))
    summary = converted.slimops_summary
    assert not summary.fallbacks and not summary.skipped
    assert set(summary.converted) == {"0", "2"}
    assert all(v.endswith("BlockSparseLinear -> BlockSparseInt8Linear") for v in summary.converted.values())
    for i in (0, 2):
        assert isinstance(converted[i], BlockSparseInt8Linear)
        assert converted[i].values.shape[0] == sparse_only[i].values.shape[0]  # the same tiles, now int8
    ref = sparse_only(x)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - converted(x)).pow(2).sum())
    assert sqnr > 35, sqnr


def test_int8_on_an_already_block_sparse_model():
    sparse = slimops.convert(_model(), slimops.SparseConfig(0.75, pattern="block", block_size=32))
    converted = slimops.convert(sparse, slimops.Int8WeightOnlyConfig())
    assert not converted.slimops_summary.fallbacks
    assert isinstance(converted[0], BlockSparseInt8Linear) and isinstance(converted[2], BlockSparseInt8Linear)


def test_group_size_is_refused_with_the_reason():
    sparse = slimops.convert(_model(), slimops.SparseConfig(0.75, pattern="block", block_size=32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = slimops.convert(sparse, slimops.Int8WeightOnlyConfig(group_size=32))
    assert isinstance(converted[0], BlockSparseLinear)  # left as it was, still block-sparse
    assert "one scale per output row" in converted.slimops_summary.skipped["0"]


def test_save_load_round_trip_is_bit_exact(tmp_path):
    converted = slimops.convert(_model(torch.bfloat16), _sparse_int8(None))
    path = tmp_path / "bsi8.safetensors"
    slimops.save(converted, path)
    skeleton = slimops.convert(_model(torch.bfloat16), _sparse_int8(None))
    with torch.no_grad():
        for t in skeleton.state_dict().values():
            if t.is_floating_point():
                t.fill_(1.0)  # the load must overwrite every stored value
    slimops.load(path, skeleton)
    for name, t in converted.state_dict().items():
        assert torch.equal(skeleton.state_dict()[name], t), name
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    assert torch.equal(skeleton(x), converted(x))


def test_report_shows_sparsity_and_int8_bytes():
    from slimops.report import weight_sparsity

    model = _model().eval()
    converted = slimops.convert(_model(), _sparse_int8(None)).eval()
    layer = converted[0]
    dense = block_sparse_to_dense(layer.values, layer.row_ptr, layer.col_idx, 256)
    assert weight_sparsity(layer) == pytest.approx(1 - torch.count_nonzero(dense).item() / dense.numel())
    r = slimops.report(model, converted, torch.randn(4, 256), repeats=1, warmup=0)
    row = r["0"]
    assert row.type_after == "BlockSparseInt8Linear"
    nnz = layer.values.shape[0]
    # int8 tiles, int32 row_ptr and col_idx, fp32 scale and bias
    assert row.bytes_after == nnz * 32 * 32 + (128 // 32 + 1) * 4 + nnz * 4 + 128 * 4 + 128 * 4
    assert 0.7 <= row.sparsity <= 0.8
