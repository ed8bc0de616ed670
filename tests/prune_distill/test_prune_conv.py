"""Pruning convolutions: MaskedConv2d against a float64 reference, the Pruner on CNNs."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimops import prune as P
from slimops.conversion import Unsupported
from slimops.nn import MaskedConv2d


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_pruner(model, *args, **kwargs) -> P.Pruner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers a pattern cannot take are listed in .skipped
        return P.Pruner(model, *args, **kwargs)


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


@pytest.mark.parametrize(
    "cin, cout, kernel, stride, padding, groups",
    [(3, 5, 3, 1, 1, 1), (6, 9, (3, 1), 2, 0, 3), (1, 17, 5, 1, 2, 1)],
)
def test_masked_conv2d_matches_the_float64_reference(cin, cout, kernel, stride, padding, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups)
    mask = torch.rand(conv.weight.shape, generator=_gen(1)) > 0.6
    layer = MaskedConv2d.from_float(conv, mask)
    with torch.no_grad():
        layer.weight[~mask] = 1e6  # a pruned weight must not reach the output, whatever it holds
    x = torch.randn(2, cin, 11, 7, generator=_gen(2)).requires_grad_()
    y = layer(x)
    w64 = torch.where(mask, conv.weight.detach().double(), 0)
    x64 = x.detach().double().requires_grad_()
    want = F.conv2d(x64, w64, conv.bias.detach().double(), stride, padding, 1, groups)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)

    g = torch.randn(y.shape, generator=_gen(3))
    y.backward(g)
    want.backward(g.double())
    assert (layer.weight.grad[~mask] == 0).all()  # exactly zero: the select has no gradient there
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)


def test_masked_conv2d_refuses_what_it_cannot_stand_in_for():
    with pytest.raises(Unsupported, match="padding_mode"):
        MaskedConv2d.from_float(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="mask shape"):
        MaskedConv2d.from_float(nn.Conv2d(2, 4, 3), torch.ones(4, 2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="dtype torch.bool"):
        MaskedConv2d.from_float(nn.Conv2d(2, 4, 3), torch.ones(4, 2, 3, 3))


def test_gradual_taylor_on_a_cnn_keeps_pruned_weights_zero_and_finalizes():
    model = cnn()
    pruner = make_pruner(model, "taylor", "unstructured", 0.75, schedule=P.gradual(end_step=12, frequency=3))
    assert set(pruner.layers) == {"0", "2", "6", "8"}
    assert isinstance(model[0], MaskedConv2d) and isinstance(model[2], MaskedConv2d)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for t in range(16):
        x = torch.randn(8, 1, 8, 8, generator=_gen(t))
        loss = F.cross_entropy(model(x), torch.randint(10, (8,), generator=_gen(100 + t)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
        for layer in pruner.layers.values():
            assert (layer.weight[~layer.mask] == 0).all(), t
    report = pruner.sparsity_report()
    assert report.sparsity == pytest.approx(0.75, abs=1e-3)
    for fqn in ("0", "2"):
        assert report.layers[fqn].pruned == round(0.75 * pruner.layers[fqn].mask.numel())

    x = torch.randn(5, 1, 8, 8, generator=_gen(50))
    with torch.no_grad():
        masked_out = model(x)
    masks = {fqn: layer.mask.clone() for fqn, layer in pruner.layers.items()}
    forms = pruner.finalize()
    assert type(model[0]) is nn.Conv2d and type(model[2]) is nn.Conv2d
    assert "no sparse convolution kernel" in forms["0"] and "75% sparse" in forms["2"]
    assert (model[2].weight[~masks["2"]] == 0).all() and (model[2].weight[masks["2"]] != 0).any()
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked_out)


def test_channel_pattern_shrinks_a_conv_chain():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1))
    pruner = make_pruner(model, "magnitude", "channel", sparsity=0.5)
    assert set(pruner.layers) == {"0", "2"} and "4" in pruner.skipped  # its output leaves the chain
    pruner.step()
    x = torch.randn(2, 3, 9, 9, generator=_gen(1))
    with torch.no_grad():
        masked_out = model(x)
    forms = pruner.finalize()
    assert "shrunk: 8 -> 4" in forms["0"] and "shrunk: 6 -> 3" in forms["2"]
    assert model[0].weight.shape == (4, 3, 3, 3) and model[2].weight.shape == (3, 4, 3, 3)
    assert model[4].weight.shape == (4, 3, 1, 1)
    with torch.no_grad():
        # No zero padding, so removing a channel (bias folded into the consumer) is exact.
        torch.testing.assert_close(model(x), masked_out, rtol=1e-5, atol=1e-5)


def test_conv_layers_a_pattern_cannot_take_are_skipped_with_the_reason():
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3),  # [16, 9]: no 16x16 tile fits
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(32, 16, 1),  # [16, 32]: two 16x16 tiles
    )
    before = copy.deepcopy(model)
    pruner = make_pruner(model, "magnitude", P.block(16), sparsity=0.5)
    assert set(pruner.layers) == {"4"}
    assert "16" in pruner.skipped["0"] and "padding_mode" in pruner.skipped["2"]
    assert type(model[0]) is nn.Conv2d and torch.equal(model[0].weight, before[0].weight)


def test_masked_layers_train_under_autocast():
    """Autocast does not reach custom ops: MaskedLinear casts like nn.Linear, and the fp32
    weights get fp32 gradients that are exactly zero where pruned."""
    model = cnn()
    pruner = make_pruner(model, "magnitude", "unstructured", 0.5)
    pruner.step()
    x = torch.randn(4, 1, 8, 8, generator=_gen(7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().pow(2).mean().backward()
    for layer in pruner.layers.values():
        assert layer.weight.grad.dtype == torch.float32
        assert (layer.weight.grad[~layer.mask] == 0).all() and (layer.weight.grad[layer.mask] != 0).any()


def test_a_layer_used_at_two_places_is_masked_and_packed_at_both():
    """One nn.Linear object under two names: both places get the same masked (then packed) layer,
    so pruned weights get no gradient through either use and the places stay tied."""
    torch.manual_seed(0)
    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(32, 4))
    pruner = make_pruner(model, "magnitude", P.block(16), 0.5)
    pruner.step()
    assert model[0] is model[2] and type(model[0]).__name__ == "MaskedLinear"
    model(torch.randn(3, 32, generator=_gen(1))).sum().backward()
    assert (model[0].weight.grad[~model[0].mask] == 0).all()
    pruner.finalize()
    assert model[0] is model[2] and type(model[0]).__name__ == "BlockSparseLinear"
