"""slimops.report: per-layer types, bytes, sparsity and SQNR; model size, latency, metric; output formats."""

from __future__ import annotations

import copy
import io
import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import slimops
from slimops.nn import BlockSparseLinear, HalfLinear, MaskedConv2d, MaskedLinear, Sparse24Linear
from slimops.prune.channels import remove_channels
from slimops.report import CompressionReport, LayerReport, report, tensor_bytes

# Few timed runs: the latency is not what most tests check, and this CPU is slow.
FAST = {"repeats": 2, "warmup": 0}
K, H, N = 17, 123, 5  # odd sizes: no kernel tile divides them


def make_mlp(k: int = K, h: int = H, n: int = N, dtype=torch.float32, seed: int = 0) -> nn.Sequential:
    """``up -> act -> down`` with Gaussian weights (no weight is exactly zero), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    # inplace: the ReLU overwrites "up"'s output, which the report must have copied.
    model = nn.Sequential(OrderedDict(up=nn.Linear(k, h), act=nn.ReLU(inplace=True), down=nn.Linear(h, n)))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return model.to(dtype).eval()


def inputs(m: int = 64, k: int = K, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(dtype)


def converted(model: nn.Module, config, **kw) -> nn.Module:
    return slimops.convert(copy.deepcopy(model), config, **kw).eval()


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return 10 * math.log10(ref.pow(2).sum().item() / (ref - out).pow(2).sum().item())


# ---- per-layer types, bytes, sparsity, SQNR, one config at a time ------------------------------------


def test_int8_dynamic_layers():
    model = make_mlp()
    r = report(model, converted(model, slimops.Int8DynamicConfig()), inputs(), **FAST)
    assert isinstance(r, CompressionReport)
    assert [layer.name for layer in r.layers] == ["up", "down"]  # act holds no tensor
    for layer in r.layers:
        assert (layer.type_before, layer.type_after) == ("Linear", "Int8DynamicLinear")
    up, down = r["up"], r["down"]
    assert up.bytes_before == (H * K + H) * 4
    # int8 weight [H, K], fp32 scale [H, 1], fp32 bias [H].
    assert up.bytes_after == H * K * 1 + H * 4 + H * 4
    assert down.bytes_after == N * H * 1 + N * 4 + N * 4
    assert r.size_before == (H * K + H + N * H + N) * 4
    assert r.size_after == up.bytes_after + down.bytes_after
    assert r.size_ratio == r.size_after / r.size_before
    for layer in r.layers:
        assert 30 <= layer.sqnr_db < math.inf
        assert layer.note is None


def test_int8_sparsity_counts_zeros_of_the_int8_weight():
    model = make_mlp()
    with torch.no_grad():
        model.up.weight[:40] = 0  # 40 whole rows: they quantize to 0 whatever the scale
    conv = converted(model, slimops.Int8DynamicConfig())
    # Gaussian rows quantize to a few zeros too (|w| < scale / 2): count them from the int8 weight.
    q = conv.up.qweight
    assert q.dtype == torch.int8
    r = report(model, conv, inputs(), **FAST)
    assert r["up"].sparsity == (q == 0).sum().item() / q.numel()
    assert r["up"].sparsity >= 40 / H


def test_int8_weight_only_bytes_per_group():
    model = make_mlp(k=64)
    conv = converted(model, slimops.Int8WeightOnlyConfig(group_size=32), filter_fn=lambda m, fqn: fqn == "up")
    r = report(model, conv, inputs(k=64), **FAST)
    assert r["up"].type_after == "Int8WeightOnlyLinear"
    assert r["up"].bytes_after == H * 64 + H * (64 // 32) * 4 + H * 4
    assert r["up"].sqnr_db >= 30
    assert r["down"].type_after == "Linear" and r["down"].sqnr_db == math.inf


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half(dtype):
    model = make_mlp()
    r = report(model, converted(model, slimops.HalfConfig(dtype)), inputs(), **FAST)
    for layer in r.layers:
        assert layer.type_after == "HalfLinear"
        assert layer.bytes_after * 2 == layer.bytes_before
        assert (35 if dtype == torch.float16 else 25) <= layer.sqnr_db < math.inf
    assert r.size_ratio == 0.5


def test_unstructured_sparsity_is_the_pruned_fraction():
    model = make_mlp()
    conv = converted(model, slimops.SparseConfig(0.7, pattern="unstructured"))
    r = report(model, conv, inputs(), **FAST)
    for name, numel in (("up", H * K), ("down", N * H)):
        layer = r[name]
        # A dense nn.Linear holding the zeros: same type, same bytes.
        assert (layer.type_before, layer.type_after) == ("Linear", "Linear")
        assert layer.bytes_after == layer.bytes_before
        assert abs(layer.sparsity - 0.7) <= 1 / numel
        assert layer.sqnr_db < math.inf
    assert r["up"].sparsity == (conv.up.weight == 0).sum().item() / (H * K)


def test_masked_linear_sparsity_and_bytes():
    model = make_mlp()
    conv = copy.deepcopy(model)
    mask = torch.ones(H, K, dtype=torch.bool)
    mask.view(-1)[torch.randperm(H * K, generator=torch.Generator().manual_seed(2))[:777]] = False
    conv.up = MaskedLinear.from_float(conv.up, mask)
    r = report(model, conv, inputs(), **FAST)
    up = r["up"]
    assert up.type_after == "MaskedLinear"
    assert up.sparsity == 777 / (H * K)
    assert up.bytes_after == (H * K + H) * 4 + H * K * 1  # weight, bias, bool mask
    assert 0 < up.sqnr_db < math.inf
    assert r["down"].sqnr_db == math.inf


def test_masked_conv2d_sparsity_counts_the_mask():
    """The forward uses where(M, W, 0): a weight left non-zero under the mask (momentum from before the
    pruning) is still a zero of the layer, as for MaskedLinear."""
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 7, 3), nn.ReLU()).eval()
    conv = copy.deepcopy(model)
    mask = torch.rand(7, 3, 3, 3, generator=g) >= 0.4
    conv[0] = MaskedConv2d.from_float(conv[0], mask)
    with torch.no_grad():
        conv[0].weight[~mask] = torch.randn(int((~mask).sum()), generator=g) + 3  # no exact zero
    r = report(model, conv, torch.randn(2, 3, 9, 11, generator=g), **FAST)
    assert r["0"].type_after == "MaskedConv2d"
    assert r["0"].sparsity == pytest.approx((~mask).sum().item() / mask.numel(), abs=1e-12)


@pytest.mark.parametrize("config", [
    slimops.Int8DynamicConfig(), slimops.Int8WeightOnlyConfig(group_size=None), slimops.Fp8DynamicConfig(),
], ids=["int8_dynamic", "int8_weight_only", "fp8_dynamic"])
def test_quantized_sparsity_reads_the_stored_weight_not_weight(config):
    """A quantized layer's ``weight`` describes it (shape, dtype, device) and holds no values: the sparsity
    is that of ``qweight``, the real [N, K] part of it for fp8 (padded to multiples of 16)."""
    model = make_mlp()
    with torch.no_grad():
        model.up.weight[:31] = 0  # whole rows: zero in every format
    conv = converted(model, config)
    assert not isinstance(conv.up.weight, torch.Tensor)
    q = conv.up.qweight[:H, :K].float()
    assert (q == 0).sum() >= 31 * K
    r = report(model, conv, inputs(), **FAST)
    assert r["up"].sparsity == pytest.approx((q == 0).sum().item() / (H * K), abs=1e-12)
    q = conv.down.qweight[:N, :H].float()
    assert r["down"].sparsity == pytest.approx((q == 0).sum().item() / (N * H), abs=1e-12)


def test_int8_static_sparsity_reads_the_stored_weight():
    model = make_mlp()
    with torch.no_grad():
        model.down.weight[:2] = 0
    conv = copy.deepcopy(model)
    slimops.prepare(conv, slimops.Int8StaticConfig())
    conv(inputs())
    slimops.convert(conv, slimops.Int8StaticConfig())
    r = report(model, conv, inputs(), **FAST)
    assert r["down"].type_after == "Int8StaticLinear"
    assert r["down"].sparsity == pytest.approx((conv.down.qweight == 0).sum().item() / (N * H), abs=1e-12)
    assert r["down"].sparsity >= 2 / N


@pytest.mark.parametrize("shape", [(0, K), (3, 0, K)], ids=["no rows", "no tokens"])
def test_empty_inputs_have_no_sqnr(shape):
    """An empty comparison is no evidence of an exact layer: None with a note, never inf."""
    model = make_mlp()
    for conv in (copy.deepcopy(model), converted(model, slimops.Int8DynamicConfig())):
        r = report(model, conv, torch.randn(*shape), **FAST)
        for layer in r.layers:
            assert layer.sqnr_db is None and "empty output" in layer.note, layer
        d = r.to_dict()
        assert all(layer["sqnr_db"] is None for layer in d["layers"])
        assert "inf" not in str(r)


def test_block_sparse_sparsity_and_bytes():
    model = make_mlp(k=64, h=128)
    config = slimops.SparseConfig(0.75, pattern="block", block_size=16)
    conv = converted(model, config, filter_fn=lambda m, fqn: fqn == "up")
    assert isinstance(conv.up, BlockSparseLinear)
    nnz = conv.up.values.shape[0]
    r = report(model, conv, inputs(k=64), **FAST)
    up = r["up"]
    assert up.type_after == "BlockSparseLinear"
    assert up.sparsity == 1 - nnz * 16 * 16 / (128 * 64)
    # values [nnz, 16, 16] fp32, row_ptr int32 [128/16 + 1], col_idx int32 [nnz], bias fp32 [128].
    assert up.bytes_after == nnz * 256 * 4 + (128 // 16 + 1) * 4 + nnz * 4 + 128 * 4
    assert 0 < up.sqnr_db < math.inf


def test_sparse24_sparsity_counts_zeros_among_the_kept_values():
    model = make_mlp(k=16, h=128, n=8, dtype=torch.float16)
    with torch.no_grad():
        model.up.weight[3] = 0  # a zero row: its kept values are zeros too
    conv = converted(model, slimops.SparseConfig(0.5, pattern="2:4"))
    assert isinstance(conv.up, Sparse24Linear)
    r = report(model, conv, inputs(k=16, dtype=torch.float16), **FAST)
    up = r["up"]
    assert up.type_after == "Sparse24Linear"
    assert up.sparsity == (128 * 16 // 2 + 16 // 2) / (128 * 16)
    assert r["down"].sparsity == 0.5
    # values fp16 [128, 8], meta uint8 [128, 2], bias fp16 [128].
    assert up.bytes_after == 128 * 8 * 2 + 128 * 2 + 128 * 2
    assert up.bytes_after < up.bytes_before


# ---- which layers, and SQNR on the original inputs ----------------------------------------------------


def test_sqnr_uses_the_original_layer_inputs():
    model = make_mlp()
    x = inputs()
    conv = converted(model, slimops.Int8DynamicConfig(), filter_fn=lambda m, fqn: fqn == "up")
    with torch.inference_mode():
        end_to_end = conv(x)
        assert not torch.equal(end_to_end, model(x))  # "down" sees a different input in conv
    r = report(model, conv, x, **FAST)
    assert r["up"].type_after == "Int8DynamicLinear" and r["up"].sqnr_db < math.inf
    # Run on the input "down" saw in the original model, the untouched layer is exact.
    assert (r["down"].type_before, r["down"].type_after) == ("Linear", "Linear")
    assert r["down"].sqnr_db == math.inf


class CallsTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(24, 24)
        self.norm = nn.LayerNorm(24)

    def forward(self, x):
        # The norm is called by keyword: the replay must pass kwargs on.
        return self.lin(self.norm(input=self.lin(x)))


def test_sqnr_pools_every_call_of_a_layer():
    torch.manual_seed(0)
    model = CallsTwice().eval()
    conv = converted(model, slimops.Int8DynamicConfig())
    x = torch.randn(32, 24)
    r = report(model, conv, (x,), **FAST)
    with torch.inference_mode():
        h = model.lin(x)
        ref = torch.cat([h, model.lin(model.norm(h))])
        out = torch.cat([conv.lin(x), conv.lin(model.norm(h))])
    assert r["lin"].sqnr_db == pytest.approx(sqnr_db(ref, out), rel=1e-9)
    assert r["norm"].sqnr_db == math.inf and r["norm"].note is None


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(K, H)

    def forward(self, x):
        return torch.relu(self.lin(x))


class FusedBlock(nn.Module):
    """A stand-in for :class:`Block` whose child at the same name has another type too."""

    def __init__(self, block: Block):
        super().__init__()
        self.lin = HalfLinear.from_float(block.lin, torch.float16)

    def forward(self, x):
        return torch.relu(self.lin(x))


def test_replaced_block_is_one_row():
    model = nn.Sequential(nn.Sequential(nn.Linear(K, H), nn.ReLU()), nn.Linear(H, N)).eval()
    conv = copy.deepcopy(model)
    conv[0] = HalfLinear.from_float(model[0][0], torch.float16)  # block (Linear + ReLU) -> one module
    r = report(model, conv, inputs(), **FAST)
    assert [layer.name for layer in r.layers] == ["0", "1"]
    assert (r["0"].type_before, r["0"].type_after) == ("Sequential", "HalfLinear")
    assert r["0"].bytes_after * 2 == r["0"].bytes_before
    assert r["0"].sqnr_db < 0  # no ReLU any more: negative outputs where the original has zeros
    assert r["1"].sqnr_db == math.inf

    # Both the block and its child changed type: only the block is a row (its bytes hold the child's).
    model = nn.Sequential(Block(), nn.Linear(H, N)).eval()
    conv = copy.deepcopy(model)
    conv[0] = FusedBlock(model[0])
    r = report(model, conv, inputs(), **FAST)
    assert [(layer.name, layer.type_before, layer.type_after) for layer in r.layers] == [
        ("0", "Block", "FusedBlock"),
        ("1", "Linear", "Linear"),
    ]
    assert 35 <= r["0"].sqnr_db < math.inf


def test_pruned_channels_are_not_compared():
    model = make_mlp()
    conv = copy.deepcopy(model)
    keep = torch.ones(H, dtype=torch.bool)
    keep[:23] = False
    remove_channels(conv, "up", keep)
    assert conv.up.out_features == H - 23 and conv.down.in_features == H - 23
    r = report(model, conv, inputs(), **FAST)
    assert r["up"].sqnr_db is None and "output shape" in r["up"].note
    assert r["down"].sqnr_db is None and "fails on the original inputs" in r["down"].note
    assert r["up"].bytes_after == ((H - 23) * K + H - 23) * 4


class HalfOut(nn.Module):
    """A stand-in layer whose output dtype differs from the original's."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x).half()


