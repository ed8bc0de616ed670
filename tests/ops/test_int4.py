"""weight_int4_linear: what the op table cannot say. The packed format, every CPU instruction-set
path against the float64 reference, bad input, and the module / config / save-load / file size."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import slimops
from slimops.nn import Int4WeightOnlyLinear
from slimops.reference.int4 import dequantize_int4, pack_int4, unpack_int4, weight_int4_linear
from tests.backends import gen

ISAS = ("auto", "avx512vnni", "avxvnni", "avx2", "generic")


def _parts(n, k, group_size, seed, asym=True):
    g = gen(seed)
    groups = -(-k // group_size)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = torch.rand(n, groups, generator=g) * 0.1 + 0.01
    zero = torch.rand(n, groups, generator=g) * 15 if asym else None
    return q, pack_int4(q), scale, zero


def test_pack_layout_is_the_documented_one():
    q = torch.arange(64, dtype=torch.uint8).remainder(16).reshape(1, 64)
    q[0, 40] = 9  # input 40: chunk 1, low nibble of byte 16 + 8
    packed = pack_int4(q)
    assert packed.shape == (1, 32)
    for k in range(64):
        c, i = divmod(k, 32)
        byte = packed[0, 16 * c + (i % 16)].item()
        assert (byte >> 4 if i >= 16 else byte & 0x0F) == q[0, k].item(), k
    for k in (1, 5, 31, 33, 123):
        qk = torch.randint(0, 16, (3, k), generator=gen(k), dtype=torch.uint8)
        packed = pack_int4(qk)
        assert packed.shape == (3, -(-k // 32) * 16)
        assert torch.equal(unpack_int4(packed, k), qk)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,k,n,group_size,asym", [
    (1, 4096, 37, 128, True), (1, 4096, 37, 128, False), (3, 123, 17, 32, True), (16, 769, 5, 64, False),
    (17, 300, 9, 96, True), (5, 17, 7, 32, True), (4, 1, 6, 32, False), (2, 200, 4, 256, True),
])
def test_every_cpu_path_matches_the_reference(monkeypatch, isa, m, k, n, group_size, asym):
    if isa != "auto":
        monkeypatch.setenv("SLIMOPS_CPU_ISA", isa)
    q, qweight, scale, zero = _parts(n, k, group_size, seed=m * 1000 + k, asym=asym)
    x = torch.randn(m, k, generator=gen(k + 1))
    bias = torch.randn(n, generator=gen(k + 2))
    try:
        got = slimops.ops.weight_int4_linear(x, qweight, scale, zero, group_size, bias)
    except RuntimeError as e:
        if "does not support it" in str(e):
            pytest.skip(f"this CPU lacks {isa}")
        raise
    want = weight_int4_linear(x.double(), qweight, scale, zero, group_size, bias.double())
    # fp32 sums of x*q and x*z over K (the bound of tests/ops/op_db.py's row)
    w_mag = (q.double() + (8.0 if zero is None else zero.double().repeat_interleave(group_size, 1)[:, :k]))
    w_mag = w_mag * scale.double().repeat_interleave(group_size, 1)[:, :k]
    bound = (k + 4) * 2**-24 * (x.double().abs() @ w_mag.t()) * 1.01 + 2**-24 * bias.double().abs()
    assert ((got.double() - want).abs() <= bound).all()


def _err(fn):
    with pytest.raises(RuntimeError) as e:
        fn()
    return str(e.value)


def test_bad_input_names_the_argument():
    _, qweight, scale, zero = _parts(8, 100, 64, seed=1)
    x = torch.randn(3, 100)
    op = slimops.ops.weight_int4_linear
    assert "group_size must be a positive multiple of 32" in _err(lambda: op(x, qweight, scale, zero, 48))
    assert "group_size must be a positive multiple of 32" in _err(lambda: op(x, qweight, scale, zero, 0))
    assert "qweight must be Byte" in _err(lambda: op(x, qweight.to(torch.int8), scale, zero, 64))
    assert "qweight must have ceil(K / 32) * 16 = 64 bytes" in _err(lambda: op(x, qweight[:, :48], scale, zero, 64))
    assert "qweight must be 2-D" in _err(lambda: op(x, qweight.reshape(-1), scale, zero, 64))
    assert "scale must be [8, 2]" in _err(lambda: op(x, qweight, scale[:, :1], zero, 64))
    assert "scale must be [8, 4]" in _err(lambda: op(x, qweight, scale, zero, 32))
    assert "zero_point must have scale's shape" in _err(lambda: op(x, qweight, scale, zero[:, :1], 64))
    assert "zero_point must be float32, float16 or bfloat16" in _err(
        lambda: op(x, qweight, scale, zero.to(torch.int32), 64))
    assert "x must be float32, float16 or bfloat16" in _err(lambda: op(x.double(), qweight, scale, zero, 64))
    assert "x must have K >= 1" in _err(lambda: op(x[:, :0], qweight, scale, zero, 64))
    assert "bias must have shape [8]" in _err(lambda: op(x, qweight, scale, zero, 64, torch.randn(7)))


def _linear(k=300, n=40, bias=True, dtype=torch.float32):
    lin = nn.Linear(k, n, bias=bias, dtype=dtype)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02, generator=gen(3))
    return lin


@pytest.mark.parametrize("scheme", ["asym", "sym"])
def test_module_matches_its_dequantized_weight(scheme):
    lin = _linear()
    layer = Int4WeightOnlyLinear.from_float(lin, 128, scheme)
    assert layer.weight.shape == (40, 300) and layer.weight.dtype == torch.float32
    assert layer.qweight.dtype == torch.uint8 and layer.qweight.shape == (40, 160)
    assert layer.weight_scale.shape == (40, 3)
    assert (layer.weight_zero_point is None) == (scheme == "sym")
    w = layer.dequantize()
    want = dequantize_int4(layer.qweight, layer.weight_scale, layer.weight_zero_point, 128, 300)
    assert torch.allclose(w.double(), want, rtol=1e-6, atol=1e-9)
    # quantization error: every weight within half a step (the range search may clip a few more)
    x = torch.randn(5, 300, generator=gen(4))
    out = layer(x)
    assert torch.allclose(out, nn.functional.linear(x, w, lin.bias), rtol=1e-4, atol=1e-5)
    sqnr = 10 * torch.log10(lin.weight.pow(2).sum() / (lin.weight - w).pow(2).sum())
    assert sqnr > 18, sqnr


def test_range_search_never_worse_than_plain_rounding():
    from slimops.nn.int4 import quantize_int4

    w = torch.randn(64, 512, generator=gen(5))
    plain = dequantize_int4(*quantize_int4(w, 128, "asym", (1.0,)), 128, 512)
    searched = dequantize_int4(*quantize_int4(w, 128, "asym"), 128, 512)
    per_group = lambda d: (d - w.double()).square().reshape(64, 4, 128).sum(-1)  # noqa: E731
    assert (per_group(searched) <= per_group(plain) + 1e-12).all()
    assert per_group(searched).sum() < per_group(plain).sum()


def test_config_validates():
    with pytest.raises(ValueError, match="multiple of 32"):
        slimops.Int4WeightOnlyConfig(group_size=100)
    with pytest.raises(ValueError, match="scheme"):
        slimops.Int4WeightOnlyConfig(scheme="nf4")


def test_convert_save_load_round_trip_and_file_size(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(_linear(1024, 512, dtype=torch.bfloat16), nn.ReLU(), _linear(512, 1024, dtype=torch.bfloat16))
    x = torch.randn(3, 1024, dtype=torch.bfloat16)
    bf16_path = tmp_path / "bf16.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, bf16_path)
    converted = slimops.convert(model, slimops.Int4WeightOnlyConfig())
    assert set(converted.slimops_summary.converted) == {"0", "2"}
    path = tmp_path / "int4.safetensors"
    slimops.save(converted, path)
    ratio = path.stat().st_size / bf16_path.stat().st_size
    assert ratio <= 0.3, ratio
    skeleton = slimops.convert(nn.Sequential(_linear(1024, 512, dtype=torch.bfloat16), nn.ReLU(),
                                             _linear(512, 1024, dtype=torch.bfloat16)), slimops.Int4WeightOnlyConfig())
    slimops.load(path, skeleton)
    for name, t in converted.state_dict().items():
        assert torch.equal(skeleton.state_dict()[name], t), name
    assert torch.equal(skeleton(x), converted(x))


def test_compiled_module_matches_eager():
    layer = Int4WeightOnlyLinear.from_float(_linear(), 64)
    x = torch.randn(2, 7, 300, generator=gen(6))
    compiled = torch.compile(layer, fullgraph=True)
    assert torch.equal(compiled(x), layer(x))


def test_input_gradient_flows():
    layer = Int4WeightOnlyLinear.from_float(_linear(), 128)
    x = torch.randn(4, 300, generator=gen(7), requires_grad=True)
    layer(x).sum().backward()
    want = layer.dequantize().sum(0).expand(4, 300)
    assert torch.allclose(x.grad, want, rtol=1e-5, atol=1e-6)
