"""weight_codebook4_linear: what the op table cannot say. Every CPU instruction-set path against the
float64 reference, bad input, the NF4 table, the k-means fit, and the module / config / save-load /
file size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimops
from slimops.nn import CodebookWeightOnlyLinear
from slimops.nn.codebook import fit_kmeans, nf4_codebook, quantize_codebook4
from slimops.reference.codebook4 import dequantize_codebook4, weight_codebook4_linear
from slimops.reference.int4 import pack_int4
from tests.backends import gen

ISAS = ("auto", "avx512vnni", "avxvnni", "avx2", "generic")


def _parts(n, k, group_size, seed, per_row):
    g = gen(seed)
    groups = -(-k // group_size)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    codebook = torch.randn(n if per_row else 1, 16, generator=g)
    scale = torch.rand(n, groups, generator=g) * 0.1 + 0.01
    return pack_int4(q), codebook, scale


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,k,n,group_size,per_row", [
    (1, 4096, 37, 64, False), (1, 4096, 37, 128, True), (3, 123, 17, 32, True), (16, 769, 5, 64, False),
    (17, 300, 9, 96, True), (5, 17, 7, 32, False), (4, 1, 6, 32, True), (2, 200, 4, 256, False), (8, 96, 8, 32, True),
])
def test_every_cpu_path_matches_the_reference(monkeypatch, isa, m, k, n, group_size, per_row):
    if isa != "auto":
        monkeypatch.setenv("SLIMOPS_CPU_ISA", isa)
    qweight, codebook, scale = _parts(n, k, group_size, seed=m * 1000 + k, per_row=per_row)
    x = torch.randn(m, k, generator=gen(k + 1))
    bias = torch.randn(n, generator=gen(k + 2))
    try:
        got = slimops.ops.weight_codebook4_linear(x, qweight, codebook, scale, group_size, bias)
    except RuntimeError as e:
        if "does not support it" in str(e):
            pytest.skip(f"this CPU lacks {isa}")
        raise
    want = weight_codebook4_linear(x.double(), qweight, codebook, scale, group_size, bias.double())
    mag = x.double().abs() @ dequantize_codebook4(qweight, codebook, scale, group_size, k).abs().t()
    bound = (k + 4) * 2**-24 * mag * 1.01 + 2**-24 * bias.double().abs()
    assert ((got.double() - want).abs() <= bound).all()


def test_each_entry_of_each_table_is_looked_up():
    # one weight per entry, a distinct power-of-two table per row: any wrong lane or blend shows exactly
    k, n = 64, 8
    q = (torch.arange(k) % 16).to(torch.uint8).expand(n, k).contiguous()
    codebook = torch.exp2(-torch.arange(n * 16, dtype=torch.float32) / 4).reshape(n, 16)
    scale = torch.ones(n, 1)
    for isa in ISAS[1:]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLIMOPS_CPU_ISA", isa)
            for j in range(k):
                x = torch.zeros(1, k)
                x[0, j] = 1.0
                try:
                    got = slimops.ops.weight_codebook4_linear(x, pack_int4(q), codebook, scale, 64)
                except RuntimeError as e:
                    assert "does not support it" in str(e)
                    break
                assert torch.equal(got[0], codebook[:, j % 16]), (isa, j)


def _err(fn):
    with pytest.raises(RuntimeError) as e:
        fn()
    return str(e.value)


def test_bad_input_names_the_argument():
    qweight, codebook, scale = _parts(8, 100, 64, seed=1, per_row=True)
    x = torch.randn(3, 100)
    op = slimops.ops.weight_codebook4_linear
    assert "group_size must be a positive multiple of 32" in _err(lambda: op(x, qweight, codebook, scale, 48))
    assert "qweight must be Byte" in _err(lambda: op(x, qweight.to(torch.int8), codebook, scale, 64))
    assert "qweight must have ceil(K / 32) * 16 = 64 bytes" in _err(
        lambda: op(x, qweight[:, :48], codebook, scale, 64))
    assert "scale must be [8, 2]" in _err(lambda: op(x, qweight, codebook, scale[:, :1], 64))
    assert "codebook must be [1, 16] (one table for the layer) or [8, 16]" in _err(
        lambda: op(x, qweight, codebook[:3], scale, 64))
    assert "codebook must be [1, 16]" in _err(lambda: op(x, qweight, codebook[:, :8], scale, 64))
    assert "codebook must be [1, 16]" in _err(lambda: op(x, qweight, codebook.reshape(-1), scale, 64))
    assert "codebook must be float32, float16 or bfloat16" in _err(
        lambda: op(x, qweight, codebook.double(), scale, 64))
    assert "x must be float32, float16 or bfloat16" in _err(lambda: op(x.double(), qweight, codebook, scale, 64))
    assert "x must have K >= 1" in _err(lambda: op(x[:, :0], qweight, codebook, scale, 64))
    assert "bias must have shape [8]" in _err(lambda: op(x, qweight, codebook, scale, 64, torch.randn(7)))
    assert "weight_codebook4_linear" in _err(lambda: op(x, qweight, codebook[:3], scale, 64))


def test_nf4_table_is_qlora_s():
    # the NF4 values published with QLoRA (Dettmers et al. 2023, appendix E), to their 4 printed digits
    published = torch.tensor([-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
                              0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0])
    assert torch.allclose(nf4_codebook(), published, atol=6e-5)


def test_kmeans_lowers_the_weighted_error_and_is_deterministic():
    u = torch.randn(3, 2000, generator=gen(11)).clamp(-3, 3) / 3
    wt = torch.rand(3, 2000, generator=gen(12))

    def err(c):
        q = torch.searchsorted(((c[:, 1:] + c[:, :-1]) / 2).contiguous(), u)
        return (wt * (u - torch.gather(c, 1, q)).square()).sum()

    nf4 = nf4_codebook().expand(3, 16).contiguous()
    assert torch.equal(fit_kmeans(u, wt, iters=0), nf4)  # the init
    fitted = fit_kmeans(u, wt)
    assert err(fitted) < 0.95 * err(nf4)
    # each Lloyd iteration never raises the weighted error
    errs = [err(fit_kmeans(u, wt, iters=i)) for i in range(6)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errs, errs[1:])), errs
    assert (fitted.diff(dim=1) > 0).all()
    assert torch.equal(fitted, fit_kmeans(u, wt))


@pytest.mark.parametrize("codebook,kmeans", [("nf4", "layer"), ("kmeans", "layer"), ("kmeans", "row")])
def test_module_matches_its_dequantized_weight(codebook, kmeans):
    lin = _linear()
    layer = CodebookWeightOnlyLinear.from_float(lin, 64, codebook, kmeans)
    assert layer.weight.shape == (40, 300) and layer.weight.dtype == torch.float32
    assert layer.qweight.dtype == torch.uint8 and layer.qweight.shape == (40, 160)
    assert layer.weight_scale.shape == (40, 5)
    assert layer.weight_codebook.shape == ((40, 16) if kmeans == "row" and codebook == "kmeans" else (1, 16))
    w = layer.dequantize()
    want = dequantize_codebook4(layer.qweight, layer.weight_codebook, layer.weight_scale, 64, 300)
    assert torch.allclose(w.double(), want, rtol=1e-6, atol=1e-9)
    if codebook == "nf4":  # NF4's ends are -1 and 1: each block's absmax is stored exactly
        blocks = torch.nn.functional.pad(lin.weight.detach(), (0, 20)).reshape(40, 5, 64)
        deq_blocks = torch.nn.functional.pad(w, (0, 20)).reshape(40, 5, 64)
        assert torch.allclose(deq_blocks.abs().amax(-1), blocks.abs().amax(-1), rtol=1e-6)
    x = torch.randn(5, 300, generator=gen(4))
    assert torch.allclose(layer(x), nn.functional.linear(x, w, lin.bias), rtol=1e-4, atol=1e-5)
    sqnr = 10 * torch.log10(lin.weight.pow(2).sum() / (lin.weight - w).pow(2).sum())
    assert sqnr > 19, sqnr


def test_kmeans_beats_nf4_on_the_weight_error():
    w = torch.randn(64, 1024, generator=gen(5)) * 0.02

    def mse(codebook, kmeans):
        d = dequantize_codebook4(*quantize_codebook4(w, 64, codebook, kmeans), 64, 1024)
        return (d - w.double()).square().sum()

    nf4, layer, row = mse("nf4", "layer"), mse("kmeans", "layer"), mse("kmeans", "row")
    assert layer < nf4 and row < layer, (nf4, layer, row)


def test_all_zero_block_and_short_last_block():
    w = torch.randn(4, 100, generator=gen(6))
    w[1, :64] = 0
    qweight, table, scale = quantize_codebook4(w, 64, "nf4")
    d = dequantize_codebook4(qweight, table, scale, 64, 100)
    assert torch.equal(d[1, :64], torch.zeros(64, dtype=torch.float64))
    assert scale.shape == (4, 2) and torch.isfinite(scale).all()


def test_config_validates():
    for kwargs, match in [({"group_size": 100}, "multiple of 32"), ({"codebook": "nf3"}, "codebook must be"),
                          ({"kmeans": "group"}, "kmeans must be"), ({"bits": 3}, "bits must be 4"),
                          ({"kmeans_iters": -1}, "kmeans_iters")]:
        with pytest.raises(ValueError, match=match):
            slimops.CodebookWeightOnlyConfig(**kwargs)


def _linear(k=300, n=40, bias=True, dtype=torch.float32):
    lin = nn.Linear(k, n, bias=bias, dtype=dtype)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02, generator=gen(3))
    return lin


@pytest.mark.parametrize("config", [
    slimops.CodebookWeightOnlyConfig(), slimops.CodebookWeightOnlyConfig(codebook="kmeans", kmeans="row"),
], ids=["nf4", "kmeans-row"])
def test_convert_save_load_round_trip_and_file_size(tmp_path, config):
    from safetensors.torch import save_file

    def model():
        torch.manual_seed(0)
        return nn.Sequential(_linear(1024, 512, dtype=torch.bfloat16), nn.ReLU(),
                             _linear(512, 1024, dtype=torch.bfloat16))

    float_model = model()
    bf16_path = tmp_path / "bf16.safetensors"
    save_file({k: v.contiguous() for k, v in float_model.state_dict().items()}, bf16_path)
    converted = slimops.convert(float_model, config)
    assert set(converted.slimops_summary.converted) == {"0", "2"}
    path = tmp_path / "codebook.safetensors"
    slimops.save(converted, path)
    # per weight: 4 bits + an fp32 scale per 64 inputs (+ 16 fp32 entries per row for "row") vs 16 bits:
    # 0.281x for NF4; 0.281x + 32 / K for "row", which is 0.33x at these small K (1024, 512) and 0.289x at
    # K = 4096. The safetensors header and the bias add under 1%.
    ratio = path.stat().st_size / bf16_path.stat().st_size
    expected = (512 * (1024 // 2 + 1024 // 64 * 4) + 1024 * (512 // 2 + 512 // 64 * 4)) / (2 * 2 * 512 * 1024)
    if config.kmeans == "row" and config.codebook == "kmeans":
        expected += 64 * (512 + 1024) / (2 * 2 * 512 * 1024)
    else:
        assert ratio <= 0.3, ratio
    assert expected <= ratio <= expected * 1.01 + 0.003, (ratio, expected)
    skeleton = slimops.convert(model(), dataclass_replace(config, kmeans_iters=0))
    slimops.load(path, skeleton)
    for name, t in converted.state_dict().items():
        assert torch.equal(skeleton.state_dict()[name], t), name
    x = torch.randn(3, 1024, dtype=torch.bfloat16)
    assert torch.equal(skeleton(x), converted(x))


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_compiled_module_matches_eager():
    layer = CodebookWeightOnlyLinear.from_float(_linear(), 64, "kmeans", "row")
    x = torch.randn(2, 7, 300, generator=gen(6))
    compiled = torch.compile(layer, fullgraph=True)
    assert torch.equal(compiled(x), layer(x))


def test_input_gradient_flows():
    layer = CodebookWeightOnlyLinear.from_float(_linear(), 64)
    x = torch.randn(4, 300, generator=gen(7), requires_grad=True)
    layer(x).sum().backward()
    want = layer.dequantize().sum(0).expand(4, 300)
    assert torch.allclose(x.grad, want, rtol=1e-5, atol=1e-6)