def test_output_dtype_may_change():
    model = make_mlp()
    conv = copy.deepcopy(model)
    conv.down = HalfOut(conv.down)
    r = report(model, conv, inputs(), **FAST)
    assert r["down"].type_after == "HalfOut"
    assert 50 < r["down"].sqnr_db < math.inf


class KwargsModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 16)
        self.head = nn.Linear(16, 11, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, input_ids, scale=1.0):
        return self.head(self.emb(input_ids) * scale)


def test_dict_inputs_and_tied_weights():
    torch.manual_seed(0)
    model = KwargsModel().eval()
    assert tensor_bytes(model) == 11 * 16 * 4  # the tied weight counts once
    ids = torch.randint(0, 11, (2, 7))
    r = report(model, copy.deepcopy(model), {"input_ids": ids, "scale": 0.5}, **FAST)
    assert [layer.name for layer in r.layers] == ["emb", "head"]
    assert r.size_before == r.size_after == 11 * 16 * 4
    assert all(layer.sqnr_db == math.inf for layer in r.layers)
    # Tied through two Parameter objects over the same memory (as after some checkpoint loads).
    model.head.weight = nn.Parameter(model.emb.weight.detach())
    assert model.head.weight is not model.emb.weight
    assert tensor_bytes(model) == 11 * 16 * 4


