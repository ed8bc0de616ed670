"""slimops.convert: module swaps, filters, skipped modules, atomicity and bad input."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

import slimops
import slimops.conversion
from slimops.conversion import Config, HalfConfig, register_handler
from slimops.nn import HalfLinear


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(17, 123)
        self.act = nn.GELU()
        self.down = nn.Linear(123, 17, bias=False)
        self.attn = nn.MultiheadAttention(17, 1, batch_first=True)

    def forward(self, x):
        x = x + self.down(self.act(self.up(x)))
        return x + self.attn(x, x, x, need_weights=False)[0]


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(Block(), nn.LayerNorm(17), nn.Linear(17, 5))


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return (10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean())).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_config_swaps_linears_and_keeps_accuracy(dtype):
    model = make_model()
    x = torch.randn(3, 7, 17)
    want = model(x)
    out_model = slimops.convert(model, HalfConfig(dtype))
    assert out_model is model
    assert isinstance(model[0].up, HalfLinear) and isinstance(model[2], HalfLinear)
    assert model[0].up.weight.dtype == dtype
    assert set(model.slimops_summary.converted) == {"0.up", "0.down", "2"}
    # The attention's projection is read directly by MultiheadAttention: left alone, with the reason.
    assert "0.attn.out_proj" in model.slimops_summary.skipped
    got = model(x)
    assert got.dtype == want.dtype
    assert sqnr_db(want, got) > (35 if dtype == torch.float16 else 25)


def test_filter_fn_selects_layers():
    model = make_model()
    slimops.convert(model, HalfConfig(), filter_fn=lambda m, fqn: fqn.startswith("0."))
    assert isinstance(model[0].up, HalfLinear) and type(model[2]) is nn.Linear


def test_filter_selecting_nothing_warns():
    model = make_model()
    with pytest.warns(UserWarning, match="selected no module"):
        slimops.convert(model, HalfConfig(), filter_fn=lambda m, fqn: False)
    assert type(model[2]) is nn.Linear


def test_failure_part_way_leaves_the_model_unchanged():
    @dataclasses.dataclass
    class Flaky(Config):
        pass

    calls = []

    # Runs second, on the HalfLinears the first config made: the failure comes
    # after one whole config was applied and one module of the second was built.
    @register_handler(Flaky, HalfLinear)
    def _flaky(module, config):
        calls.append(module)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return nn.Identity()

    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    try:
        with pytest.raises(RuntimeError, match="boom"):
            slimops.convert(model, [HalfConfig(torch.bfloat16), Flaky()])
    finally:
        slimops.conversion._HANDLERS.pop(Flaky)
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(model, "slimops_summary")
    assert len(calls) == 2


def test_bad_config_and_model():
    with pytest.raises(TypeError, match="config must be one of .*HalfConfig.*got str"):
        slimops.convert(make_model(), "int8")
    with pytest.raises(ValueError, match="dtype must be torch.float16 or torch.bfloat16"):
        HalfConfig(torch.int8)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        slimops.convert(torch.randn(3), HalfConfig())
    with torch.device("meta"):
        meta = make_model()
    with pytest.raises(ValueError, match="meta device"):
        slimops.convert(meta, HalfConfig())


def test_unsupported_subclass_is_skipped_with_reason():
    class Custom(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(Custom(4, 4), nn.Linear(4, 4))
    slimops.convert(model, HalfConfig())
    assert type(model[0]) is Custom and isinstance(model[1], HalfLinear)
    assert "overrides nn.Linear.forward" in model.slimops_summary.skipped["0"]


def test_converted_model_compiles_fullgraph():
    model = slimops.convert(nn.Sequential(nn.Linear(17, 33), nn.ReLU(), nn.Linear(33, 5)), HalfConfig())
    x = torch.randn(4, 17)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))


# --------------------------------------------------------------------------- linear stand-ins


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D`` (transformers.pytorch_utils), as slimops sees it: by duck typing."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)  # [in, out]: nn.Linear's transpose
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, self.nx), self.weight).reshape(*x.shape[:-1], self.nf)


LINEAR_CONFIGS = {
    "half": (lambda: HalfConfig(torch.float16), 50),
    "int8_dynamic": (slimops.Int8DynamicConfig, 28),
    "weight_only": (slimops.Int8WeightOnlyConfig, 35),
    "weight_only_g16": (lambda: slimops.Int8WeightOnlyConfig(group_size=16), 35),
    "fp8_dynamic": (slimops.Fp8DynamicConfig, 25),
    "int8_static": (slimops.Int8StaticConfig, 28),
}


@pytest.mark.parametrize("name", list(LINEAR_CONFIGS))
def test_hf_conv1d_converts_like_a_linear(name):
    make, min_sqnr = LINEAR_CONFIGS[name]
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(48, 32), nn.GELU(), Conv1D(16, 48))
    x = torch.randn(3, 5, 32)
    want = model(x).detach()
    config = make()
    if isinstance(config, slimops.Int8StaticConfig):
        slimops.prepare(model, config)
        model(x)
    slimops.convert(model, config)
    assert set(model.slimops_summary.converted) == {"0", "2"}
    first = "ObservedLinear" if name == "int8_static" else "Conv1D"  # prepare made the ObservedLinear
    assert model.slimops_summary.converted["0"].startswith(f"{first} -> ")
    assert model[0].in_features == 32 and model[0].out_features == 48
    assert sqnr_db(want, model(x).detach()) > min_sqnr


def test_hf_conv1d_stand_in_is_exact_and_sparse_config_takes_it():
    from slimops.nn._convertible import linear_stand_in

    torch.manual_seed(0)
    conv = Conv1D(24, 16)
    build, fallback = linear_stand_in(conv)
    linear = build()
    x = torch.randn(7, 16)
    assert type(linear) is nn.Linear and fallback is None and linear.weight.is_contiguous()
    torch.testing.assert_close(linear(x), conv(x))
    sparse = slimops.conversion.build_replacement(conv, slimops.SparseConfig(0.5, "2:4"))
    assert isinstance(sparse, slimops.nn.Sparse24Linear)
    # Not a Conv1D: the wrong name, or a weight that does not match nf.
    assert linear_stand_in(nn.Conv1d(3, 3, 1)) is None
    bad = Conv1D(24, 16)
    bad.nf = 5
    assert linear_stand_in(bad) is None


# --------------------------------------------------------------------------- sparse then quantized


def sparse_modules():
    """A float reference and the three sparse slimops forms of the same 50%-sparse weight."""
    from slimops.nn import BlockSparseLinear, MaskedLinear, Sparse24Linear

    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    mask24 = torch.zeros(32, 16, 4, dtype=torch.bool)
    mask24[..., :2] = True
    mask24 = mask24.reshape(32, 64)
    tiles = torch.rand(2, 4) > 0.5
    tiles[0, 0] = True
    block_mask = tiles.repeat_interleave(16, 0).repeat_interleave(16, 1)
    return {
        "masked": MaskedLinear.from_float(nn.Linear(64, 32), mask24),
        "block": BlockSparseLinear.from_dense(linear, block_mask, 16),
        "2:4": Sparse24Linear.from_dense(linear, mask24),
    }


# "block" and "2:4" are not here: int8 weight-only keeps them sparse (BlockSparseInt8Linear,
# Sparse24Int8Linear, no fallback; tests/ops/test_block_sparse_int8.py, tests/ops/test_sparse24_int8.py);
# with Int8DynamicConfig 2:4 falls back (test_sparse_config_list_chains_the_summary).
@pytest.mark.parametrize("kind", ["masked"])
def test_sparse_layer_is_quantized_dense_and_reported(kind):
    from slimops.nn._convertible import linear_stand_in

    sparse = sparse_modules()[kind]
    x = torch.randn(5, 64)
    dense = linear_stand_in(sparse)[0]()
    torch.testing.assert_close(dense(x), sparse(x))  # the stand-in is exact: zeros kept
    model = nn.Sequential(sparse, nn.ReLU(), nn.Linear(32, 16))
    with pytest.warns(UserWarning, match=r"1 sparse layer\(s\) converted through their dense weight.*: 0$"):
        slimops.convert(model, slimops.Int8WeightOnlyConfig())
    summary = model.slimops_summary
    assert set(summary.fallbacks) == {"0"} and "sparse speed-up is lost" in summary.fallbacks["0"]
    assert summary.converted["0"] == f"{type(sparse).__name__} -> Int8WeightOnlyLinear"
    assert (model[0].qweight[dense.weight == 0] == 0).all()  # the pruned zeros stay zeros
    assert sqnr_db(dense(x), model[0](x)) > 35


def test_sparse_config_list_chains_the_summary():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 20))
    with pytest.warns(UserWarning, match="sparse layer"):
        slimops.convert(model, [slimops.SparseConfig(0.5, "2:4"), slimops.Int8DynamicConfig()])
    assert model.slimops_summary.converted["0"] == "Linear -> Sparse24Linear -> Int8DynamicLinear"


def test_sparse_config_after_quantization_is_an_error():
    model = make_model()
    types = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match="SparseConfig cannot prune a HalfLinear.*Apply SparseConfig before"):
        slimops.convert(model, [HalfConfig(), slimops.SparseConfig(0.5)])
    assert [type(m) for m in model.modules()] == types


def test_sparse_config_skips_layers_sparse_already():
    model = nn.Sequential(*sparse_modules().values())
    slimops.convert(model, slimops.SparseConfig(0.5))
    skipped = model.slimops_summary.skipped
    assert set(skipped) == {"0", "1", "2"} and "Pruner.finalize()" in skipped["0"]
    assert all("sparse already" in why for why in skipped.values())


# --------------------------------------------------------------------------- untouched modules


def test_untouched_weights_are_listed_without_noise():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 16)
            self.conv = nn.ConvTranspose2d(3, 16, 3)  # (nn.Conv2d has an int8 handler)
            self.norm = nn.LayerNorm(16)
            self.head = nn.Linear(16, 4)

    model = Net()
    # Most of the bytes stay float: convert says so, so that nobody takes the model for a quantized one.
    with pytest.warns(UserWarning, match=r"\d+% of the model's parameter bytes stay as they were.*conv \(ConvTranspose2d\)"):
        slimops.convert(model, slimops.Int8DynamicConfig())
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in Net().named_children()}
    want = (counts["embed"] + counts["conv"]) / sum(counts.values())
    assert model.slimops_summary.untouched_share == pytest.approx(want, rel=1e-9)
    # Layers the user's filter left out are the user's choice: they do not count, nor warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = slimops.convert(nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 2)), slimops.Int8DynamicConfig(),
                              filter_fn=lambda m, fqn: fqn == "1")  # fmt: skip
    assert big.slimops_summary.untouched_share == 0 and set(big.slimops_summary.untouched) == {"0"}
    assert model.slimops_summary.untouched == {
        "embed": "Embedding: no handler in Int8DynamicConfig",
        "conv": "ConvTranspose2d: no handler in Int8DynamicConfig",
    }
    # MultiheadAttention holds in_proj_weight; its out_proj is skipped (a handler refused it), not untouched.
    model = make_model()
    slimops.convert(model, HalfConfig())
    assert model.slimops_summary.untouched == {"0.attn": "MultiheadAttention: no handler in HalfConfig"}


def test_config_type_error_names_only_public_configs():
    with pytest.raises(TypeError) as e:
        slimops.convert(make_model(), object())
    assert "Int8StaticConfig" in str(e.value) and "_Prepare" not in str(e.value)


@pytest.mark.parametrize(
    "config",
    [
        HalfConfig(torch.float16),
        slimops.Int8DynamicConfig(),
        slimops.Int8WeightOnlyConfig(),
        slimops.Fp8DynamicConfig(),
        slimops.SparseConfig(0.5, pattern="2:4"),
        slimops.SparseConfig(0.75, pattern="block", block_size=16),
    ],
    ids=lambda c: type(c).__name__ + getattr(c, "pattern", ""),
)
def test_converted_layers_take_the_input_keyword_like_nn_linear(config):
    """Model code may call a layer as ``self.proj(input=h)``: the replacement takes that keyword too."""

    class KeywordCaller(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(32, 48)

        def forward(self, h):
            return self.proj(input=h)

    torch.manual_seed(0)
    model = KeywordCaller()
    x = torch.randn(3, 32)
    slimops.convert(model, config)
    assert type(model.proj) is not nn.Linear
    assert model(x).shape == (3, 48)


@pytest.mark.parametrize(
    "config",
    [HalfConfig(), slimops.Int8DynamicConfig(), slimops.Int8WeightOnlyConfig(), slimops.Fp8DynamicConfig(),
     slimops.SparseConfig(0.5, pattern="2:4")],
    ids=lambda c: type(c).__name__,
)
def test_float64_layers_are_skipped_with_the_reason(config):
    """The kernels take fp32/fp16/bf16: a float64 layer stays as it is rather than failing at its first call."""
    model = nn.Sequential(nn.Linear(64, 64)).double()
    slimops.convert(model, config)
    assert type(model[0]) is nn.Linear and "float64" in model.slimops_summary.skipped["0"]
    assert model(torch.randn(2, 64, dtype=torch.float64)).dtype == torch.float64


def test_pruner_skips_float64_linears():
    from slimops import prune

    model = nn.Sequential(nn.Linear(16, 16)).double()
    with pytest.warns(UserWarning, match="float64"):
        pruner = prune.Pruner(model)
    assert "0" in pruner.skipped and type(model[0]) is nn.Linear


def test_a_module_used_at_two_places_is_converted_at_both():
    """One nn.Linear object under several names gets one replacement, put at every place."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(32, 32)
            self.b = self.a
            self.seq = nn.Sequential(self.a, nn.ReLU(), self.a)

        def forward(self, x):
            return self.seq(self.b(self.a(x)))

    torch.manual_seed(0)
    model = Shared()
    x = torch.randn(3, 32)
    want = model(x)
    slimops.convert(model, slimops.Int8WeightOnlyConfig())
    assert model.a is model.b is model.seq[0] is model.seq[2]
    assert type(model.a).__name__ == "Int8WeightOnlyLinear"
    assert set(model.slimops_summary.converted) == {"a", "b", "seq.0", "seq.2"}
    assert not model.slimops_summary.untouched
    assert sqnr_db(want, model(x)) > 30

    # Selected under any of its names: converted at all of them.
    model = Shared()
    slimops.convert(model, HalfConfig(), filter_fn=lambda m, fqn: fqn == "seq.2")
    assert model.a is model.seq[0] and type(model.a) is HalfLinear


