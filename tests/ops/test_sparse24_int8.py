"""sparse24_int8_linear (2:4 + int8 weight-only in one kernel): what the op table cannot say.

Every CPU instruction-set path against the float64 reference, metadata not made by
``sparse24_compress``, bad input (eager and under fake tensors), and the module: conversion from
``[SparseConfig("2:4"), Int8WeightOnlyConfig()]`` with no fallback, save / load bit for bit,
the file size against bf16, ``slimops.report``, ``torch.compile`` and the input gradient.
Correctness over the table's samples, opcheck and compile run from tests/ops/op_db.py.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import slimops
from slimops.nn import Int8WeightOnlyLinear, Sparse24Int8Linear, Sparse24Linear
from slimops.reference.sparse24_int8 import sparse24_int8_linear, sparse24_int8_to_dense
from tests.backends import gen
from tests.ops.op_db import ref_compress, weight_24

pytestmark = pytest.mark.usefixtures("poison_empty")

OPS = torch.ops.slimops
ISAS = ("auto", "avx512vnni", "avxvnni", "avx2", "generic")


def _parts(n, k, seed):
    _, meta = ref_compress(weight_24(n, k, seed=seed))
    values = torch.randint(-128, 128, (n, k // 2), generator=gen(seed + 1), dtype=torch.int8)
    scale = torch.rand(n, generator=gen(seed + 2)) * 0.01 + 1e-3
    return values, meta, scale


def _bound(x, values, meta, scale, bias):
    """fp32 accumulation over K / 2 products (and the scale, the bias): the op table's bound."""
    k = x.shape[-1]
    w = sparse24_int8_to_dense(values, meta, scale)
    out = (k + 2) * 2**-24 * 1.01 * (x.double().abs() @ w.abs().t())
    return out if bias is None else out + 2**-24 * bias.double().abs()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,k,n", [
    (1, 4096, 37), (1, 8, 5), (2, 40, 9), (3, 72, 6), (4, 88, 13), (5, 112, 7), (7, 200, 17), (16, 768, 11),
    (17, 96, 5), (64, 1000, 9),
])
def test_every_cpu_path_matches_the_reference(monkeypatch, isa, m, k, n):
    if isa != "auto":
        monkeypatch.setenv("SLIMOPS_CPU_ISA", isa)
    values, meta, scale = _parts(n, k, seed=m * 1000 + k)
    x = torch.randn(m, k, generator=gen(k + 1))
    bias = torch.randn(n, generator=gen(k + 2))
    try:
        got = slimops.ops.sparse24_int8_linear(x, values, meta, scale, bias)
    except RuntimeError as e:
        if "does not support it" in str(e):
            pytest.skip(f"this CPU lacks {isa}")
        raise
    want = sparse24_int8_linear(x.double(), values, meta, scale, bias.double())
    assert ((got.double() - want).abs() <= _bound(x, values, meta, scale, bias)).all()