class InPlaceResidual(nn.Module):
    """``h += mlp(h)`` in place, after ``mlp`` has read ``h``: its recorded input must be a copy."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(K, K)
        self.mlp = nn.Linear(K, K)

    def forward(self, x):
        h = self.proj(x)
        h += self.mlp(h)
        return h


def test_recorded_inputs_survive_in_place_updates():
    torch.manual_seed(0)
    model = InPlaceResidual().eval()
    conv = converted(model, slimops.Int8DynamicConfig(), filter_fn=lambda m, fqn: fqn == "proj")
    r = report(model, conv, inputs(), **FAST)
    assert r["proj"].type_after == "Int8DynamicLinear"
    assert r["mlp"].sqnr_db == math.inf


# ---- whole model: latency, eval_fn -------------------------------------------------------------------


def test_latency_runs_warmup_plus_repeats():
    model = make_mlp()
    conv = converted(model, slimops.Int8DynamicConfig())
    counts = {"original": 0, "converted": 0}
    model.register_forward_pre_hook(lambda m, a: counts.__setitem__("original", counts["original"] + 1))
    conv.register_forward_pre_hook(lambda m, a: counts.__setitem__("converted", counts["converted"] + 1))
    r = report(model, conv, inputs(), repeats=4, warmup=2)
    assert counts == {"original": 1 + 2 + 4, "converted": 2 + 4}  # the original also runs once to record
    assert r.latency_before_s > 0 and r.latency_after_s > 0
    assert r.latency_ratio == r.latency_after_s / r.latency_before_s
    assert r.device == "cpu"


@pytest.mark.gpu
def test_cuda_device_and_latency():
    model = make_mlp().cuda()
    r = report(model, converted(model, slimops.HalfConfig(torch.float16)), inputs().cuda(), repeats=3, warmup=1)
    assert r.device.startswith("cuda:0 (")
    assert r.latency_before_s > 0 and r.latency_after_s > 0
    assert all(35 <= layer.sqnr_db < math.inf for layer in r.layers)


def test_eval_fn_runs_on_both_models():
    model = make_mlp()
    conv = converted(model, slimops.HalfConfig(torch.float16))
    x = inputs()
    seen = []

    def eval_fn(m):
        seen.append(m)
        with torch.no_grad():
            return {"mean": m(x).mean().item(), "first": float(len(seen))}

    r = report(model, conv, x, eval_fn=eval_fn, **FAST)
    assert seen[0] is model and seen[1] is conv and len(seen) == 2
    assert r.metric_before["first"] == 1.0 and r.metric_after["first"] == 2.0
    r = report(model, conv, x, eval_fn=lambda m: 0.25 if m is model else torch.tensor(0.5), **FAST)
    assert (r.metric_before, r.metric_after) == (0.25, 0.5)
    r = report(model, conv, x, eval_fn=lambda m: np.float32(0.25) if m is model else torch.tensor([[3]]), **FAST)
    assert (r.metric_before, r.metric_after) == (0.25, 3.0)


def test_eval_fn_returning_something_else_says_what_it_returned():
    model = make_mlp()
    conv = converted(model, slimops.HalfConfig(torch.float16))
    x = inputs()
    cases = [
        (lambda m: m(x), r"got a torch.float32 Tensor of shape \[64, 5\] \(a metric is one number: reduce it"),
        (lambda m: {"acc": 0.5, "logits": m(x)}, r"Tensor of shape \[64, 5\] as 'logits' of the dict it returned"),
        (lambda m: torch.tensor(True), "got a torch.bool Tensor of shape \\[\\]"),
        (lambda m: torch.empty(0), r"got a torch.float32 Tensor of shape \[0\]$"),
        (lambda m: [0.5], "got list$"),
    ]
    for eval_fn, match in cases:
        with pytest.raises(TypeError, match="slimops.report: eval_fn must return a number .*" + match):
            report(model, conv, x, eval_fn=eval_fn, **FAST)


def test_eval_fn_returning_a_hugging_face_model_output():
    """A ModelOutput is a dict: the error names it and the field that is not a number (not "got Tensor")."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import CausalLMOutput

    model = make_mlp()
    conv = copy.deepcopy(model)
    x = inputs()
    with pytest.raises(TypeError, match=r"got a torch.float32 Tensor of shape \[64, 5\] as 'logits' of the "
                       r"CausalLMOutput it returned \(a metric is one number"):
        report(model, conv, x, eval_fn=lambda m: CausalLMOutput(logits=m(x)), **FAST)
    # One number in it is a metric: a ModelOutput holding only the loss is read as {"loss": ...}.
    r = report(model, conv, x, eval_fn=lambda m: CausalLMOutput(loss=m(x).pow(2).mean()), **FAST)
    assert r.metric_before == r.metric_after == {"loss": model(x).pow(2).mean().item()}
    assert transformers is not None


