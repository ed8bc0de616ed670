"""int8 Conv2d (``Int8DynamicConv2d``, ``Int8StaticConv2d``) and their conversion.

Each module is judged two ways: against an exact reference run on the module's own
int8 data (an integer convolution in float64, exact since every partial sum is an
integer below 2^53, then the fp32 epilogue), and against the float64 convolution by SQNR.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops.nn import Int8DynamicConv2d, Int8StaticConv2d, ObservedConv2d, WeightSpec
from slimops.nn.quantized_conv import DEPTHWISE_REASON
from slimops.reference import quantize as RQ


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return (10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())).item()


def gaussian_conv(cin, cout, k, seed=0, **kw) -> nn.Conv2d:
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, **kw)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / conv.weight[0].numel() ** 0.5)
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(cout, generator=g) * 0.1)
    return conv


def int_weight(m) -> torch.Tensor:
    """The stored int8 weight as [Cout, Cin, kh, kw] (it is kept as [Cout, kh*kw*Cin])."""
    kh, kw = m.kernel_size
    return m.qweight.reshape(m.out_channels, kh, kw, m.in_channels).permute(0, 3, 1, 2)


def exact_conv(m, q: torch.Tensor, a_scale: torch.Tensor, dtype) -> torch.Tensor:
    """int8 q [N, Cin, H, W] with one scale per image: the exact integer conv, then (acc * sa) * sw + b in fp32."""
    left, right, top, bottom = m.pad
    qp = F.pad(q.double(), (left, right, top, bottom))
    acc = F.conv2d(qp, int_weight(m).double(), None, m.stride, 0, m.dilation)  # exact integers
    out = acc.float() * a_scale.float().reshape(-1, 1, 1, 1) * m.weight_scale.reshape(1, -1, 1, 1)
    if m.bias is not None:
        out = out + m.bias.reshape(1, -1, 1, 1)
    return out.to(dtype)


def dynamic_reference(m: Int8DynamicConv2d, x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    if m._pointwise:  # one scale per pixel: each pixel's channels form a row
        xs = x[:, :, :: m.stride[0], :: m.stride[1]]
        rows = xs.permute(0, 2, 3, 1).reshape(-1, m.in_channels)
        q, s = RQ.quantize_per_token(rows)
        acc = q.long() @ m.qweight.long().t()
        out = acc.float() * s.reshape(-1, 1) * m.weight_scale.reshape(1, -1)
        if m.bias is not None:
            out = out + m.bias
        return out.to(x.dtype).reshape(n, xs.shape[2], xs.shape[3], -1).permute(0, 3, 1, 2)
    q, s = RQ.quantize_per_token(x.reshape(n, -1))  # one scale per image
    return exact_conv(m, q.reshape(x.shape), s.reshape(n), x.dtype)


GEOMETRIES = [
    # (cin, cout, kernel, kwargs)
    (5, 17, 3, dict(padding=1)),
    (17, 5, 3, dict(stride=2)),
    (1, 123, 3, dict(padding=1, bias=False)),
    (16, 8, 1, {}),
    (16, 8, 1, dict(stride=2)),
    (5, 17, 1, dict(padding=1)),  # 1x1 with padding: the general path
    (3, 7, (3, 5), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    (4, 6, 4, dict(padding="same")),  # asymmetric padding
    (8, 5, 7, dict(stride=2, padding=3)),  # a ResNet stem
]


@pytest.mark.parametrize("cin,cout,k,kw", GEOMETRIES)
@pytest.mark.parametrize("batch,h,w", [(1, 5, 17), (3, 17, 5)])
def test_dynamic_matches_the_exact_reference(cin, cout, k, kw, batch, h, w, poison_empty):
    conv = gaussian_conv(cin, cout, k, **kw)
    m = Int8DynamicConv2d.from_float(conv)
    x = torch.randn(batch, cin, h, w, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # padding='same' with an even kernel
        ref64 = conv.double()(x.double())
    out = m(x)
    assert out.shape == ref64.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, dynamic_reference(m, x), rtol=1e-5, atol=1e-5)
    assert sqnr_db(ref64, out) > 35


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw"])
def test_strided_inputs(layout):
    conv = gaussian_conv(6, 11, 3, padding=1)
    m = Int8DynamicConv2d.from_float(conv)
    base = torch.randn(2, 12, 9, 13, generator=torch.Generator().manual_seed(2))
    x = {
        "channels_last": base[:, :6].contiguous(memory_format=torch.channels_last),
        "sliced": base[:, ::2, :, 1:12],
        "transposed_hw": base[:, :6].transpose(2, 3),
    }[layout]
    assert not x.is_contiguous()
    torch.testing.assert_close(m(x), dynamic_reference(m, x.contiguous()), rtol=1e-5, atol=1e-5)
    m1 = Int8DynamicConv2d.from_float(gaussian_conv(6, 4, 1))
    torch.testing.assert_close(m1(x), dynamic_reference(m1, x.contiguous()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_input_dtypes(dtype):
    conv = gaussian_conv(5, 9, 3, padding=1)
    m = Int8DynamicConv2d.from_float(conv)
    x = torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(3))
    out = m(x.to(dtype))
    assert out.dtype == dtype
    assert sqnr_db(conv.double()(x.double()), out) > 30


def test_a_nonfinite_image_comes_out_nan_and_the_others_do_not():
    m = Int8DynamicConv2d.from_float(gaussian_conv(4, 6, 3, padding=1))
    x = torch.randn(3, 4, 6, 6)
    x[1, 2, 3, 3] = float("nan")
    out = m(x)
    assert out[1].isnan().all()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()


def test_weight_is_a_description_and_dequantize_gives_the_float_weight():
    conv = gaussian_conv(5, 7, (3, 2))
    m = Int8DynamicConv2d.from_float(conv)
    assert isinstance(m.weight, WeightSpec)
    assert m.weight.shape == conv.weight.shape and m.weight.dtype == torch.float32
    assert m.weight.device == conv.weight.device
    with pytest.raises(TypeError, match="cannot compute with a WeightSpec"):
        F.conv2d(torch.randn(1, 5, 4, 4), m.weight)
    w = m.dequantize()
    assert w.shape == conv.weight.shape
    assert sqnr_db(conv.weight.detach(), w) > 38
    # The stored data: int8 [Cout, kh*kw*Cin], fp32 scales, fp32 bias, no float weight.
    assert set(m.state_dict()) == {"qweight", "weight_scale", "bias"}
    assert m.qweight.dtype == torch.int8 and m.qweight.shape == (7, 3 * 2 * 5)


def test_bad_inputs_are_refused_clearly():
    m = Int8DynamicConv2d.from_float(gaussian_conv(5, 7, 3))
    with pytest.raises(ValueError, match=r"input must be \[N, 5, H, W\], got shape \[2, 4, 8, 8\]"):
        m(torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"input must be \[N, 5, H, W\], got shape \[5, 8, 8\]"):
        m(torch.randn(5, 8, 8))
    with pytest.raises(ValueError, match=r"input 2x8 is smaller than the kernel \(3, 3\)"):
        m(torch.randn(1, 5, 2, 8))
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16"):
        m(torch.ones(1, 5, 8, 8, dtype=torch.int32))


@pytest.mark.parametrize(
    "conv,why",
    [
        (nn.Conv2d(8, 8, 3, groups=8), "depthwise convolution"),
        (nn.Conv2d(8, 16, 3, groups=4), r"grouped convolution \(groups=4\)"),
        (nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
        (nn.Conv2d(4, 8, 3).double(), "weight dtype torch.float64"),
    ],
)
def test_convert_leaves_what_it_cannot_quantize_and_says_why(conv, why):
    model = nn.Sequential(conv)
    before = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slimops.convert(model, slimops.Int8DynamicConfig())
    assert type(model[0]) is nn.Conv2d
    assert torch.equal(model[0].weight, before[0].weight)
    import re

    assert re.search(why, model.slimops_summary.skipped["0"])


def test_the_depthwise_reason_names_the_measurement():
    assert "bench/results/conv-half-cpu" in DEPTHWISE_REASON


def small_cnn(seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, groups=16, padding=1), nn.ReLU(),  # depthwise: stays float
        nn.Conv2d(16, 32, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    ).eval()


def test_convert_a_cnn_dynamic():
    model = small_cnn()
    ref = copy.deepcopy(model)
    slimops.convert(model, slimops.Int8DynamicConfig())
    s = model.slimops_summary
    assert s.converted == {
        "0": "Conv2d -> Int8DynamicConv2d",
        "5": "Conv2d -> Int8DynamicConv2d",
        "7": "Conv2d -> Int8DynamicConv2d",
        "10": "Linear -> Int8DynamicLinear",
    }
    assert s.skipped == {"3": DEPTHWISE_REASON}
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert sqnr_db(ref.double()(x.double()), model(x)) > 30


def calibrate(model, batches):
    with torch.no_grad():
        for x in batches:
            model(x)


def test_static_prepare_calibrate_convert():
    model = small_cnn()
    ref = copy.deepcopy(model)
    config = slimops.Int8StaticConfig()
    slimops.prepare(model, config)
    assert isinstance(model[0], ObservedConv2d) and isinstance(model[7], ObservedConv2d)
    assert type(model[3]) is nn.Conv2d  # depthwise: not observed
    g = torch.Generator().manual_seed(5)
    batches = [torch.rand(4, 3, 8, 8, generator=g) for _ in range(3)]
    calibrate(model, batches)
    slimops.convert(model, config)
    assert isinstance(model[0], Int8StaticConv2d) and isinstance(model[7], Int8StaticConv2d)
    x = batches[0]
    with torch.no_grad():
        assert sqnr_db(ref.double()(x.double()), model(x)) > 30
    # The wiring: the layer's output equals the exact reference on its own data.
    m = model[7]
    h = torch.rand(2, 32, 9, 7, generator=g) * 2
    q = torch.round(h / m.input_scale).clamp(-127, 127).to(torch.int8)
    torch.testing.assert_close(m(h), exact_conv(m, q, m.input_scale.expand(2), h.dtype), rtol=1e-5, atol=1e-5)


def test_observed_conv_shares_the_parameters_and_state_dict_keys():
    conv = gaussian_conv(3, 4, 3)
    obs = ObservedConv2d.from_float(conv, slimops.MinMaxObserver())
    assert obs.weight is conv.weight and obs.bias is conv.bias
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(obs(x), conv(x))
    assert int(obs.observer.num_batches) == 1
    assert obs.observer.max_val == x.max()
    assert {"weight", "bias"} <= set(obs.state_dict())


def test_static_saturates_beyond_the_calibrated_range():
    conv = gaussian_conv(2, 3, 1)
    m = Int8StaticConv2d.from_float(conv, 1.0 / 127)  # amax 1
    x = torch.full((1, 2, 3, 3), 5.0)
    q = torch.full((1, 2, 3, 3), 127, dtype=torch.int8)
    torch.testing.assert_close(m(x), exact_conv(m, q, m.input_scale.expand(1), x.dtype))
    with pytest.raises(ValueError, match="input_scale must be positive and finite"):
        Int8StaticConv2d.from_float(conv, 0.0)


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_save_load_round_trip(kind, tmp_path):
    def build():
        model = small_cnn(seed=1)
        if kind == "dynamic":
            return slimops.convert(model, slimops.Int8DynamicConfig())
        config = slimops.Int8StaticConfig()
        slimops.prepare(model, config)
        calibrate(model, [torch.rand(2, 3, 8, 8)])
        return slimops.convert(model, config)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build()
        slimops.save(model, tmp_path / "m.safetensors")
        skeleton = small_cnn(seed=2)  # other float values: the file overwrites them
        if kind == "dynamic":
            slimops.convert(skeleton, slimops.Int8DynamicConfig())
        else:
            config = slimops.Int8StaticConfig()
            slimops.prepare(skeleton, config)
            calibrate(skeleton, [torch.rand(2, 3, 8, 8) * 3])
            slimops.convert(skeleton, config)
    slimops.load(tmp_path / "m.safetensors", skeleton)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), skeleton(x))


def test_compile_fullgraph_matches_eager():
    model = slimops.convert(small_cnn(), slimops.Int8DynamicConfig())
    x = torch.rand(2, 3, 8, 8)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_compiled_backward_matches_eager():
    model = slimops.convert(small_cnn(), slimops.Int8DynamicConfig())
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    model(x).sum().backward()
    want, x.grad = x.grad.clone(), None
    torch.compile(model, fullgraph=True)(x).sum().backward()
    torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=1e-5)


def test_module_casts_keep_the_int8_format():
    m = Int8DynamicConv2d.from_float(gaussian_conv(3, 5, 3))
    m.half()
    assert m.qweight.dtype == torch.int8 and m.weight_scale.dtype == torch.float32
    assert m.weight.dtype == torch.float16
    assert m(torch.randn(1, 3, 6, 6, dtype=torch.float16)).dtype == torch.float16


def test_transformers_resnet_converts_every_conv():
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck"
    )
    torch.manual_seed(0)
    model = transformers.ResNetModel(config).eval()
    ref = copy.deepcopy(model)
    slimops.convert(model, slimops.Int8DynamicConfig())
    convs = [n for n, m in ref.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(model.slimops_summary.converted) == sorted(convs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, want = model(x).last_hidden_state, ref(x).last_hidden_state
    assert sqnr_db(want, out) > 25


@pytest.mark.parametrize("kind", ["dynamic", "dynamic_1x1", "static"])
def test_input_gradient_is_that_of_the_dequantized_float_conv(kind):
    kw = dict(stride=2) if kind == "dynamic_1x1" else dict(stride=2, padding=1, dilation=(1, 2))
    conv = gaussian_conv(5, 7, 1 if kind == "dynamic_1x1" else 3, **kw)
    m = Int8StaticConv2d.from_float(conv, 0.03) if kind == "static" else Int8DynamicConv2d.from_float(conv)
    x = torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(7), requires_grad=True)
    out = m(x)
    with torch.no_grad():
        assert torch.equal(out, m(x))  # the gradient path does not change the value
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(8))
    (gx,) = torch.autograd.grad(out, x, dy)
    x2 = x.detach().clone().requires_grad_(True)
    ref = F.conv2d(x2, m.dequantize(), None, conv.stride, conv.padding, conv.dilation)
    (want,) = torch.autograd.grad(ref, x2, dy)
    torch.testing.assert_close(gx, want, rtol=1e-5, atol=1e-5)
