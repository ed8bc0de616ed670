"""Quantized linear modules, their configs, observers and the static (prepare / calibrate / convert) flow.

Each module is judged two ways: against the float ``nn.Linear`` by SQNR (the
quantization error), and against the pure-PyTorch reference run on the
module's own buffers (the wiring: the op gets the right tensors).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimops
from slimops.conversion import Unsupported
from slimops.nn import (
    Fp8DynamicLinear,
    Int8DynamicLinear,
    Int8StaticLinear,
    Int8WeightOnlyLinear,
    ObservedLinear,
)
from slimops.quant import MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver
from slimops.reference import quant_mm as R
from slimops.reference import quantize as RQ


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return (10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())).item()


def gaussian_linear(k: int, n: int, bias: bool = True, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin


def calibrated_static(lin: nn.Linear, k: int, observer=None) -> Int8StaticLinear:
    obs = ObservedLinear.from_float(lin, observer or MinMaxObserver())
    g = torch.Generator().manual_seed(123)
    for _ in range(4):
        obs(torch.randn(64, k, generator=g))
    return Int8StaticLinear.from_float(lin, obs.observer.scale())


def static_reference(m: Int8StaticLinear, x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, m.in_features).float()
    q = torch.round(x2 / m.input_scale).clamp(-127, 127).to(torch.int8)
    a_scale = m.input_scale.expand(x2.shape[0])
    out = R.int8_mm(q, m.qweight, a_scale, m.weight_scale, m.bias, x.dtype)
    return out.reshape(*x.shape[:-1], m.out_features)


def build(kind: str, lin: nn.Linear) -> nn.Module:
    if kind == "int8_dynamic":
        return Int8DynamicLinear.from_float(lin)
    if kind == "int8_weight_only":
        return Int8WeightOnlyLinear.from_float(lin)
    if kind == "int8_weight_only_g32":
        return Int8WeightOnlyLinear.from_float(lin, group_size=32)
    if kind == "fp8_dynamic":
        return Fp8DynamicLinear.from_float(lin)
    if kind == "int8_static":
        return calibrated_static(lin, lin.in_features)
    raise AssertionError(kind)


def reference(kind: str, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's output computed by the references from its own buffers."""
    if kind == "int8_dynamic":
        return R.int8_dynamic_linear(x, m.qweight, m.weight_scale, m.bias)
    if kind.startswith("int8_weight_only"):
        return R.weight_int8_linear(x, m.qweight, m.weight_scale, m.bias)
    if kind == "fp8_dynamic":
        xp = torch.nn.functional.pad(x, (0, m.qweight.shape[1] - m.in_features))
        return R.fp8_dynamic_linear(xp, m.qweight, m.weight_scale, m.bias)[..., : m.out_features]
    if kind == "int8_static":
        return static_reference(m, x)
    raise AssertionError(kind)