def test_no_eval_fn_means_no_metric():
    model = make_mlp()
    r = report(model, copy.deepcopy(model), inputs(), **FAST)
    assert r.metric_before is None and r.metric_after is None


# ---- output formats ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_report() -> CompressionReport:
    model = make_mlp()
    conv = converted(model, slimops.Int8DynamicConfig(), filter_fn=lambda m, fqn: fqn == "up")
    return report(model, conv, inputs(), eval_fn=lambda m: {"acc": 0.5}, **FAST)


def _no_constants(name):
    raise ValueError(f"invalid JSON constant {name}")


def test_to_json_round_trips(int8_report, tmp_path):
    path = tmp_path / "report.json"
    text = int8_report.to_json(path)
    with open(path) as f:
        # parse_constant: Infinity / NaN are not JSON, so the file must not hold them.
        d = json.load(f, parse_constant=_no_constants)
    assert json.loads(text, parse_constant=_no_constants) == d
    assert [layer["name"] for layer in d["layers"]] == ["up", "down"]
    assert d["layers"][0]["type_after"] == "Int8DynamicLinear"
    assert d["layers"][0]["sqnr_db"] == pytest.approx(int8_report["up"].sqnr_db)
    assert d["layers"][1]["sqnr_db"] == "inf"
    assert d["size_before"] == int8_report.size_before
    assert d["size_ratio"] == pytest.approx(int8_report.size_ratio)
    assert d["metric_after"] == {"acc": 0.5}
    assert LayerReport(**d["layers"][0]).bytes_after == int8_report["up"].bytes_after


