"""slimops.prune: criteria, patterns, scope, schedules, the Pruner (masks, report, finalize),
channel removal along chains, SparseConfig through slimops.convert, and bad input."""

from __future__ import annotations

import copy
import io
import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops import prune as P
from slimops.nn import BlockSparseLinear, MaskedLinear, Sparse24Linear


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp(seed: int = 0, widths=(64, 64, 64, 32)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (k, n) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(k, n))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def backward_passes(model: nn.Module, batches: int = 2, seed: int = 0) -> None:
    k = next(m for m in model.modules() if isinstance(m, (nn.Linear, MaskedLinear))).in_features
    for i in range(batches):
        x = torch.randn(16, k, generator=_gen(seed + i))
        model.zero_grad()
        model(x).pow(2).mean().backward()


def make_pruner(model, *args, **kwargs) -> P.Pruner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers a pattern cannot take are listed in .skipped
        return P.Pruner(model, *args, **kwargs)


def masks_of(pruner: P.Pruner) -> dict[str, torch.Tensor]:
    return {fqn: layer.mask.clone() for fqn, layer in pruner.layers.items()}


# ---------------------------------------------------------------- criteria


def test_criteria_registry_and_scores():
    assert set(P.CRITERIA) == {"magnitude", "gradient", "taylor", "fisher", "random"}
    assert isinstance(P.get_criterion("obd"), P.FisherCriterion)
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    grads = [torch.randn(5, 6, generator=_gen(i)) for i in range(3)]
    crits = {name: P.get_criterion(name) for name in P.CRITERIA}
    for g in grads:
        lin.weight.grad = g
        for crit in crits.values():
            assert crit.observe(nn.Sequential(lin)) == 1
    w = lin.weight.detach()
    g = torch.stack(grads)
    torch.testing.assert_close(crits["magnitude"].scores(lin.weight), w.abs())
    torch.testing.assert_close(crits["gradient"].scores(lin.weight), g.abs().mean(0))
    torch.testing.assert_close(crits["taylor"].scores(lin.weight), (w * g).abs().mean(0))
    torch.testing.assert_close(crits["fisher"].scores(lin.weight), w.square() * g.square().mean(0))
    assert crits["taylor"].num_observed(lin.weight) == 3
    crits["taylor"].reset()
    assert crits["taylor"].num_observed(lin.weight) == 0


def test_random_criterion_is_seeded():
    w = nn.Parameter(torch.zeros(8, 8))
    a, b, c = P.RandomCriterion(seed=1), P.RandomCriterion(seed=1), P.RandomCriterion(seed=2)
    assert torch.equal(a.scores(w), b.scores(w))
    assert not torch.equal(a.scores(w), c.scores(w))
    assert torch.equal(a.scores(w), a.scores(w)), "a weight keeps its scores"


def test_gradient_criterion_without_gradients_says_how_to_feed_it():
    lin = nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"no gradient.*observe"):
        P.TaylorCriterion().scores(lin.weight)


# ---------------------------------------------------------------- patterns, exact counts


@pytest.mark.parametrize("criterion", sorted(P.CRITERIA))
def test_unstructured_exact_count(criterion):
    model = mlp()
    pruner = make_pruner(model, criterion, "unstructured", sparsity=0.6)
    backward_passes(model)
    pruner.step()
    for fqn, mask in masks_of(pruner).items():
        assert int((~mask).sum()) == round(0.6 * mask.numel()), fqn
        assert (pruner.layers[fqn].weight[~mask] == 0).all()


def test_magnitude_prunes_the_smallest_weights():
    model = mlp()
    weights = {fqn: m.weight.detach().clone() for fqn, m in model.named_modules() if isinstance(m, nn.Linear)}
    pruner = make_pruner(model, "magnitude", "unstructured", sparsity=0.3)
    pruner.step()
    for fqn, mask in masks_of(pruner).items():
        w = weights[fqn].abs()
        assert w[~mask].max() <= w[mask].min()


