"""slimops.nn.routing: a converted layer takes the path its rules name for M rows, and each
path computes the same layer.

The shipped rules are for CUDA (from H200 measurements); here they are exercised with
the same rules moved to the CPU (``routing.rules``), where every path also runs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops.nn import routing
from slimops.nn.routing import Rule

ROOT = Path(__file__).resolve().parents[2]


def _layer(config, k=48, n=40, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    return lin, slimops.convert(nn.Sequential(copy.deepcopy(lin)), config)[0]


def _x(m, k=48, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g) * torch.exp(torch.randn(m, 1, generator=g))).to(dtype)


def test_the_shipped_rules_cite_committed_measurements_and_name_real_paths():
    layers = {"Int8DynamicLinear": slimops.nn.Int8DynamicLinear, "Int8WeightOnlyLinear": slimops.nn.Int8WeightOnlyLinear,
              "Fp8DynamicLinear": slimops.nn.Fp8DynamicLinear, "Sparse24Int8Linear": slimops.nn.Sparse24Int8Linear}
    assert routing.RULES
    for rule in routing.RULES:
        cited = rule.source.split(":")[0]
        assert (ROOT / cited).is_file(), f"{rule} cites {cited}, which is not committed"
        cls = layers[rule.layer.split("/")[0]]
        assert rule.path == "kernel" or hasattr(cls, f"_linear_{rule.path}"), rule
    # no two rules of one layer and device overlap
    for a in routing.RULES:
        for b in routing.RULES:
            if a is not b and (a.layer, a.device) == (b.layer, b.device):
                hi_a = a.max_m if a.max_m is not None else 1 << 62
                hi_b = b.max_m if b.max_m is not None else 1 << 62
                assert hi_a < b.min_m or hi_b < a.min_m, (a, b)


def test_no_shipped_rule_applies_on_the_cpu():
    _, q = _layer(slimops.Int8DynamicConfig())
    x = _x(5)
    assert routing.path_for(q.route_name, "cpu", 5) == "kernel"
    assert torch.equal(q(x), slimops.ops.int8_dynamic_linear(x, q.qweight, q.weight_scale, q.bias))


def test_w8a16_route_runs_the_weight_only_kernel_up_to_its_bound():
    _, q = _layer(slimops.Int8DynamicConfig())
    with routing.rules([Rule("Int8DynamicLinear", "cpu", 1, 16, "w8a16", "test")]):
        for m in (1, 5, 16):
            x = _x(m)
            got = q(x)
            assert torch.equal(got, slimops.ops.weight_int8_linear(x, q.qweight, q.weight_scale, q.bias))
            # the W8A8 kernel rounds the activation: a different answer, so the route is really taken
            assert not torch.equal(got, slimops.ops.int8_dynamic_linear(x, q.qweight, q.weight_scale, q.bias))
        x = _x(17)
        assert torch.equal(q(x), slimops.ops.int8_dynamic_linear(x, q.qweight, q.weight_scale, q.bias))
    x = _x(5)  # the block ended: back to the shipped rules
    assert torch.equal(q(x), slimops.ops.int8_dynamic_linear(x, q.qweight, q.weight_scale, q.bias))


@pytest.mark.parametrize("config, name", [
    (slimops.Int8WeightOnlyConfig(), "Int8WeightOnlyLinear"),
    (slimops.Fp8DynamicConfig(), "Fp8DynamicLinear"),  # padded to multiples of 16 inside: 48 -> 40 is not
    (slimops.Int8DynamicConfig(), "Int8DynamicLinear"),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_route_is_the_dense_gemm_on_the_dequantized_weight(config, name, dtype):
    lin, q = _layer(config)
    x = _x(7, dtype=dtype)
    with routing.rules([Rule(name, "cpu", 1, None, "dequantize", "test")]):
        got = q(x)
    xf = x.float()
    want = F.linear(xf, q.dequantize().float(), q.bias[: q.out_features].float())
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=1e-6, atol=1e-6)
    # and it is the same layer: no further from the float layer than the kernel path (which
    # also rounds the activation, for the W8A8 configs)
    ref = lin(x.float()).double()
    err_routed = (got.double() - ref).norm() / ref.norm()
    err_kernel = (q(x).double() - ref).norm() / ref.norm()
    assert err_routed <= err_kernel * 1.05 + 1e-6, (err_routed, err_kernel)
    assert set(dict(q.named_buffers())) == set(q.state_dict())  # nothing cached on the layer


def test_a_per_channel_rule_leaves_grouped_weights_on_their_kernel():
    _, q = _layer(slimops.Int8WeightOnlyConfig(group_size=16))
    assert q.route_name == "Int8WeightOnlyLinear/grouped"
    x = _x(5)
    with routing.rules([Rule("Int8WeightOnlyLinear", "cpu", 1, None, "dequantize", "test")]):
        assert torch.equal(q(x), slimops.ops.weight_int8_linear(x, q.qweight, q.weight_scale, q.bias))


def test_routed_paths_keep_the_input_gradient():
    lin, q = _layer(slimops.Int8DynamicConfig())
    x = _x(4).requires_grad_()
    with routing.rules([Rule("Int8DynamicLinear", "cpu", 1, 16, "w8a16", "test")]):
        q(x).square().sum().backward()
    g_routed = x.grad.clone()
    x.grad = None
    F.linear(x, q.dequantize(), q.bias).square().sum().backward()
    torch.testing.assert_close(g_routed, x.grad, rtol=0.05, atol=1e-3)


def test_routing_under_torch_compile_fullgraph():
    _, q = _layer(slimops.Int8DynamicConfig())
    rule = Rule("Int8DynamicLinear", "cpu", 1, 16, "w8a16", "test")
    with routing.rules([rule]):
        compiled = torch.compile(q, fullgraph=True)
        for m in (3, 40):
            x = _x(m)
            torch.testing.assert_close(compiled(x), q(x), rtol=1e-5, atol=1e-5)


def test_report_says_which_route_a_layer_took():
    model = nn.Sequential(nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 8)).eval()
    converted = slimops.convert(copy.deepcopy(model), slimops.Int8DynamicConfig())
    x = _x(3)
    with routing.rules([Rule("Int8DynamicLinear", "cpu", 1, 16, "w8a16", "test")]):
        rep = slimops.report(model, converted, (x,), repeats=1, warmup=0)
    assert "routed to w8a16" in (rep["0"].note or "")
    rep = slimops.report(model, converted, (x,), repeats=1, warmup=0)
    assert "routed" not in (rep["0"].note or "")


def test_a_rule_with_an_unknown_path_is_refused():
    with pytest.raises(ValueError, match="path must be one of"):
        Rule("Int8DynamicLinear", "cuda", 1, 16, "cublas", "test")