def test_plot_writes_a_png(int8_report, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "report.png"
    int8_report.plot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_print_shows_layers_and_summary(int8_report):
    from rich.console import Console

    console = Console(file=io.StringIO(), record=True, width=200)
    int8_report.print(console)
    text = console.export_text()
    for word in ("up", "down", "Int8DynamicLinear", "inf", "size", "latency", "acc=0.5"):
        assert word in text
    assert "up" in str(int8_report)


# ---- bad input ---------------------------------------------------------------------------------------


def test_bad_input():
    model = make_mlp()
    x = inputs()
    with pytest.raises(TypeError, match="original"):
        report("model", model, x)
    with pytest.raises(TypeError, match="converted"):
        report(model, None, x)
    with pytest.raises(TypeError, match="example_inputs"):
        report(model, model, 3.0)
    with pytest.raises(TypeError, match="example_inputs"):
        report(model, model, {0: x})
    with pytest.raises(TypeError, match="eval_fn"):
        report(model, model, x, eval_fn="accuracy")
    with pytest.raises(ValueError, match="repeats"):
        report(model, model, x, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        report(model, model, x, warmup=-1)
    with pytest.raises(TypeError, match="eval_fn must return"):
        report(model, copy.deepcopy(model), x, eval_fn=lambda m: "good", **FAST)


def test_warns_on_training_mode_and_same_object():
    model = make_mlp()
    with pytest.warns(UserWarning, match="training mode"):
        report(model, copy.deepcopy(model).train(), inputs(), **FAST)
    with pytest.warns(UserWarning, match="same object"):
        report(model, model, inputs(), **FAST)


# ---- the models come back as they went in -------------------------------------------------------------


def _hooks(model: nn.Module) -> list:
    return [
        h
        for m in model.modules()
        for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
    ]


def test_eval_fn_mode_switch_is_undone():
    model = make_mlp()
    conv = converted(model, slimops.Int8DynamicConfig())
    conv.down.train()  # one submodule in its own mode: restored module by module
    modes = {"original": [m.training for m in model.modules()], "converted": [m.training for m in conv.modules()]}

    def eval_fn(m):
        m.train()  # e.g. an eval_fn that fine-tunes a little before measuring
        return 0.0

    report(model, conv, inputs(), eval_fn=eval_fn, **FAST)
    assert [m.training for m in model.modules()] == modes["original"]
    assert [m.training for m in conv.modules()] == modes["converted"]


class Fails(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(K, K)

    def forward(self, x):
        self.lin(x)
        raise RuntimeError("boom")


def test_hooks_are_removed_when_the_forward_raises():
    model = Fails().eval()
    with pytest.raises(RuntimeError, match="boom"):
        report(model, copy.deepcopy(model), inputs(), **FAST)
    assert _hooks(model) == []


class ScalesItsInput(nn.Module):
    """A layer that writes into its own input (``x *= w``): its recorded input must be taken before it runs."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((K,), 3.0))

    def forward(self, x):
        return x.mul_(self.weight)


def test_recorded_input_is_the_one_the_layer_got():
    model = nn.Sequential(nn.Linear(K, K), ScalesItsInput()).eval()
    r = report(model, copy.deepcopy(model), inputs(), **FAST)
    # The same layer on the same input is exact; on its own (already scaled) output it is not.
    assert r["1"].sqnr_db == math.inf


class DictOut(nn.Module):
    """Outputs that are not a tensor: a dict holding a tuple, and a layer (LSTM) returning nested tuples."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(K, 8, batch_first=True)
        self.head = nn.Linear(8, N)

    def forward(self, x):
        out, (h, c) = self.rnn(x)
        return {"logits": self.head(out), "state": (h, c)}


def test_models_and_layers_with_structured_outputs():
    torch.manual_seed(0)
    model = DictOut().eval()
    conv = converted(model, slimops.Int8DynamicConfig())
    r = report(model, conv, inputs().view(4, 16, K), **FAST)
    assert r["rnn"].sqnr_db == math.inf  # three output tensors, all compared
    assert r["head"].type_after == "Int8DynamicLinear" and 30 <= r["head"].sqnr_db < math.inf
    assert r.latency_before_s > 0 and r.latency_after_s > 0


def test_hugging_face_model_output():
    """GPT-2 returns a ``ModelOutput`` (a dict with a cache object in it)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=4, vocab_size=128, n_positions=32)
    model = transformers.GPT2LMHeadModel(config).eval()
    conv = converted(model, slimops.Int8WeightOnlyConfig())
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    r = report(model, conv, {"input_ids": ids}, **FAST)
    assert r["transformer.h.0.mlp.c_fc"].type_after == "Int8WeightOnlyLinear"
    assert 30 <= r["transformer.h.0.mlp.c_fc"].sqnr_db < math.inf
    assert r.latency_before_s > 0 and r.latency_after_s > 0
    json.loads(r.to_json(), parse_constant=_no_constants)


def test_a_compiled_model_is_reported_layer_by_layer():
    """torch.compile wraps the model (its layers move under ``_orig_mod``); the rows still match."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(17, 123), nn.ReLU(), nn.Linear(123, 5)).eval()
    converted = slimops.convert(copy.deepcopy(model), slimops.Int8WeightOnlyConfig())
    rep = report(model, torch.compile(converted), (torch.randn(4, 17),), repeats=2, warmup=1)
    rows = {layer.name: layer for layer in rep.layers}
    assert set(rows) == {"0", "2"}
    assert rows["0"].type_after == "Int8WeightOnlyLinear" and rows["0"].sqnr_db > 30
    assert rep.size_after < rep.size_before


def test_measuring_a_model_in_training_mode_leaves_its_buffers_alone():
    """BatchNorm in training mode updates its statistics on every forward; report and plan put them back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.Linear(32, 8))  # left in training mode
    converted = slimops.convert(copy.deepcopy(model), slimops.Int8WeightOnlyConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = {k: v.clone() for k, v in converted.state_dict().items()}
    x = torch.randn(8, 16)
    with pytest.warns(UserWarning, match="training mode"):
        report(model, converted, (x,), repeats=2, warmup=1)
    with pytest.warns(UserWarning):
        slimops.plan(model, (x,), [slimops.Int8WeightOnlyConfig()], repeats=1, warmup=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in converted.state_dict().items():
        assert torch.equal(v, after[k]), k