def test_values_are_gathered_by_their_positions():
    # One weight row, hand-made: group 0 keeps inputs 1 and 3, group 1 inputs 0 and 2; x = 1, 2, 4, ...
    # (every product and sum exact in fp32, so any wrong position changes the result)
    meta = torch.tensor([[0b10_00_11_01]], dtype=torch.uint8)
    values = torch.tensor([[3, -5, 7, -128]], dtype=torch.int8)
    x = torch.exp2(torch.arange(8.0))[None]
    want = 3 * 2.0 - 5 * 8.0 + 7 * 16.0 - 128 * 64.0
    for isa in ("auto", "generic"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLIMOPS_CPU_ISA", isa)
            assert slimops.ops.sparse24_int8_linear(x, values, meta, torch.tensor([0.5])).item() == want * 0.5


@pytest.mark.parametrize("isa", ("auto", "avx2", "generic"))
@pytest.mark.parametrize("m", [1, 5, 40])  # in registers, and decode + GEMM
def test_cpu_rejects_metadata_not_from_compress(monkeypatch, isa, m):
    monkeypatch.setenv("SLIMOPS_CPU_ISA", isa)
    values, meta, scale = _parts(4, 64, seed=3)
    for byte, positions in ((0b00_00_01_01, "(1, 1)"), (0b01_00_01_11, "(3, 1)")):
        bad = meta.clone()
        bad[2, 1] = byte  # the low nibble: inputs 8..11
        try:
            pattern = r"meta is not 2:4 metadata: row 2, inputs 8..11 have positions " + re.escape(positions)
            with pytest.raises(RuntimeError, match=pattern):
                slimops.ops.sparse24_int8_linear(torch.randn(m, 64), values, bad, scale)
        except RuntimeError as e:
            if "does not support it" in str(e):
                pytest.skip(f"this CPU lacks {isa}")
            raise
    # the last group of a row, in a K % 32 tail (K = 40: inputs 36..39)
    values, meta, scale = _parts(3, 40, seed=4)
    bad = meta.clone()
    bad[1, 4] = (bad[1, 4] & 0x0F) | (0b00_10 << 4)
    with pytest.raises(RuntimeError, match=r"row 1, inputs 36..39 have positions \(2, 0\)"):
        slimops.ops.sparse24_int8_linear(torch.randn(m, 40), values, bad, scale)


def test_empty_shapes():
    values, meta, scale = _parts(8, 16, seed=1)
    assert slimops.ops.sparse24_int8_linear(torch.zeros(0, 16), values, meta, scale).shape == (0, 8)
    out = slimops.ops.sparse24_int8_linear(torch.randn(2, 16), values[:0], meta[:0], scale[:0])
    assert out.shape == (2, 0)


def _bad_inputs():
    values, meta, scale = _parts(16, 32, seed=4)
    x = torch.randn(4, 32)
    return [
        ((x.int(), values, meta, scale, None), "x must be float32, float16 or bfloat16"),
        ((x, values.float(), meta, scale, None), "values must be Char, got Float"),
        ((x, values.to(torch.uint8), meta, scale, None), "values must be Char, got Byte"),
        ((x[:, :16], values, meta, scale, None), r"values has 16 columns but x has K = 16 \(mismatched K\)"),
        ((x[:, :12], values, meta, scale, None), "x has K = 12, which must be a multiple of 8"),
        ((x, values[0], meta, scale, None), r"values must be 2-D \[N, K/2\]"),
        ((x, values, meta.to(torch.int8), scale, None), "meta must be Byte"),
        ((x, values, meta[:, :2], scale, None), r"meta must have shape \[N, K/8\] = \[16, 4\], got \[16, 2\]"),
        ((x, values, meta, scale.double(), None), "scale must be Float, got Double"),
        ((x, values, meta, scale.half(), None), "scale must be Float, got Half"),
        ((x, values, meta, scale[:15], None), r"scale must have shape \[16\] \(one float32 scale per output row\)"),
        ((x, values, meta, scale[:, None], None), r"scale must have shape \[16\]"),
        ((x, values, meta, scale, torch.randn(15)), r"bias must have shape \[16\]"),
        ((x, values, meta, scale, torch.randn(16).int()), "bias must be float32, float16 or bfloat16"),
        ((x[0, 0], values, meta, scale, None), "x must have at least 1 dimension"),
    ]


def test_bad_input_gets_a_clear_error():
    for args, pattern in _bad_inputs():
        with pytest.raises(RuntimeError, match=pattern) as e:
            slimops.ops.sparse24_int8_linear(*args)
        assert "slimops.sparse24_int8_linear" in str(e.value)


def test_bad_input_under_fake_tensors():
    """The fakes check what the C++ checks, with the same messages."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for args, pattern in _bad_inputs():
        with FakeTensorMode() as mode:
            fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            with pytest.raises((RuntimeError, ValueError), match=pattern):
                OPS.sparse24_int8_linear.default(*fake)


# ---------------------------------------------------------------- module and convert


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(256, 96, dtype=dtype), nn.ReLU(), nn.Linear(96, 40, bias=False, dtype=dtype))


def _sqnr(ref, out):
    return (10 * torch.log10(ref.double().pow(2).sum() / (ref.double() - out.double()).pow(2).sum())).item()


def test_convert_sparse_then_int8_keeps_both_with_no_fallback():
    x = torch.randn(5, 256, generator=gen(1))
    sparse_only = slimops.convert(_model(), slimops.SparseConfig(0.5, "2:4"))
    model = slimops.convert(_model(), [slimops.SparseConfig(0.5, "2:4"), slimops.Int8WeightOnlyConfig()])
    summary = model.slimops_summary
    assert not summary.fallbacks and not summary.skipped
    assert summary.converted == {f: "Linear -> Sparse24Linear -> Sparse24Int8Linear" for f in ("0", "2")}
    for fqn in ("0", "2"):
        layer, float24 = model.get_submodule(fqn), sparse_only.get_submodule(fqn)
        assert isinstance(layer, Sparse24Int8Linear)
        assert torch.equal(layer.meta, float24.meta)  # the same 2:4 pattern
        assert layer.values.dtype == torch.int8 and layer.scale.shape == (layer.out_features,)
        # the same int8 weight as Int8WeightOnlyLinear quantizing the dense 2:4 weight
        dense_int8 = Int8WeightOnlyLinear.from_float(nn.Linear(1, 1).requires_grad_(False))
        dense_int8 = Int8WeightOnlyLinear.from_float(
            _as_linear(float24.to_dense(), float24.bias))
        assert torch.equal(layer.dequantize(), dense_int8.dequantize())
    assert _sqnr(sparse_only(x), model(x)) > 35


def _as_linear(w, b):
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def test_int8_weight_only_on_a_2_4_model_and_group_size_is_skipped():
    model = slimops.convert(_model(), slimops.SparseConfig(0.5, "2:4"))
    slimops.convert(model, slimops.Int8WeightOnlyConfig())
    assert all(isinstance(model[i], Sparse24Int8Linear) for i in (0, 2)) and not model.slimops_summary.fallbacks
    grouped = slimops.convert(_model(), slimops.SparseConfig(0.5, "2:4"))
    slimops.convert(grouped, slimops.Int8WeightOnlyConfig(group_size=32))
    assert all(isinstance(grouped[i], Sparse24Linear) for i in (0, 2))  # left as it was, and why
    assert "one scale per output row; use group_size=None" in grouped.slimops_summary.skipped["0"]


def test_module_buffers_casts_and_weight_spec():
    layer = Sparse24Int8Linear.from_float(_as_linear(weight_24(24, 64, seed=5), torch.randn(24)))
    assert layer.weight.shape == (24, 64) and layer.weight.dtype == torch.float32
    w32 = layer.dequantize()
    half = layer.half()
    assert half.values.dtype == torch.int8 and half.scale.dtype == torch.float32 and half.bias.dtype == torch.float32
    assert half.weight.dtype == torch.float16
    x = torch.randn(3, 64, generator=gen(6)).half()
    assert torch.equal(half.dequantize(), w32.half())
    want = nn.functional.linear(x.double(), w32.double(), half.bias.double())
    assert ((half(x).double() - want).abs() <= 2**-11 * want.abs() + 1e-5).all()


def test_save_load_bit_exact_and_file_size_against_bf16(tmp_path):
    from safetensors.torch import save_file

    build = lambda: _model(torch.bfloat16, seed=2)  # noqa: E731
    x = torch.randn(3, 256, generator=gen(7)).bfloat16()
    bf16 = build()
    bf16_path = tmp_path / "bf16.safetensors"
    save_file({k: v.contiguous() for k, v in bf16.state_dict().items()}, bf16_path)
    configs = lambda: [slimops.SparseConfig(0.5, "2:4"), slimops.Int8WeightOnlyConfig()]  # noqa: E731
    model = slimops.convert(build(), configs())
    path = tmp_path / "s24i8.safetensors"
    slimops.save(model, path)
    skeleton = slimops.convert(_model(torch.bfloat16, seed=9), configs())
    slimops.load(path, skeleton)
    for name, t in model.state_dict().items():
        assert torch.equal(skeleton.state_dict()[name], t), name
    assert torch.equal(skeleton(x), model(x))
    # 0.5 byte of value + 0.125 of metadata per weight, + 4 per row of scale and of fp32 bias, + the header
    payload = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert payload == (256 * 96 + 96 * 40) * 5 // 8 + 4 * (96 + 40) + 4 * 96
    ratio = path.stat().st_size / bf16_path.stat().st_size
    assert ratio <= 0.34, ratio


def test_report_shows_the_layer():
    model = slimops.convert(_model(), [slimops.SparseConfig(0.5, "2:4"), slimops.Int8WeightOnlyConfig()])
    text = str(slimops.report(_model(), model, torch.randn(4, 256, generator=gen(8))))
    assert "Sparse24Int8Linear" in text


def test_compiled_module_matches_eager_and_input_gradient():
    layer = Sparse24Int8Linear.from_float(_as_linear(weight_24(24, 64, seed=5), torch.randn(24)))
    x = torch.randn(2, 7, 64, generator=gen(9))
    torch._dynamo.reset()
    assert torch.equal(torch.compile(layer, fullgraph=True)(x), layer(x))
    xg = torch.randn(4, 64, generator=gen(10), requires_grad=True)
    layer(xg).sum().backward()
    torch.testing.assert_close(xg.grad, layer.dequantize().sum(0).expand(4, 64), rtol=1e-5, atol=1e-6)
