"""slimops.prune.Pruner as a drop-in on real training loops: Hugging Face GPT-2 (its ``Conv1D``
layers and the lm_head tied to the input embedding), a ``torch.amp.GradScaler`` that skips
overflowing steps, and frozen layers with gradient criteria."""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops import prune as P
from slimops.conversion import Unsupported
from slimops.nn import BlockSparseLinear, MaskedLinear, Sparse24Linear


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_pruner(model, *args, **kwargs) -> P.Pruner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers left dense are listed in .skipped
        return P.Pruner(model, *args, **kwargs)


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def gpt2(transformers, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # bos/eos inside the small vocabulary: transformers warns about its 50256 defaults otherwise.
    cfg = transformers.GPT2Config(
        vocab_size=256, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg)


CONV1DS = [
    f"transformer.h.{i}.{name}" for i in range(2) for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
]


def conv1d_mlp(transformers, seed: int = 0) -> nn.Sequential:
    """Conv1D(64 -> 96), GELU, Conv1D(96 -> 32): weights [in, out], random biases."""
    Conv1D = transformers.pytorch_utils.Conv1D
    torch.manual_seed(seed)
    model = nn.Sequential(Conv1D(96, 64), nn.GELU(), Conv1D(32, 96))
    for m in (model[0], model[2]):
        nn.init.normal_(m.weight, std=0.2)
        nn.init.normal_(m.bias, std=0.2)
    return model


# ---------------------------------------------------------------- GPT-2: Conv1D and the tied lm_head


def test_gpt2_prunes_the_conv1d_layers_and_leaves_the_tied_head_and_embedding_alone(transformers):
    model = gpt2(transformers)
    wte = model.transformer.wte.weight.detach().clone()
    with pytest.warns(UserWarning, match="lm_head"):
        pruner = P.Pruner(model, "magnitude", "unstructured", 0.5)
    assert list(pruner.layers) == CONV1DS
    assert set(pruner.skipped) == {"lm_head"}
    assert "transformer.wte" in pruner.skipped["lm_head"] and "tied" in pruner.skipped["lm_head"]
    pruner.step()
    assert torch.equal(model.transformer.wte.weight, wte), "the tied embedding must not be zeroed"
    assert model.lm_head.weight is model.transformer.wte.weight
    for fqn in CONV1DS:
        assert pruner.sparsity_report()[fqn].sparsity == 0.5


def test_a_linear_tied_to_an_embedding_is_skipped_naming_it():
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(32, 16), "body": nn.Linear(16, 16), "head": nn.Linear(16, 32)})
    model.head.weight = model.emb.weight
    before = model.emb.weight.detach().clone()
    pruner = make_pruner(model, "magnitude", "unstructured", 0.5)
    assert list(pruner.layers) == ["body"] and "emb.weight" in pruner.skipped["head"]
    pruner.step()
    assert torch.equal(model.emb.weight, before)
    # prune_channels replaces the weights it shrinks: a tied weight is refused the same way.
    seq = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))
    emb = nn.Embedding(16, 24)
    emb.weight = seq[0].weight
    result = P.prune_channels(nn.ModuleDict({"seq": seq, "emb": emb}), 0.5)
    assert result.pruned == {} and "emb.weight" in result.skipped["seq.0"]


