"""slimops.convert: module swaps, filters, skipped modules, atomicity and bad input."""

from __future__ import annotations

import dataclasses

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