def test_a_layer_map_naming_missing_or_unhandled_modules():
    model = make_model()
    config = slimops.Int8WeightOnlyConfig()
    with pytest.raises(KeyError, match=r"does not have: '2\.O'"):
        slimops.convert(model, {"2": config, "2.O": config})
    assert type(model[2]) is nn.Linear  # nothing converted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slimops.convert(model, {"2": config, "1": config})  # model[1] is a LayerNorm
    assert type(model[2]).__name__ == "Int8WeightOnlyLinear"
    assert "LayerNorm: Int8WeightOnlyConfig has no handler" in model.slimops_summary.skipped["1"]


# --------------------------------------------------------------------------- the swap engine (shared with the Pruner)


def test_places_swap_and_restore_keep_shared_modules_one_and_roll_back():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2))
    found = {tuple(names): m for names, m in slimops.conversion.places(model)}
    assert found[("0", "2")] is shared and ("",) in found
    new = nn.Linear(4, 4)
    done = slimops.conversion.swap_modules(model, [(["0", "2"], new)])
    assert model[0] is new and model[2] is new and [n for n, _ in done] == ["0", "2"]
    slimops.conversion.restore_modules(model, done)
    assert model[0] is shared and model[2] is shared
    # All or nothing: a bad name takes back what was already put.
    with pytest.raises(AttributeError):
        slimops.conversion.swap_modules(model, [(["0"], new), (["9.nope"], new)])
    assert model[0] is shared
    with pytest.raises(ValueError, match="cannot replace the model itself"):
        slimops.conversion.swap_modules(model, [([""], new)])


def test_known_configs_lists_the_public_configs_only():
    names = [t.__name__ for t in slimops.conversion.known_configs()]
    assert {"HalfConfig", "Int8DynamicConfig", "Int8StaticConfig", "Int8WeightOnlyConfig", "Fp8DynamicConfig",
            "SparseConfig"} <= set(names)  # fmt: skip
    assert names == sorted(names) and not any(n.startswith("_") for n in names)
    assert slimops.HalfConfig is slimops.quant.HalfConfig is HalfConfig


def test_pruner_on_a_bare_layer_skips_it_with_the_reason():
    layer = nn.Linear(16, 16)
    with pytest.warns(UserWarning):
        pruner = slimops.prune.Pruner(layer)
    assert "the model itself" in pruner.skipped[""] and not pruner.layers