def _topk_keep_2_4(scores_out_in: torch.Tensor) -> torch.Tensor:
    """The 2:4 keep-mask of a [out, in] score matrix: the 2 highest of every 4 consecutive inputs."""
    n, k = scores_out_in.shape
    g = scores_out_in.reshape(n, k // 4, 4)
    top = g.argsort(dim=-1, descending=True, stable=True)[..., :2]
    return torch.zeros_like(g, dtype=torch.bool).scatter_(-1, top, True).reshape(n, k)


def test_conv1d_patterns_see_out_by_in_and_pruned_weights_stay_zero_in_its_own_parameter(transformers):
    """2:4 runs along the input dimension, i.e. down the columns of a Conv1D's [in, out] weight."""
    model = conv1d_mlp(transformers)
    convs = [model[0], model[2]]
    params = [c.weight for c in convs]
    want = [_topk_keep_2_4(c.weight.detach().double().t().abs()) for c in convs]  # float64 reference
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # built before the Pruner
    pruner = make_pruner(model, "magnitude", "2:4")
    pruner.step()
    for conv, p, keep, (fqn, layer) in zip(convs, params, want, pruner.layers.items()):
        assert isinstance(layer, MaskedLinear) and layer.transposed and layer.weight is p
        assert (layer.in_features, layer.out_features) == (p.shape[0], p.shape[1])
        assert torch.equal(layer.mask, keep.t()), fqn
        assert torch.equal(conv.weight == 0, ~keep.t()), fqn
    before = [p.detach().clone() for p in params]
    for t in range(3):
        x = torch.randn(8, 64, generator=_gen(t))
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        for p, keep in zip(params, want):
            assert (p[~keep.t()] == 0).all(), t  # exactly zero in the Conv1D's own parameter, every step
        pruner.step()
    for p, b, keep in zip(params, before, want):
        assert not torch.equal(p[keep.t()], b[keep.t()]), "the optimizer built before the Pruner trains it"


def _masked_reference64(dense: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """``dense`` in float64 with each Conv1D weight [in, out] multiplied by its [out, in] mask's transpose."""
    ref = copy.deepcopy(dense).double()
    with torch.no_grad():
        for fqn, mask in masks.items():
            ref.get_submodule(fqn).weight.mul_(mask.t().double())
    return ref


@pytest.mark.parametrize(
    "pattern, sparsity, form",
    [("2:4", None, Sparse24Linear), (P.block(16), 0.75, BlockSparseLinear), ("unstructured", 0.5, nn.Linear)],
)
def test_gpt2_finalize_packs_the_conv1d_layers_and_matches_the_masked_model(transformers, pattern, sparsity, form):
    model = gpt2(transformers).eval()
    dense = copy.deepcopy(model)
    pruner = make_pruner(model, "magnitude", pattern, sparsity)
    pruner.step()
    masks = {fqn: layer.out_first(layer.mask).clone() for fqn, layer in pruner.layers.items()}
    ids = torch.randint(0, 256, (2, 12), generator=_gen(1))
    want = _masked_reference64(dense, masks)(ids).logits
    with torch.no_grad():
        masked = model(ids).logits
    forms = pruner.finalize()
    assert set(forms) == set(CONV1DS)
    with torch.no_grad():
        packed = model(ids).logits
    for fqn in CONV1DS:
        layer = model.get_submodule(fqn)
        assert type(layer) is form, forms[fqn]
        assert (layer.in_features, layer.out_features) == tuple(masks[fqn].shape[::-1])
    torch.testing.assert_close(masked.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(packed.double(), want, rtol=1e-4, atol=1e-4)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_gpt2_gradual_taylor_trains_and_the_channel_pattern_skips_conv1d(transformers):
    model = gpt2(transformers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pruner = make_pruner(model, "taylor", "unstructured", 0.5, schedule=P.gradual(end_step=4, frequency=2))
    for t in range(6):
        ids = torch.randint(0, 256, (2, 12), generator=_gen(t))
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
        pruner.step()
    assert pruner.sparsity_report().sparsity == pytest.approx(0.5, abs=1e-3)
    for layer in pruner.layers.values():
        assert (layer.weight[~layer.mask] == 0).all()

    channel = make_pruner(gpt2(transformers), "magnitude", "channel", 0.25)
    assert channel.layers == {}
    assert all("Conv1D" in channel.skipped[fqn] for fqn in CONV1DS)


def test_conv1d_siblings_criterion_observe_and_sparse_config_read_its_gradient(transformers):
    model = conv1d_mlp(transformers)
    x = torch.randn(8, 64, generator=_gen(0))
    model(x).pow(2).mean().backward()
    crit = P.get_criterion("taylor")
    assert crit.observe(model) == 2
    w, g = model[0].weight.detach().double(), model[0].weight.grad.double()
    torch.testing.assert_close(crit.scores(model[0].weight).double(), (w * g).abs())
    # SparseConfig converts a Conv1D through an nn.Linear stand-in that carries the gradient.
    want = (w * g).abs().t()  # [out, in], float64
    keep = want >= want.flatten().kthvalue(want.numel() // 2 + 1).values
    slimops.convert(model, slimops.SparseConfig(0.5, criterion="taylor"))
    assert type(model[0]) is nn.Linear
    assert torch.equal(model[0].weight != 0, keep)


@pytest.mark.parametrize("nx, nf", [(20, 24), (64, 5)])
def test_masked_linear_on_a_conv1d_matches_the_float64_reference(transformers, nx, nf):
    torch.manual_seed(0)
    conv = transformers.pytorch_utils.Conv1D(nf, nx)
    nn.init.normal_(conv.bias)
    mask = torch.rand(nx, nf, generator=_gen(1)) > 0.4  # shaped like the weight: [in, out]
    layer = MaskedLinear.from_float(conv, mask)
    x = torch.randn(3, 7, nx, generator=_gen(2))
    w64 = (conv.weight.detach().double() * mask).requires_grad_()
    want = x.double() @ w64 + conv.bias.detach().double()
    out = layer(x)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    g = torch.randn(out.shape, generator=_gen(3))
    out.backward(g)
    want.backward(g.double())
    torch.testing.assert_close(conv.weight.grad.double(), w64.grad * mask, rtol=1e-5, atol=1e-5)
    assert (conv.weight.grad[~mask] == 0).all()


def test_a_masked_conv1d_is_refused_where_its_weight_would_be_read_as_out_by_in(transformers):
    model = conv1d_mlp(transformers)
    layer = MaskedLinear.from_float(model[2])
    with pytest.raises(Unsupported, match="to_linear"):
        BlockSparseLinear.from_dense(layer, block=16)
    with pytest.raises(TypeError, match="transposed"):
        MaskedLinear(layer.weight, layer.bias, layer.mask, transposed=1)


# ---------------------------------------------------------------- GradScaler


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(32, 48), act=nn.ReLU(), fc2=nn.Linear(48, 16)))


def mlp_grads64(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The weight gradients of ``model(x).pow(2).mean()`` in float64, from the layers' current weights."""
    params = [
        (m.weight.detach().double().requires_grad_(), m.bias.detach().double())
        for m in (model.fc1, model.fc2)
    ]
    h = F.relu(F.linear(x.double(), *params[0]))
    F.linear(h, *params[1]).pow(2).mean().backward()
    return [w.grad for w, _ in params]


@pytest.mark.parametrize("pass_scaler", [False, True])
def test_scores_come_from_the_unscaled_gradients_of_the_steps_the_scaler_took(pass_scaler):
    """fp16 autocast with a loss scale of 2^24: step 0 overflows and the scaler skips it (its
    backoff brings the scale to 2^8); steps 1 and 2 count, with their gradients unscaled."""
    model = mlp()
    pruner = make_pruner(model, "gradient", "unstructured", 0.5, schedule=P.one_shot(step=100))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, backoff_factor=2.0**-16, growth_interval=1000)
    want = [torch.zeros(48, 32, dtype=torch.float64), torch.zeros(16, 48, dtype=torch.float64)]
    for t in range(3):
        x = torch.randn(16, 32, generator=_gen(t))
        grads64 = mlp_grads64(model, x)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        scaler.scale(out.float().pow(2).mean()).backward()
        scaler.step(opt)
        if pass_scaler:
            pruner.step(scaler)
            scaler.update()
        else:
            scaler.update()
            pruner.step()
        overflowed = not torch.isfinite(model.fc2.weight.grad).all()
        assert overflowed == (t == 0) and scaler.get_scale() == 2.0**8, "the test needs step 0 to overflow"
        if t > 0:
            want = [a + g.abs() / 2 for a, g in zip(want, grads64)]
    for layer, ref in zip(pruner.layers.values(), want):
        # fp16 matmuls against the float64 reference.
        score = pruner.criterion.scores(layer.weight).double()
        torch.testing.assert_close(score, ref, rtol=2e-2, atol=2e-3 * ref.max())
        assert pruner.criterion.num_observed(layer.weight) == 2
    assert pruner.dropped_steps == 1
    pruner.update_masks(0.5)  # the scores are finite: the masks update
    assert pruner.sparsity_report().sparsity == 0.5


class WithGain(nn.Module):
    """A pruned ``fc`` and an unpruned scalar ``gain``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 4)
        self.gain = nn.Parameter(torch.ones(()))


def test_a_step_the_scaler_skipped_for_another_parameter_is_dropped_when_it_is_passed():
    model = WithGain()
    pruner = make_pruner(model, "fisher", "unstructured", 0.5, schedule=P.one_shot(step=100))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for t, big in enumerate([1.0, 1e37, 1.0]):
        opt.zero_grad()
        # gain's gradient is big * scale: inf in the middle step, while fc's stays finite.
        loss = model.fc(torch.randn(4, 8, generator=_gen(t))).pow(2).mean() + model.gain * big
        scaler.scale(loss).backward()
        scaler.step(opt)
        assert torch.isfinite(model.fc.weight.grad).all()
        pruner.step(scaler)
        scaler.update()
    assert pruner.dropped_steps == 1 and pruner.criterion.num_observed(model.fc.weight) == 2
    assert scaler.get_scale() == 2.0**9, "the scaler skipped the middle step"


def test_gradient_accumulation_micro_batches_are_one_observation():
    model = mlp()
    pruner = make_pruner(model, "gradient", "unstructured", 0.5, schedule=P.one_shot(step=100))
    xs = [torch.randn(4, 32, generator=_gen(t)) for t in range(2)]
    want = sum(mlp_grads64(model, x)[0] for x in xs).abs()
    for x in xs:
        model(x).pow(2).mean().backward()
    pruner.step()
    assert pruner.criterion.num_observed(model.fc1.weight) == 1
    torch.testing.assert_close(pruner.criterion.scores(model.fc1.weight).double(), want, rtol=1e-5, atol=1e-7)


def test_step_with_a_scaler_at_the_wrong_time_or_of_the_wrong_type_says_so():
    model = mlp()
    pruner = make_pruner(model, "taylor", "unstructured", 0.5, schedule=P.one_shot(step=100))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.randn(4, 32, generator=_gen(0))).pow(2).mean()).backward()
    scaler.step(opt)
    scaler.update()
    with pytest.raises(RuntimeError, match=r"before scaler\.update\(\)"):
        pruner.step(scaler)
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler"):
        pruner.step(scaler=1.0)


def test_zero_grad_before_pruner_step_is_an_error_naming_the_layers():
    model = mlp()
    pruner = make_pruner(model, "taylor", "unstructured", 0.5)
    model(torch.randn(4, 32, generator=_gen(0))).pow(2).mean().backward()
    model.zero_grad()
    with pytest.raises(RuntimeError, match=r"fc1, fc2.*before optimizer\.zero_grad"):
        pruner.step()


def test_criterion_observe_skips_a_step_whose_gradients_overflowed():
    model = mlp()
    model(torch.randn(4, 32, generator=_gen(0))).pow(2).mean().backward()
    model.fc1.weight.grad[0, 0] = torch.inf
    crit = P.get_criterion("fisher")
    assert crit.observe(model) == 0 and crit.num_observed(model.fc2.weight) == 0


# ---------------------------------------------------------------- frozen layers


@pytest.mark.parametrize("criterion", ["gradient", "taylor", "fisher"])
def test_frozen_layers_are_skipped_by_gradient_criteria(criterion):
    model = mlp()
    model.fc1.requires_grad_(False)
    frozen = model.fc1.weight.detach().clone()
    pruner = make_pruner(model, criterion, "unstructured", 0.5)
    assert list(pruner.layers) == ["fc2"]
    assert "frozen" in pruner.skipped["fc1"] and criterion in pruner.skipped["fc1"]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    opt.zero_grad()
    model(torch.randn(8, 32, generator=_gen(0))).pow(2).mean().backward()
    opt.step()
    pruner.step()
    assert torch.equal(model.fc1.weight, frozen) and pruner.sparsity_report()["fc2"].sparsity == 0.5


def test_magnitude_prunes_frozen_layers():
    model = mlp()
    model.fc1.requires_grad_(False)
    pruner = make_pruner(model, "magnitude", "unstructured", 0.5)
    pruner.step()
    assert pruner.skipped == {} and pruner.sparsity_report()["fc1"].sparsity == 0.5


def test_a_layer_no_backward_reached_is_named_in_the_error():
    model = mlp()
    pruner = make_pruner(model, "taylor", "unstructured", 0.5)
    with pytest.raises(ValueError, match=r"no gradient of the weight of 'fc1', 'fc2'"):
        pruner.step()
    # A layer the forward does not use: only it is named.
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(8, 8), spare=nn.Linear(8, 8)))
    pruner = make_pruner(model, "fisher", "unstructured", 0.5)
    model.fc1(torch.randn(4, 8, generator=_gen(0))).pow(2).mean().backward()
    with pytest.raises(ValueError, match=r"of the weight of 'spare'"):
        pruner.step()
