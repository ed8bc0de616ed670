"""``HalfConfig`` on CPU: half weights computed natively where the CPU has the instructions,
in fp32 elsewhere, each path forced in turn and judged against a float64 reference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops.nn import HalfLinear
from slimops.nn import half_linear as H

HALF = [torch.float16, torch.bfloat16]


def gaussian_linear(k, n, bias=True, seed=0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    return lin


def reference64(m: HalfLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer's own half weight and bias, in float64."""
    b = None if m.bias is None else m.bias.double()
    return F.linear(x.double(), m.weight.double(), b)


# K and N around and past the widening block (rows = max(16, 2^20 / (4 K))): one block, several, a remainder.
SHAPES = [(5, 17), (17, 5), (123, 769), (769, 700), (4097, 129)]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("m_rows", [1, 17])
def test_float32_path_matches_float64(dtype, k, n, m_rows, poison_empty):
    m = HalfLinear.from_float(gaussian_linear(k, n), dtype, compute="float32")
    assert m.compute_dtype == torch.float32
    x = torch.randn(2, m_rows, k, generator=torch.Generator().manual_seed(1))
    out = m(x)
    assert out.shape == (2, m_rows, n) and out.dtype == torch.float32 and out.is_contiguous()
    # fp32 accumulation of the exact products: error ~ sqrt(K) * eps32 relative to the row norms.
    ref = reference64(m, x)
    scale = x.norm(dim=-1, keepdim=True) * m.weight.float().norm(dim=-1) + 1
    assert ((out.double() - ref).abs() / scale).max() < 1e-6


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("k,n", [(17, 5), (123, 769)])
def test_half_path_is_plain_torch_in_half(dtype, k, n):
    m = HalfLinear.from_float(gaussian_linear(k, n), dtype, compute="half")
    assert m.compute_dtype == dtype
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(2))
    out = m(x)
    torch.testing.assert_close(out, F.linear(x.to(dtype), m.weight, m.bias).float(), rtol=0, atol=0)
    # As accurate as plain torch in that precision: error at most 2x that of fp32 input rounded to half.
    ref = reference64(m, x)
    plain = F.linear(x.to(dtype), m.weight, m.bias).double()
    assert (out.double() - ref).norm() <= 2 * (plain - ref).norm() + 1e-12


def test_strided_and_half_inputs():
    m = HalfLinear.from_float(gaussian_linear(769, 700), torch.bfloat16, compute="float32")
    base = torch.randn(9, 2 * 769, generator=torch.Generator().manual_seed(3))
    x = base[::2, ::2]
    assert not x.is_contiguous()
    # MKL may sum in another order for a strided x: judged against float64, not bit for bit.
    torch.testing.assert_close(m(x).double(), reference64(m, x), rtol=1e-5, atol=1e-5)
    out = m(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("dtype", HALF)
def test_auto_follows_the_cpu_and_the_report_says_which(native, dtype, monkeypatch):
    monkeypatch.setattr(H, "cpu_has_native", lambda d: native)
    model = nn.Sequential(gaussian_linear(64, 32), nn.ReLU(), gaussian_linear(32, 8)).eval()
    ref = copy.deepcopy(model)
    slimops.convert(model, slimops.HalfConfig(dtype))
    layer = model[0]
    name = str(dtype)[6:]
    if native:
        assert layer.compute_dtype == dtype
        assert layer.slimops_note == f"computes in {name} (native on cpu)"
    else:
        assert layer.compute_dtype == torch.float32
        assert layer.slimops_note == f"{name} weights, computes in float32 (no native {name} on this CPU)"
    assert layer.slimops_note in repr(layer)
    rep = slimops.report(ref, model, (torch.randn(4, 64),), repeats=1, warmup=0)
    assert rep["0"].note == layer.slimops_note


def test_forced_modes_are_named_so():
    lin = gaussian_linear(8, 4)
    assert HalfLinear.from_float(lin, torch.float16, "half").slimops_note == "computes in float16 (forced)"
    assert (
        HalfLinear.from_float(lin, torch.bfloat16, "float32").slimops_note
        == "bfloat16 weights, computes in float32 (forced)"
    )


def test_this_cpu_is_detected_as_torch_reports_it():
    bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert H.cpu_has_native(torch.bfloat16) == bf16
    assert H.cpu_has_native(torch.float16) == torch.cpu._is_amx_fp16_supported()


def test_half_the_weight_memory():
    lin = gaussian_linear(256, 512)
    m = HalfLinear.from_float(lin, torch.bfloat16, compute="float32")
    assert m.weight.dtype == torch.bfloat16
    assert m.weight.numel() * m.weight.element_size() * 2 == lin.weight.numel() * lin.weight.element_size()


def test_bad_compute_is_refused():
    with pytest.raises(ValueError, match=r"HalfConfig: compute must be one of \('auto', 'half', 'float32'\), got 'fast'"):
        slimops.HalfConfig(compute="fast")
    with pytest.raises(ValueError, match="HalfLinear: compute must be one of"):
        HalfLinear(torch.zeros(2, 2, dtype=torch.float16), None, compute="fp32")


def test_input_gradient_through_the_float32_path():
    m = HalfLinear.from_float(gaussian_linear(769, 700), torch.bfloat16, compute="float32")
    x = torch.randn(3, 769, requires_grad=True)
    m(x).sum().backward()
    torch.testing.assert_close(x.grad, m.weight.float().sum(0).expand(3, -1), rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_float32_path():
    model = nn.Sequential(gaussian_linear(769, 700), nn.ReLU())
    slimops.convert(model, slimops.HalfConfig(torch.bfloat16, compute="float32"))
    x = torch.randn(5, 769)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-5, atol=1e-5)


def test_bert_forward_in_both_paths():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=100
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 100, (2, 17))
    with torch.no_grad():
        want = model(ids).last_hidden_state.double()
        for compute in ("half", "float32"):
            m = slimops.convert(copy.deepcopy(model), slimops.HalfConfig(torch.bfloat16, compute=compute))
            out = m(ids).last_hidden_state
            snr = 10 * torch.log10(want.pow(2).sum() / (want - out.double()).pow(2).sum())
            assert snr > 35, (compute, snr)