# Minimum SQNR (dB) against the float layer, Gaussian weights and activations.
MIN_SQNR = {
    "int8_weight_only": 35.0,
    "int8_weight_only_g32": 35.0,
    "int8_dynamic": 28.0,
    "int8_static": 30.0,  # one per-tensor activation scale, calibrated on the same distribution
    "fp8_dynamic": 25.0,  # e4m3 keeps 3 mantissa bits
}
KINDS = list(MIN_SQNR)
K = 96


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [17, 123])
@pytest.mark.parametrize("m", range(1, 18))
def test_module_matches_float_linear_and_reference(kind, n, m):
    lin = gaussian_linear(K, n, seed=n)
    q = build(kind, lin)
    x = torch.randn(m, K, generator=torch.Generator().manual_seed(m))
    want = lin(x).detach()
    got = q(x)
    assert got.shape == (m, n) and got.dtype == x.dtype
    assert sqnr_db(want, got) >= MIN_SQNR[kind]
    ref = reference(kind, q, x)
    # fp8_dynamic_linear writes the GEMM result in bf16 (cuBLAS rowwise scaling): 2^-8 relative.
    rtol = 2**-7 if kind == "fp8_dynamic" else 1e-5
    torch.testing.assert_close(got, ref, rtol=rtol, atol=rtol * ref.abs().max().item())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_3d_and_strided_inputs(kind, bias):
    lin = gaussian_linear(K, 123, bias=bias)
    q = build(kind, lin)
    assert (q.bias is None) == (not bias)
    g = torch.Generator().manual_seed(1)
    inputs = {
        "3d": torch.randn(3, 5, K, generator=g),
        "transposed": torch.randn(K, 7, generator=g).t(),  # strides (1, 7)
        "3d_permuted": torch.randn(K, 3, 4, generator=g).permute(1, 2, 0),
        "sliced": torch.randn(9, 2 * K, generator=g)[:, ::2],
    }
    for name, x in inputs.items():
        got = q(x)
        assert got.shape == (*x.shape[:-1], 123), name
        assert sqnr_db(lin(x).detach(), got) >= MIN_SQNR[kind], name
        torch.testing.assert_close(got, q(x.contiguous()), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(kind, dtype):
    lin = gaussian_linear(K, 123)
    q = build(kind, lin)
    x = torch.randn(3, 5, K).to(dtype)
    got = q(x)
    assert got.dtype == dtype and got.shape == (3, 5, 123)
    assert sqnr_db(lin(x.float()).detach(), got) >= MIN_SQNR[kind] - 1


@pytest.mark.parametrize("kind", KINDS)
def test_1d_and_empty_inputs(kind):
    lin = gaussian_linear(K, 17)
    q = build(kind, lin)
    x = torch.randn(K)
    assert sqnr_db(lin(x).detach(), q(x)) >= MIN_SQNR[kind]
    assert q(torch.randn(0, K)).shape == (0, 17)
    assert q(torch.randn(2, 0, K)).shape == (2, 0, 17)


@pytest.mark.parametrize("kind", KINDS)
def test_weights_are_quantized_buffers(kind):
    q = build(kind, gaussian_linear(K, 17))
    assert list(q.parameters()) == []
    sd = q.state_dict()
    want_weight = torch.float8_e4m3fn if kind == "fp8_dynamic" else torch.int8
    assert sd["qweight"].dtype == want_weight
    assert sd["weight_scale"].dtype == torch.float32 and sd["bias"].dtype == torch.float32
    assert (q.in_features, q.out_features) == (K, 17)
    assert f"in_features={K}, out_features=17" in repr(q)
    if kind == "int8_static":
        assert sd["input_scale"].dtype == torch.float32 and sd["input_scale"].shape == ()


def test_weight_scale_shapes():
    lin = gaussian_linear(K, 17)
    assert Int8DynamicLinear.from_float(lin).weight_scale.shape == (17, 1)
    assert Int8WeightOnlyLinear.from_float(lin).weight_scale.shape == (17, 1)
    grouped = Int8WeightOnlyLinear.from_float(lin, group_size=32)
    assert grouped.weight_scale.shape == (17, 3) and "group_size=32" in repr(grouped)
    # Each group is quantized on its own: its amax maps to +-127.
    w = lin.weight.detach().reshape(17, 3, 32)
    torch.testing.assert_close(grouped.weight_scale, w.abs().amax(-1) / 127, rtol=1e-6, atol=0)
    assert (grouped.qweight.reshape(17, 3, 32).abs().amax(-1) == 127).all()
    assert Int8WeightOnlyLinear.from_float(lin, group_size=K).weight_scale.shape == (17, 1)


@pytest.mark.parametrize("k,n", [(40, 17), (64, 32), (64, 17), (40, 32)])
def test_fp8_pads_unaligned_shapes_once(k, n):
    lin = gaussian_linear(k, n)
    q = Fp8DynamicLinear.from_float(lin)
    k_pad, n_pad = -(-k // 16) * 16, -(-n // 16) * 16
    assert q.qweight.shape == (n_pad, k_pad) and q.weight_scale.shape == (n_pad, 1) and q.bias.shape == (n_pad,)
    assert (q.in_features, q.out_features) == (k, n)
    assert (q.qweight[n:].float() == 0).all() and (q.qweight[:, k:].float() == 0).all()
    x = torch.randn(5, 3, k)
    got = q(x)
    assert got.shape == (5, 3, n)
    assert sqnr_db(lin(x).detach(), got) >= MIN_SQNR["fp8_dynamic"]


def test_int8_weight_only_is_more_accurate_grouped_on_outlier_weights():
    lin = gaussian_linear(128, 64)
    with torch.no_grad():
        lin.weight[:, 5] *= 50  # one outlier input column
    x = torch.randn(16, 128)
    want = lin(x).detach()
    per_channel = sqnr_db(want, Int8WeightOnlyLinear.from_float(lin)(x))
    grouped = sqnr_db(want, Int8WeightOnlyLinear.from_float(lin, group_size=32)(x))
    assert grouped > per_channel + 3


# --------------------------------------------------------------------------- refusals


def refused_linears():
    int_weight = nn.Linear(8, 4)
    int_weight.weight = nn.Parameter(torch.zeros(4, 8, dtype=torch.int8), requires_grad=False)

    class Custom(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    nan_weight = nn.Linear(8, 4)
    with torch.no_grad():
        nan_weight.weight[1, 2] = float("nan")
    inf_weight = nn.Linear(8, 4)
    with torch.no_grad():
        inf_weight.weight[0, 0] = float("inf")
    return {
        "weight dtype torch.int8: slimops kernels take": int_weight,
        "MultiheadAttention": nn.modules.linear.NonDynamicallyQuantizableLinear(8, 4),
        "overrides nn.Linear.forward": Custom(8, 4),
        "inf or NaN": nan_weight,
        "inf or NaN ": inf_weight,
    }


@pytest.mark.parametrize("build_fn", [
    Int8DynamicLinear.from_float,
    Int8WeightOnlyLinear.from_float,
    lambda lin: Int8WeightOnlyLinear.from_float(lin, group_size=4),
    Fp8DynamicLinear.from_float,
    lambda lin: Int8StaticLinear.from_float(lin, 0.1),
    lambda lin: ObservedLinear.from_float(lin, MinMaxObserver()),
], ids=["int8_dynamic", "weight_only", "weight_only_g4", "fp8", "static", "observed"])
def test_from_float_refuses(build_fn):
    for why, lin in refused_linears().items():
        with pytest.raises(Unsupported, match=why.strip()):
            build_fn(lin)


def test_non_finite_weight_scales_are_refused(monkeypatch):
    def inf_scales(x, axis, symmetric=True):
        q, s, z = RQ.quantize_per_channel(x, axis, symmetric)
        return q, torch.full_like(s, float("inf")), z

    monkeypatch.setattr(slimops.ops, "quantize_per_channel", inf_scales)
    with pytest.raises(Unsupported, match="weight scales are not finite"):
        Int8DynamicLinear.from_float(gaussian_linear(8, 4))


def test_convert_skips_refused_layers_with_reason():
    model = nn.Sequential(nn.Linear(32, 32), refused_linears()["inf or NaN"])
    slimops.convert(model, slimops.Int8DynamicConfig())
    assert isinstance(model[0], Int8DynamicLinear) and type(model[1]) is nn.Linear
    assert "inf or NaN" in model.slimops_summary.skipped["1"]


def test_half_layers_convert_and_float64_is_refused():
    # A float64 layer would convert, then fail at its first (float64) call: refused up front.
    with pytest.raises(Unsupported, match="float64"):
        Int8DynamicLinear.from_float(gaussian_linear(64, 32).double())
    for dtype in (torch.float16, torch.bfloat16):
        lin = gaussian_linear(64, 32).to(dtype)
        q = Int8DynamicLinear.from_float(lin)
        assert q.qweight.dtype == torch.int8 and q.weight_scale.dtype == torch.float32
        x = torch.randn(4, 64)
        assert sqnr_db(lin.float()(x).detach(), q(x)) >= MIN_SQNR["int8_dynamic"]


def test_to_dtype_keeps_the_format_and_sets_the_compute_dtype():
    model = nn.Sequential(gaussian_linear(64, 32), nn.ReLU(), gaussian_linear(32, 16))
    fp8 = slimops.convert(copy.deepcopy(model), slimops.Fp8DynamicConfig()).to(torch.bfloat16)
    assert fp8[0].qweight.dtype == torch.float8_e4m3fn and fp8[0].weight_scale.dtype == torch.float32
    assert fp8[0].bias.dtype == torch.float32  # added in the kernels' fp32 epilogue
    assert fp8[0].weight.dtype == torch.bfloat16  # what model code casts its inputs to
    static = slimops.prepare(copy.deepcopy(model), slimops.Int8StaticConfig())
    static(torch.randn(8, 64))
    static = slimops.convert(static, slimops.Int8StaticConfig()).half()
    assert static[0].input_scale.dtype == torch.float32 and static[0].qweight.dtype == torch.int8
    assert static[0].weight.dtype == torch.float16
    for q, dtype in ((fp8, torch.bfloat16), (static, torch.float16)):
        x = torch.randn(4, 64)
        y = q(x.to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()


@pytest.mark.parametrize("kind", ["int8_dynamic", "int8_weight_only", "fp8_dynamic", "int8_static"])
def test_double_computes_in_float32_and_returns_float64(kind):
    # No kernel computes in float64: a .double() model runs its quantized layers in fp32
    # (their quantization error dwarfs fp32 rounding) and keeps float64 between them.
    model = nn.Sequential(gaussian_linear(48, 40), nn.ReLU(), gaussian_linear(40, 24))
    config = {
        "int8_dynamic": slimops.Int8DynamicConfig(),
        "int8_weight_only": slimops.Int8WeightOnlyConfig(),
        "fp8_dynamic": slimops.Fp8DynamicConfig(),
        "int8_static": slimops.Int8StaticConfig(),
    }[kind]
    if kind == "int8_static":
        slimops.prepare(model, config)
        model(torch.randn(16, 48))
    q = slimops.convert(model, config)
    x = torch.randn(5, 48)
    want = q(x)
    q.double()
    assert q[0].weight.dtype == torch.float64 and q[0].bias.dtype == torch.float32
    got = q(x.double())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want.double(), rtol=0, atol=0)


# --------------------------------------------------------------------------- convert + configs


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = gaussian_linear(64, 128, seed=1)
        self.act = nn.GELU()
        self.down = gaussian_linear(128, 64, bias=False, seed=2)

    def forward(self, x):
        return x + self.down(self.act(self.up(x)))


def make_model() -> nn.Sequential:
    return nn.Sequential(Block(), nn.LayerNorm(64), gaussian_linear(64, 10, seed=3))


CONFIG_MODULES = [
    (slimops.Int8DynamicConfig(), Int8DynamicLinear),
    (slimops.Int8WeightOnlyConfig(), Int8WeightOnlyLinear),
    (slimops.Int8WeightOnlyConfig(group_size=32), Int8WeightOnlyLinear),
    (slimops.Fp8DynamicConfig(), Fp8DynamicLinear),
]


@pytest.mark.parametrize("config,cls", CONFIG_MODULES, ids=lambda v: repr(v))
def test_convert_swaps_every_linear(config, cls):
    model = make_model().requires_grad_(False)
    x = torch.randn(2, 5, 64)
    want = model(x)
    assert slimops.convert(model, config) is model
    assert all(isinstance(m, cls) for m in (model[0].up, model[0].down, model[2]))
    assert set(model.slimops_summary.converted) == {"0.up", "0.down", "2"}
    assert isinstance(model[1], nn.LayerNorm)
    assert sqnr_db(want, model(x)) >= 25


@pytest.mark.parametrize("kind", KINDS)
def test_input_requiring_grad(kind):
    # Inference in a model that still has trainable layers before this one (no torch.no_grad()).
    q = build(kind, gaussian_linear(K, 17))
    x = torch.randn(4, K, requires_grad=True)
    torch.testing.assert_close(q(x), q(x.detach()))


def test_convert_respects_filter_fn():
    model = make_model()
    slimops.convert(model, slimops.Int8DynamicConfig(), filter_fn=lambda m, fqn: fqn.startswith("0."))
    assert isinstance(model[0].up, Int8DynamicLinear) and isinstance(model[0].down, Int8DynamicLinear)
    assert type(model[2]) is nn.Linear
    model = make_model()
    slimops.convert(model, slimops.Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: m.out_features == 10)
    assert type(model[0].up) is nn.Linear and isinstance(model[2], Int8WeightOnlyLinear)


def test_bad_configs_name_the_argument():
    for bad in (0, -32, 1.5, True, "32"):
        with pytest.raises(ValueError, match="group_size must be None or a positive int"):
            slimops.Int8WeightOnlyConfig(group_size=bad)
    for bad in (-0.1, 0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="momentum must be in \\(0, 1\\]"):
            MovingAverageMinMaxObserver(momentum=bad)
    for bad in (0, -1, 100.5, float("nan")):
        with pytest.raises(ValueError, match="p must be in \\(0, 100\\]"):
            PercentileObserver(p=bad)
    with pytest.raises(TypeError, match="observer must be a slimops observer"):
        slimops.Int8StaticConfig(observer="minmax")
    with pytest.raises(TypeError, match="must be an Int8StaticConfig"):
        slimops.prepare(make_model(), slimops.Int8DynamicConfig())


def test_group_size_not_dividing_k_fails_and_leaves_model_unchanged():
    model = make_model()  # in_features 64, 128, 64
    with pytest.raises(ValueError, match="group_size=48 .* in_features K=64"):
        slimops.convert(model, slimops.Int8WeightOnlyConfig(group_size=48))
    assert type(model[0].up) is nn.Linear and type(model[2]) is nn.Linear
    with pytest.raises(ValueError, match="group_size=48"):
        Int8WeightOnlyLinear.from_float(gaussian_linear(64, 8), group_size=48)


# --------------------------------------------------------------------------- static flow + observers

OBSERVERS = [MinMaxObserver(), MovingAverageMinMaxObserver(momentum=0.1), PercentileObserver(p=99.99)]


@pytest.mark.parametrize("observer", OBSERVERS, ids=lambda o: type(o).__name__)
def test_static_flow(observer):
    model = make_model()
    x = torch.randn(4, 8, 64, generator=torch.Generator().manual_seed(5))
    want = model(x).detach()
    keys = set(model.state_dict())
    config = slimops.Int8StaticConfig(observer=observer)
    slimops.prepare(model, config)
    assert all(isinstance(m, ObservedLinear) for m in (model[0].up, model[0].down, model[2]))
    # Each layer observes with its own copy; the config's observer stays a template.
    assert model[0].up.observer is not observer and model[0].up.observer is not model[2].observer
    assert {k for k in model.state_dict() if ".observer." not in k} == keys
    torch.testing.assert_close(model(x), want)  # observing does not change the float result
    g = torch.Generator().manual_seed(6)
    for _ in range(8):
        model(torch.randn(4, 8, 64, generator=g))
    assert int(observer.num_batches) == 0
    assert int(model[0].up.observer.num_batches) == 9
    slimops.convert(model, config)
    assert all(isinstance(m, Int8StaticLinear) for m in (model[0].up, model[0].down, model[2]))
    assert set(model.slimops_summary.converted) == {"0.up", "0.down", "2"}
    assert sqnr_db(want, model(x)) >= 25


def test_static_prepare_respects_filter_fn_and_convert_without_prepare_warns():
    model = make_model()
    slimops.prepare(model, slimops.Int8StaticConfig(), filter_fn=lambda m, fqn: fqn == "2")
    assert type(model[0].up) is nn.Linear and isinstance(model[2], ObservedLinear)
    model(torch.randn(3, 64))
    slimops.convert(model, slimops.Int8StaticConfig())
    assert type(model[0].up) is nn.Linear and isinstance(model[2], Int8StaticLinear)
    with pytest.warns(UserWarning, match="Int8StaticConfig selected no module"):
        slimops.convert(make_model(), slimops.Int8StaticConfig())


def test_static_convert_without_calibration_is_an_error():
    model = slimops.prepare(make_model(), slimops.Int8StaticConfig())
    with pytest.raises(ValueError, match="saw no data: run calibration batches"):
        slimops.convert(model, slimops.Int8StaticConfig())
    assert isinstance(model[2], ObservedLinear)  # nothing was swapped


def test_int8_static_linear_semantics():
    lin = gaussian_linear(32, 17)
    q = Int8StaticLinear.from_float(lin, 0.02)  # range +-2.54: larger inputs saturate
    x = torch.randn(6, 32) * 3
    x[2, 4] = float("nan")
    x[3, 0] = float("inf")
    got = q(x)
    assert torch.isnan(got[2]).all() and torch.isnan(got[3]).all()
    ok = [0, 1, 4, 5]
    torch.testing.assert_close(got[ok], static_reference(q, x[ok]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="input_scale must be positive and finite"):
        Int8StaticLinear.from_float(lin, 0.0)
    with pytest.raises(ValueError, match="input_scale must be positive and finite"):
        Int8StaticLinear.from_float(lin, float("inf"))


def test_min_max_observers():
    obs = MinMaxObserver()
    obs(torch.tensor([[-3.0, 1.0], [0.5, 2.0]]))
    obs(torch.tensor([1.0, 5.0]))
    obs(torch.empty(0, 2))  # ignored
    assert int(obs.num_batches) == 2
    assert obs.scale().item() == pytest.approx(5.0 / 127)
    obs.reset()
    with pytest.raises(ValueError, match="saw no data"):
        obs.scale()
    obs(torch.zeros(4))
    assert obs.scale().item() == 1.0  # only zeros seen: as the quantizers do
    obs(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="inf or NaN"):
        obs.scale()

    ema = MovingAverageMinMaxObserver(momentum=0.25)
    ema(torch.tensor([-4.0, 4.0]))  # the first batch sets the range
    ema(torch.tensor([-8.0, 0.0]))
    assert ema.min_val.item() == pytest.approx(-5.0) and ema.max_val.item() == pytest.approx(3.0)
    assert ema.scale().item() == pytest.approx(5.0 / 127)
    assert "momentum=0.25" in repr(ema)


def test_percentile_observer():
    x = torch.randn(1000, 100, generator=torch.Generator().manual_seed(0))
    exact = torch.quantile(x.abs().reshape(-1)[: 1 << 24], 0.999).item()
    obs = PercentileObserver(p=99.9, max_samples=1 << 16)
    obs(x)
    assert obs.scale().item() * 127 == pytest.approx(exact, rel=0.05)  # sampled estimate
    full = PercentileObserver(p=100)
    full(x[:10])
    full(x[10:20] * 2)
    want = (x[:10].abs().max() + 2 * x[10:20].abs().max()) / 2  # mean of the per-batch values
    assert full.scale().item() * 127 == pytest.approx(want.item(), rel=1e-6)
    # Reproducible: the same batches give the same scale.
    again = PercentileObserver(p=99.9, max_samples=1 << 16)
    again(x)
    assert again.scale().item() == obs.scale().item()


# --------------------------------------------------------------------------- torch.compile


def static_model():
    model = slimops.prepare(make_model(), slimops.Int8StaticConfig())
    model(torch.randn(16, 64, generator=torch.Generator().manual_seed(9)))
    return slimops.convert(model, slimops.Int8StaticConfig())


@pytest.mark.parametrize("make", [
    lambda: slimops.convert(make_model(), slimops.Int8DynamicConfig()),
    lambda: slimops.convert(make_model(), slimops.Int8WeightOnlyConfig(group_size=32)),
    lambda: slimops.convert(make_model(), slimops.Fp8DynamicConfig()),
    static_model,
], ids=["int8_dynamic", "int8_weight_only_g32", "fp8_dynamic", "int8_static"])
def test_converted_model_compiles_fullgraph(make):
    torch._dynamo.reset()
    model = make()
    x = torch.randn(2, 3, 64)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():  # inference: the quantized ops have no backward
        torch.testing.assert_close(compiled(x), model(x))


def test_fp8_unaligned_compiles_fullgraph():
    torch._dynamo.reset()
    model = slimops.convert(nn.Sequential(gaussian_linear(40, 17), nn.ReLU(), gaussian_linear(17, 9)),
                            slimops.Fp8DynamicConfig())
    x = torch.randn(5, 40)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))
