"""Drop-in: stock PyTorch and Hugging Face modules converted under every config, run as their own code runs them.

Each family is built small, seeded, in eval mode with dropout 0, and converted by every
config. The converted model is run in ``no_grad`` (where PyTorch's
``TransformerEncoderLayer`` takes its fused inference path, which reads
``linear1.weight`` directly) and with gradients (the layers before a converted one
must get the gradients the float model gives them). Outputs are judged against:

* the float model, by SQNR, for the quantized configs;
* the float model with the pruned weights put back as dense ``nn.Linear`` layers, to
  float tolerance, for the sparse configs (what was pruned is the config's choice; how
  the packed layers compute is what is tested).

T5 casts its hidden states to ``wo.weight.dtype`` before ``wo``, and Mixtral keeps its
experts as 3-D parameters that no config converts: both are here for that reason.
"""

from __future__ import annotations

import copy
import importlib
import warnings

import pytest
import torch
from torch import nn

import slimops
from slimops.nn import BlockSparseLinear, Sparse24Linear
from slimops.nn.sparse import dense_linear

transformers = pytest.importorskip("transformers")

D, FF, HEADS, SEQ, VOCAB = 32, 64, 4, 7, 96


class EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.layer(x)


class EncoderStack(nn.Module):
    """``nn.TransformerEncoder`` with a padding mask: in ``no_grad`` it packs the batch into a nested tensor."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)

    def forward(self, x):
        pad = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        pad[0, -2:] = True  # the first sequence is two tokens shorter
        out = self.encoder(x, src_key_padding_mask=pad)
        return out.to_padded_tensor(0.0, x.shape) if out.is_nested else out.masked_fill(pad[..., None], 0.0)


class DecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.layer(x, x[:, :3])


class T5(nn.Module):
    def __init__(self):
        super().__init__()
        cfg = transformers.T5Config(
            vocab_size=VOCAB, d_model=D, d_kv=8, d_ff=FF, num_layers=2, num_decoder_layers=2, num_heads=HEADS,
            feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )  # fmt: skip
        self.model = transformers.T5ForConditionalGeneration(cfg)

    def forward(self, ids):
        return self.model(input_ids=ids, decoder_input_ids=ids[:, :5]).logits


class Mixtral(nn.Module):
    def __init__(self):
        super().__init__()
        cfg = transformers.MixtralConfig(
            vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=2, num_attention_heads=HEADS,
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
        )  # fmt: skip
        self.model = transformers.MixtralForCausalLM(cfg)

    def forward(self, ids):
        return self.model(input_ids=ids).logits


def _hidden():
    return torch.randn(2, SEQ, D, generator=torch.Generator().manual_seed(1))


def _ids():
    return torch.randint(2, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))


FAMILIES = {
    "encoder_layer": (EncoderLayer, _hidden),
    "encoder_stack": (EncoderStack, _hidden),
    "decoder_layer": (DecoderLayer, _hidden),
    "t5": (T5, _ids),
    "mixtral": (Mixtral, _ids),
}

# name -> (config factory, min output SQNR dB, min SQNR dB of the float parameters' gradients).
QUANT = {
    "half_fp16": (lambda: slimops.HalfConfig(torch.float16), 45, 40),
    "int8_dynamic": (slimops.Int8DynamicConfig, 25, 20),
    "weight_only": (slimops.Int8WeightOnlyConfig, 30, 25),
    "weight_only_g16": (lambda: slimops.Int8WeightOnlyConfig(group_size=16), 30, 25),
    "fp8_dynamic": (slimops.Fp8DynamicConfig, 15, 12),
    "int8_static": (slimops.Int8StaticConfig, 20, 15),
}
SPARSE = {
    "sparse_2_4": lambda: slimops.SparseConfig(0.5, "2:4"),
    "sparse_block16": lambda: slimops.SparseConfig(0.5, "block", block_size=16),
    "sparse_unstructured": lambda: slimops.SparseConfig(0.5),
}


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family][0]().eval()


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return (10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean())).item()


def converted(family: str, name: str) -> tuple[nn.Module, nn.Module]:
    """``(model converted by config name, its reference)``."""
    model = build(family)
    x = FAMILIES[family][1]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Mixtral's experts stay float: warned about, tested below
        if name in SPARSE:
            q = slimops.convert(copy.deepcopy(model), SPARSE[name]())
            return q, _dense_twin(q)
        config = QUANT[name][0]()
        q = copy.deepcopy(model)
        if name == "int8_static":
            slimops.prepare(q, config)
            with torch.no_grad():
                q(x)
        return slimops.convert(q, config), model


def _dense_twin(model: nn.Module) -> nn.Module:
    """``model`` with every packed sparse layer replaced by an ``nn.Linear`` holding its dense weight."""
    twin = copy.deepcopy(model)
    for fqn, m in list(twin.named_modules()):
        if isinstance(m, (Sparse24Linear, BlockSparseLinear)):
            parent, _, child = fqn.rpartition(".")
            setattr(twin.get_submodule(parent), child, dense_linear(m.to_dense(), m.bias))
    return twin


def float_grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of a scalar loss w.r.t. every float parameter that trains (embeddings, norms, attention)."""
    model.zero_grad()
    out = model(x)
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_matches(config: str, want: torch.Tensor, got: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if config in SPARSE:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    else:
        assert sqnr_db(want, got) >= QUANT[config][1]


def tied_to_converted(ref: nn.Module, q: nn.Module) -> set[str]:
    """Names of the reference's parameters that are also the weight of a layer ``q`` converted (a tie)."""
    converted_weights = {id(ref.get_submodule(fqn).weight) for fqn in q.slimops_summary.converted}
    return {n for n, p in ref.named_parameters(remove_duplicate=False) if id(p) in converted_weights}


CASES = [(f, c) for f in FAMILIES for c in (*QUANT, *SPARSE)]


@pytest.mark.parametrize("family,config", CASES)
def test_converted_model_matches_its_reference_in_no_grad_and_grad_modes(family, config):
    q, ref = converted(family, config)
    if config == "half_fp16" and family.startswith("encoder"):
        # The fused encoder path would multiply fp32 inputs by fp16 weights: these layers are skipped.
        skipped = q.slimops_summary.skipped
        assert {f for f in skipped if f.endswith(("linear1", "linear2"))} and not q.slimops_summary.converted
        assert all("fused inference path" in why for f, why in skipped.items() if f.endswith(("linear1", "linear2")))
        return
    assert q.slimops_summary.converted, "nothing was converted"
    x = FAMILIES[family][1]()
    with torch.no_grad():
        want, got = ref(x), q(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert_matches(config, want, got)
    # With gradients (PyTorch's fused encoder path is off, every layer is called).
    with torch.enable_grad():
        assert_matches(config, ref(x).detach(), q(x).detach())
        want_g, got_g = float_grads(ref, x), float_grads(q, x)
    assert got_g and set(got_g) <= set(want_g), "the float parameters before the converted layers got no gradient"
    for name, g in got_g.items():
        if name in tied_to_converted(ref, q):
            continue  # T5's embedding is lm_head's weight in the reference: its gradient has a term more there
        if config in SPARSE:
            torch.testing.assert_close(g, want_g[name], rtol=1e-3, atol=1e-5, msg=name)
        else:
            assert sqnr_db(want_g[name], g) >= QUANT[config][2], name
    # Every parameter that trained in the reference trains in the converted model, unless converted.
    kept = {n for n, p in q.named_parameters() if p.requires_grad}
    assert set(want_g) & kept <= set(got_g)


# --------------------------------------------------------------------------- model code that reads .weight


@pytest.mark.parametrize("config", [*QUANT, "sparse_2_4", "sparse_block16"])
def test_t5_generates_and_its_layers_answer_weight_like_the_float_layers(config):
    q, _ = converted("t5", config)
    model = build("t5")
    for fqn in q.slimops_summary.converted:
        new, old = q.get_submodule(fqn), model.get_submodule(fqn)
        if config == "half_fp16":
            assert new.weight.dtype == torch.float16
        else:  # T5 casts its hidden states to wo.weight.dtype: the dtype the layer was converted from
            assert (new.weight.shape, new.weight.dtype, new.weight.device) == (old.weight.shape, old.weight.dtype, old.weight.device)
            assert not isinstance(new.weight, torch.Tensor)
    ids = _ids()
    out = q.model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 5) and ((out >= 0) & (out < VOCAB)).all()


def test_weight_spec_refuses_computation_with_a_clear_error():
    q, _ = converted("encoder_layer", "int8_dynamic")
    spec = q.layer.linear1.weight
    assert spec.shape == (FF, D) and spec.size(0) == FF and spec.dim() == 2 and spec.numel() == FF * D
    with pytest.raises(TypeError, match=r"linear: cannot compute with a WeightSpec.*Int8DynamicLinear.weight describes"):
        torch.nn.functional.linear(torch.randn(2, D), spec)
    with pytest.raises(AttributeError, match=r"'data' is not available: .*stored in qweight \+ weight_scale.*dequantize\(\)"):
        spec.data  # noqa: B018
    torch.testing.assert_close(
        q.layer.linear1.dequantize(), build("encoder_layer").layer.linear1.weight.detach(), rtol=0, atol=0.02
    )


@pytest.mark.parametrize("config", ["int8_dynamic", "sparse_2_4"])
def test_encoder_compiles_fullgraph_in_no_grad(config):
    q, ref = converted("encoder_stack", config)
    x = _hidden()
    with torch.no_grad():
        assert_matches(config, ref(x), torch.compile(q, fullgraph=True)(x))


def test_prepare_calibrates_layers_behind_the_fused_encoder_path():
    model = build("encoder_stack")
    config = slimops.Int8StaticConfig()
    slimops.prepare(model, config)
    with torch.no_grad():
        model(_hidden())  # no_grad + eval + padding mask: the fused, nested-tensor path
    observers = [m.observer for m in model.modules() if hasattr(m, "observer")]
    assert len(observers) == 4 and all(int(o.num_batches) == 1 for o in observers)
    slimops.convert(model, config)


def test_uncalibrated_layer_error_names_it():
    model = nn.Sequential(nn.Linear(8, 8), nn.ModuleDict({"unused_head": nn.Linear(8, 4)}))
    config = slimops.Int8StaticConfig()
    slimops.prepare(model, config)
    model[0](torch.randn(3, 8))
    with pytest.raises(ValueError, match="saw no data") as e:
        slimops.convert(model, config)
    assert "while converting '1.unused_head' (ObservedLinear)" in "\n".join(e.value.__notes__)
    assert type(model[0]).__name__ == "ObservedLinear"  # left as it was


# --------------------------------------------------------------------------- Mixture of Experts


def test_mixtral_experts_are_reported_and_warned_about():
    model = build("mixtral")
    with pytest.warns(UserWarning, match=r"\d+% of the model's parameter bytes stay as they were.*mlp.experts \(MixtralExperts\)"):
        slimops.convert(model, slimops.Int8DynamicConfig())
    summary = model.slimops_summary
    experts = {f: why for f, why in summary.untouched.items() if f.endswith("mlp.experts")}
    assert len(experts) == 2
    assert all("gate_up_proj [4, 128, 32]" in why and "down_proj [4, 32, 64]" in why for why in experts.values())
    expert_bytes = sum(p.numel() * 4 for f in experts for p in model.get_submodule(f).parameters())
    assert summary.untouched_share > expert_bytes / sum(p.numel() * 4 for p in build("mixtral").parameters())


# --------------------------------------------------------------------------- plan


class ReadsWeightData(nn.Module):
    """Model code that needs a real weight tensor: no packed layer can stand in for ``head``."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(32, 32)
        self.head = nn.Linear(32, 16)

    def forward(self, x):
        return self.head(self.body(x)) + self.head.weight.data.sum(0)[:16]


def test_plan_keeps_dense_the_layers_that_break_the_model(monkeypatch):
    plan_module = importlib.import_module("slimops.plan")  # slimops.plan is the function

    # Choose int8 wherever it was measured (timings on this CPU would pick dense at this size).
    monkeypatch.setattr(plan_module, "_choose", lambda layer, budget: next(n for n in layer.results if n != "dense"))
    torch.manual_seed(0)
    model = ReadsWeightData().eval()
    p = slimops.plan(model, torch.randn(4, 32), [slimops.Int8DynamicConfig()], max_error_db=float("inf"), repeats=2, warmup=1)
    assert p["body"] is not None and p["head"] is None
    assert "breaks the model's forward (AttributeError" in p.layers["head"].note
    slimops.convert(model, p)(torch.randn(4, 32))


def test_plan_keeps_dense_a_layer_it_saw_only_empty_inputs_for():
    model = nn.Sequential(nn.Linear(16, 16))
    p = slimops.plan(model, torch.randn(0, 16), [slimops.Int8DynamicConfig()], max_error_db=float("inf"), repeats=1, warmup=0)
    assert p["0"] is None and p.layers["0"].note.startswith("the recorded input is empty")
    assert not p.layers["0"].results  # no "exact" (-inf dB) measurement of nothing


@pytest.mark.parametrize("config", ["sparse_2_4", "sparse_block16"])
def test_sparse_layers_follow_half_and_compute_double_in_their_values_dtype(config):
    q, ref = converted("encoder_layer", config)
    x = _hidden()
    with torch.no_grad():
        want = ref(x)
        q.double()  # no kernel takes float64: the values stay fp32, float64 inputs are computed in fp32
        layer = q.layer.linear1
        assert layer.values.dtype == torch.float32 and layer.weight.dtype == torch.float64
        got = q(x.double())
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want.double(), rtol=1e-4, atol=1e-5)
        q.half()  # the values are the float weights: they follow, as nn.Linear's do
        assert layer.values.dtype == torch.float16 and layer.weight.dtype == torch.float16
        assert layer.bias.dtype == torch.float16 and q.layer.norm1.weight.dtype == torch.float16