@pytest.mark.parametrize("criterion", sorted(P.CRITERIA))
def test_2_4_masks(criterion):
    model = mlp()
    pruner = make_pruner(model, criterion, "2:4", sparsity=None)
    assert pruner.sparsity == 0.5
    backward_passes(model)
    pruner.step()
    for mask in masks_of(pruner).values():
        n, k = mask.shape
        assert torch.equal(mask.reshape(n, k // 4, 4).sum(-1), torch.full((n, k // 4), 2))
        assert P.is_2_4(mask)


def test_n_m_on_its_way_prunes_candidates_only():
    model = mlp()
    pruner = make_pruner(model, "magnitude", P.n_m(2, 4), sparsity=0.5)
    pruner.update_masks(0.25)  # half way along a gradual schedule
    for mask in masks_of(pruner).values():
        n, k = mask.shape
        assert int((~mask).sum()) == round(0.25 * mask.numel())
        assert (mask.reshape(n, k // 4, 4).sum(-1) >= 2).all()
    pruner.update_masks(0.5)
    assert all(P.is_2_4(m) for m in masks_of(pruner).values())


@pytest.mark.parametrize("criterion", sorted(P.CRITERIA))
def test_block_masks(criterion):
    model = mlp()
    pruner = make_pruner(model, criterion, P.block(16), sparsity=0.5)
    backward_passes(model)
    pruner.step()
    for mask in masks_of(pruner).values():
        n, k = mask.shape
        tiles = mask.reshape(n // 16, 16, k // 16, 16)
        kept = tiles.any(dim=3).any(dim=1)
        assert torch.equal(tiles.all(dim=3).all(dim=1), kept), "every tile is all kept or all pruned"
        assert int((~kept).sum()) == round(0.5 * kept.numel())


@pytest.mark.parametrize("criterion", sorted(P.CRITERIA))
def test_channel_masks(criterion):
    model = mlp()
    pruner = make_pruner(model, criterion, "channel", sparsity=0.25)
    assert list(pruner.layers) == ["0", "2"] and "4" in pruner.skipped  # the output layer has no consumer
    backward_passes(model)
    pruner.step()
    for mask in masks_of(pruner).values():
        rows = mask.any(dim=1)
        assert torch.equal(mask.all(dim=1), rows), "whole rows"
        assert int((~rows).sum()) == round(0.25 * mask.shape[0])


# ---------------------------------------------------------------- scope


def _two_layer_scope_model() -> nn.Sequential:
    """Layer 0: 80% tiny weights and 20% large ones. Layer 1: all weights about the same size."""
    model = nn.Sequential(nn.Linear(40, 40, bias=False), nn.ReLU(), nn.Linear(40, 40, bias=False))
    with torch.no_grad():
        big = torch.rand(40, 40, generator=_gen(0)) < 0.2
        sign = torch.randint(0, 2, (40, 40), generator=_gen(1)) * 2 - 1
        model[0].weight.copy_(torch.where(big, 1.0, 1e-3) * sign * (1 + 0.01 * torch.rand(40, 40, generator=_gen(2))))
        model[2].weight.copy_(sign * (1 + 0.1 * torch.rand(40, 40, generator=_gen(3))))
    return model


def test_layer_scope_prunes_each_layer_equally_global_follows_the_scores():
    model = _two_layer_scope_model()
    tiny = int((model[0].weight.abs() < 0.5).sum())
    layer = make_pruner(copy.deepcopy(model), "magnitude", "unstructured", sparsity=0.5, scope="layer")
    layer.step()
    report = layer.sparsity_report()
    assert report["0"].pruned == report["2"].pruned == 800

    glob = make_pruner(copy.deepcopy(model), "magnitude", "unstructured", sparsity=0.5, scope="global")
    glob.step()
    report = glob.sparsity_report()
    # Scores are divided by each layer's mean, so the scale of a layer does not matter: the tiny
    # weights of layer 0 go first, then the smallest of layer 1 to reach 50% overall, exactly.
    assert report["0"].pruned == tiny
    assert report["2"].pruned == 1600 - tiny
    assert report.sparsity == 0.5


def test_global_scope_is_scale_free_and_keeps_every_layer_alive():
    model = _two_layer_scope_model()
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[2].weight.mul_(1000)
    a = make_pruner(model, "magnitude", "unstructured", sparsity=0.5, scope="global")
    b = make_pruner(scaled, "magnitude", "unstructured", sparsity=0.5, scope="global")
    a.step()
    b.step()
    assert all(torch.equal(x, y) for x, y in zip(masks_of(a).values(), masks_of(b).values()))
    c = make_pruner(_two_layer_scope_model(), "magnitude", "channel", sparsity=0.9, scope="global")
    assert list(c.layers) == ["0"]
    c.step()
    assert masks_of(c)["0"].any()


# ---------------------------------------------------------------- schedules


def test_cubic_schedule_values():
    s = P.gradual(end_step=100, begin_step=10, frequency=10, initial_sparsity=0.1)
    final = 0.9
    assert s.sparsity(0, final) == 0.1 and s.sparsity(10, final) == 0.1
    assert s.sparsity(100, final) == final and s.sparsity(500, final) == final
    for t in (20, 55, 73):
        want = final + (0.1 - final) * (1 - (t - 10) / 90) ** 3
        assert s.sparsity(t, final) == pytest.approx(want, abs=1e-12)
    assert s.sparsity(55, final) == pytest.approx(0.8)  # (1 - 1/2)^3 = 1/8 of the way left
    assert [t for t in range(120) if s.updates_at(t)] == list(range(10, 101, 10))
    uneven = P.gradual(end_step=25, frequency=10)
    assert [t for t in range(40) if uneven.updates_at(t)] == [0, 10, 20, 25]
    values = [s.sparsity(t, final) for t in range(10, 101)]
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_pruner_follows_the_gradual_schedule():
    model = mlp()
    schedule = P.gradual(end_step=20, frequency=5)
    pruner = make_pruner(model, "magnitude", "unstructured", sparsity=0.8, schedule=schedule)
    seen = []
    for t in range(25):
        pruner.step()
        seen.append(pruner.sparsity_report()["0"].pruned)
        expect_at = max(u for u in range(t + 1) if schedule.updates_at(u))
        assert seen[-1] == round(schedule.sparsity(expect_at, 0.8) * 64 * 64), t
    assert seen[-1] == round(0.8 * 64 * 64)
    assert all(a <= b for a, b in itertools.pairwise(seen)), "masks only grow sparser"


def test_one_shot_at_a_later_step():
    pruner = make_pruner(mlp(), "magnitude", "unstructured", 0.5, schedule=P.one_shot(step=3))
    for _ in range(3):
        pruner.step()
        assert pruner.sparsity_report().sparsity == 0
    pruner.step()
    assert pruner.sparsity_report().sparsity == 0.5


def test_gradual_taylor_with_adamw_keeps_pruned_weights_zero():
    """Masks change mid-training while AdamW carries momentum: pruned weights stay exactly zero."""
    model = mlp(widths=(32, 48, 10))
    pruner = make_pruner(model, "taylor", "unstructured", 0.75, schedule=P.gradual(end_step=12, frequency=3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for t in range(16):
        x = torch.randn(16, 32, generator=_gen(t))
        loss = F.cross_entropy(model(x), torch.randint(10, (16,), generator=_gen(100 + t)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
        for layer in pruner.layers.values():
            assert (layer.weight[~layer.mask] == 0).all(), t
    assert pruner.sparsity_report().sparsity == pytest.approx(0.75, abs=1e-3)


# ---------------------------------------------------------------- channel removal


@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid, nn.GELU])
def test_channel_pruning_shrinks_and_matches_the_masked_model(act):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), act(), nn.Linear(32, 8))
    pruner = make_pruner(model, "magnitude", "channel", sparsity=0.5)
    pruner.step()
    x = torch.randn(5, 16, generator=_gen(1))
    with torch.no_grad():
        masked_out = model(x)
    forms = pruner.finalize()
    assert "shrunk: 32 -> 16" in forms["0"]
    assert model[0].weight.shape == (16, 16) and model[0].bias.shape == (16,)
    assert model[2].weight.shape == (8, 16) and model[2].in_features == 16
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked_out)


def test_channel_pruning_through_batchnorm_and_two_layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Dropout(0.1),
        nn.Linear(32, 4),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.eval()
    pruner = make_pruner(model, "magnitude", "channel", sparsity=0.25)
    assert list(pruner.layers) == ["0", "3"]
    pruner.step()
    x = torch.randn(6, 16, generator=_gen(2))
    with torch.no_grad():
        masked_out = model(x)
    pruner.finalize()
    assert model[0].out_features == 24 and model[1].num_features == 24 and model[1].running_mean.shape == (24,)
    assert model[3].weight.shape == (24, 24) and model[6].weight.shape == (4, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked_out)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


def test_channel_pruning_refuses_what_is_not_a_simple_chain():
    model = nn.Sequential(Residual(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(P.ChannelPruningError, match="only chains inside an nn.Sequential") as e:
        P.remove_channels(model, "0.up", torch.ones(16, dtype=torch.bool))
    assert e.value.fqn == "0.up" and "Residual.forward" in e.value.reason
    with pytest.raises(P.ChannelPruningError, match=r"LayerNorm"):
        P.channel_consumer(model, "1")
    with pytest.raises(P.ChannelPruningError, match=r"Flatten"):
        P.channel_consumer(model, "3")
    with pytest.raises(P.ChannelPruningError, match="leaves"):
        P.channel_consumer(model, "5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = P.Pruner(model, "magnitude", "channel", sparsity=0.5)
    assert [str(w.message)[:25] for w in caught] == ["Pruner leaves 5 layer(s) ", "Pruner selected no layer"]
    assert set(pruner.skipped) == {"0.up", "0.down", "1", "3", "5"}
    assert "LayerNorm" in pruner.skipped["1"]
    report = io.StringIO()
    from rich.console import Console

    pruner.sparsity_report().print(Console(file=report, width=200))
    assert "skipped" in report.getvalue() and "LayerNorm" in report.getvalue()


def test_shared_module_refuses():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), shared)
    with pytest.raises(P.ChannelPruningError, match="more than one place"):
        P.channel_consumer(model, "0")


def test_prune_channels_conv_chain_is_exact_without_padding():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.eval()
    # The reference: the same model with the pruned channels' weights zeroed (their bias stays).
    reference = copy.deepcopy(model)
    result = P.prune_channels(model, 0.5, "magnitude")
    assert result.pruned == {"0": (8, 4), "3": (6, 3)}
    assert "Flatten" in result.skipped["5"] and "7" in result.skipped
    with torch.no_grad():
        for fqn, c in (("0", 8), ("3", 6)):
            w = reference.get_submodule(fqn).weight
            keep = w.abs().reshape(c, -1).mean(1).argsort(descending=True)[: c // 2]
            drop = torch.ones(c, dtype=torch.bool)
            drop[keep] = False
            w[drop] = 0
    assert model[0].weight.shape == (4, 3, 3, 3) and model[3].weight.shape == (3, 4, 3, 3)
    assert model[5].weight.shape == (4, 3, 1, 1) and model[1].num_features == 4
    x = torch.randn(2, 3, 8, 8, generator=_gen(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_prune_channels_refuses_grouped_convs():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    result = P.prune_channels(model, 0.5)
    assert "grouped" in result.skipped["0"]
    assert list(result.pruned) == ["2"]


# ---------------------------------------------------------------- finalize


@pytest.mark.parametrize(
    "pattern,sparsity,form",
    [
        ("2:4", 0.5, Sparse24Linear),
        (P.block(32), 0.75, BlockSparseLinear),
        # Packed with the pruned 16x16 tile, not a coarser one that would store zeros.
        (P.block(16), 0.75, BlockSparseLinear),
        (P.block(16), 0.25, nn.Linear),  # 25% empty tiles does not pay
        ("unstructured", 0.75, nn.Linear),  # no empty tile to skip
    ],
    ids=["2:4", "block32-75", "block16-75", "block16-25", "unstructured"],
)
def test_finalize_picks_the_packed_form(pattern, sparsity, form):
    model = mlp(widths=(64, 128, 64))
    pruner = make_pruner(model, "magnitude", pattern, sparsity=sparsity)
    pruner.step()
    x = torch.randn(7, 64, generator=_gen(4))
    with torch.no_grad():
        masked_out = model(x)
    forms = pruner.finalize()
    assert set(forms) == {"0", "2"}
    for fqn in forms:
        assert type(model.get_submodule(fqn)) is form, forms[fqn]
    if form is BlockSparseLinear:
        b = pattern.size
        assert model[0].block_size == (b, b) and f"{b}x{b}" in forms["0"]
        assert model[0].density == pytest.approx(0.25)
    if form is nn.Linear:
        assert "dense" in forms["0"]
        assert int((model[0].weight == 0).sum()) >= round(sparsity * 64 * 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked_out)
    report = pruner.sparsity_report()
    assert report["0"].form == forms["0"] and report["0"].sparsity == pytest.approx(sparsity, abs=1e-3)
    with pytest.raises(RuntimeError, match="finalize"):
        pruner.step()


def test_finalize_without_pruning_is_dense():
    model = mlp()
    pruner = make_pruner(model, "magnitude", "unstructured", 0.5, schedule=P.one_shot(step=10))
    pruner.step()
    forms = pruner.finalize()
    assert all("nothing pruned" in f for f in forms.values())
    assert all(type(m) is not MaskedLinear for m in model.modules())


def test_sparsity_report_table():
    model = mlp()
    pruner = make_pruner(model, "magnitude", "unstructured", 0.5)
    pruner.step()
    report = pruner.sparsity_report()
    assert set(report.layers) == {"0", "2", "4"} and report.sparsity == 0.5 and report.step == 1
    assert report["0"].shape == (64, 64) and report["0"].numel == 4096 and report["0"].pruned == 2048
    from rich.console import Console

    out = io.StringIO()
    report.print(Console(file=out, width=200))
    text = out.getvalue()
    assert "50.0%" in text and "total" in text and "2048/4096" in text


def test_pruner_shares_parameters_so_an_earlier_optimizer_works():
    model = mlp()
    weight = model[0].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = make_pruner(model, "magnitude", "unstructured", 0.5)
    assert isinstance(model[0], MaskedLinear) and model[0].weight is weight
    pruner.step()
    backward_passes(model, 1)
    opt.step()
    assert (weight[~model[0].mask] == 0).all()


def test_filter_fn_and_skipped_layers():
    model = mlp(widths=(64, 64, 30))
    pruner = make_pruner(model, "magnitude", P.block(16), 0.5, filter_fn=lambda m, fqn: fqn != "0")
    assert list(pruner.layers) == [] and "block 16x16 does not divide" in pruner.skipped["2"]
    assert type(model[0]) is nn.Linear


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.5", True, math.nan])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        P.Pruner(mlp(), "magnitude", "unstructured", bad)
    with pytest.raises(ValueError, match="sparsity"):
        slimops.SparseConfig(bad)


def test_bad_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown pruning criterion 'l1'.*magnitude.*gradient.*taylor.*fisher.*random"):
        P.Pruner(mlp(), "l1")
    with pytest.raises(ValueError, match=r"unknown sparsity pattern 'rows'.*unstructured.*block.*2:4.*channel"):
        P.Pruner(mlp(), "magnitude", "rows")
    with pytest.raises(ValueError, match="scope"):
        P.Pruner(mlp(), scope="model")
    with pytest.raises(ValueError, match="gradual"):
        P.Pruner(mlp(), schedule="gradual")
    with pytest.raises(ValueError, match="unknown schedule"):
        P.Pruner(mlp(), schedule="cosine")
    with pytest.raises(ValueError, match=r"must be 0.5 for n_m\(2, 4\)"):
        P.Pruner(mlp(), "magnitude", "2:4", sparsity=0.75)
    with pytest.raises(ValueError, match="initial_sparsity"):
        P.Pruner(mlp(), sparsity=0.3, schedule=P.gradual(10, initial_sparsity=0.5))
    with pytest.raises(TypeError, match="nn.Module"):
        P.Pruner("model")


def test_bad_schedules_and_patterns():
    with pytest.raises(ValueError, match="end_step"):
        P.gradual(end_step=5, begin_step=5)
    with pytest.raises(ValueError, match="frequency"):
        P.gradual(end_step=10, frequency=0)
    with pytest.raises(ValueError, match="power"):
        P.gradual(end_step=10, power=0)
    with pytest.raises(ValueError, match="step"):
        P.one_shot(-1)
    with pytest.raises(ValueError, match="size"):
        P.block(0)
    with pytest.raises(ValueError, match="n must be smaller than m"):
        P.n_m(4, 4)
    pruner = make_pruner(mlp(), "magnitude", "2:4", sparsity=0.5)
    with pytest.raises(ValueError, match="exceeds"):
        pruner.update_masks(0.6)


# ---------------------------------------------------------------- SparseConfig


def test_sparse_config_2_4_through_convert():
    model = mlp(widths=(64, 44, 10))
    x = torch.randn(3, 64, generator=_gen(5))
    w = model[0].weight.detach().clone()
    slimops.convert(model, slimops.SparseConfig(0.5, pattern="2:4"))
    assert isinstance(model[0], Sparse24Linear)
    assert "divisible by 8" in model.slimops_summary.skipped["2"]  # 44 inputs
    # The magnitude 2:4 mask keeps the 2 largest |w| of each group of 4.
    top = w.abs().reshape(44, 16, 4).argsort(-1, descending=True)[..., :2]
    mask = torch.zeros(44, 16, 4, dtype=torch.bool).scatter_(-1, top, True).reshape(44, 64)
    torch.testing.assert_close(model[0](x), F.linear(x, w * mask, model[0].bias))


def test_sparse_config_block_and_unstructured():
    model = mlp(widths=(64, 64, 64))
    slimops.convert(model, slimops.SparseConfig(0.75, pattern="block", block_size=16))
    assert all(isinstance(model[i], BlockSparseLinear) for i in (0, 2))
    assert model[0].density == pytest.approx(0.25) and model[0].block_size == (16, 16)

    model = mlp(widths=(64, 64, 64))
    slimops.convert(model, slimops.SparseConfig(0.6))
    assert type(model[0]) is nn.Linear and int((model[0].weight == 0).sum()) == round(0.6 * 64 * 64)
    assert model.slimops_summary.converted["0"] == "Linear -> Linear"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_config_block_keeps_its_tile_at_high_sparsity(seed):
    """At 90% a coarser tile could also have half its tiles empty; the pattern's tile is kept,
    so the stored size does not depend on the weights and saved files fit any skeleton."""
    torch.manual_seed(seed)
    model = slimops.convert(nn.Sequential(nn.Linear(512, 512)), slimops.SparseConfig(0.9, pattern="block", block_size=16))
    assert model[0].block_size == (16, 16)
    assert model[0].values.numel() == round(0.1 * 32 * 32) * 16 * 16


def test_sparse_config_gradient_criterion_reads_grads():
    model = mlp(widths=(64, 32, 16))
    with pytest.raises(ValueError, match="backward pass"):
        slimops.convert(model, slimops.SparseConfig(0.5, criterion="taylor"))
    assert type(model[0]) is nn.Linear and (model[0].weight != 0).all(), "a failed convert changes nothing"
    backward_passes(model, 1)
    slimops.convert(model, slimops.SparseConfig(0.5, pattern="2:4", criterion="taylor"))
    assert isinstance(model[0], Sparse24Linear) and isinstance(model[2], Sparse24Linear)


def test_sparse_config_save_load_roundtrip(tmp_path):
    config = slimops.SparseConfig(0.5, pattern="2:4")
    model = slimops.convert(mlp(widths=(64, 32, 16)), config)
    path = tmp_path / "sparse.safetensors"
    slimops.save(model, path)
    skeleton = slimops.convert(mlp(seed=1, widths=(64, 32, 16)), config)
    slimops.load(path, skeleton)
    x = torch.randn(2, 64, generator=_gen(6))
    torch.testing.assert_close(skeleton(x), model(x))


def test_sparse_config_bad_input():
    with pytest.raises(ValueError, match=r"unknown pattern 'channel'.*unstructured, 2:4, block"):
        slimops.SparseConfig(0.5, pattern="channel")
    with pytest.raises(ValueError, match="0.5 for pattern '2:4'"):
        slimops.SparseConfig(0.3, pattern="2:4")
    with pytest.raises(ValueError, match="block_size"):
        slimops.SparseConfig(0.5, pattern="block", block_size=48)
    with pytest.raises(ValueError, match="unknown pruning criterion"):
        slimops.SparseConfig(0.5, criterion="l2")
