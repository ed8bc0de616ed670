"""slimops.plan: per-layer latency and error of each candidate config, and the choice within a budget."""

import copy
import io
import json
import math
import warnings

import pytest
import torch
from torch import nn

import slimops
from slimops.plan import DENSE, Plan, default_candidates, error_db
from slimops.plan import plan as make_plan

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# fp32 on CPU (its 2:4 kernel takes fp32); the sparse tensor cores take fp16/bf16 only.
DTYPES = {"cpu": torch.float32, "cuda": torch.float16}
FAST = {"repeats": 3, "warmup": 1}
SPARSE = "2"  # the layer pruned to exact 2:4 before planning


def _prune_2_4_(linear: nn.Linear) -> None:
    """Zero the 2 smallest-magnitude weights of every 4 consecutive inputs."""
    with torch.no_grad():
        n, k = linear.weight.shape
        w = linear.weight.view(n, k // 4, 4)
        w.scatter_(-1, w.abs().argsort(-1)[..., :2], 0.0)


def _mlp(device: str) -> nn.Module:
    torch.manual_seed(0)
    # Multiples of 16 (fp8 pads nothing) and of 64 where block sparsity fits, but not everywhere.
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32)
    )
    _prune_2_4_(model[2])
    return model.to(device, DTYPES[device]).eval()


def _inputs(device: str) -> torch.Tensor:
    return torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)).to(device, DTYPES[device])


CANDIDATES = [
    slimops.HalfConfig(torch.float16),
    slimops.Int8WeightOnlyConfig(),
    slimops.Int8WeightOnlyConfig(group_size=128),  # does not divide K = 64: an error on those layers
    slimops.Int8DynamicConfig(),
    slimops.Fp8DynamicConfig(),
    slimops.SparseConfig(0.5, pattern="2:4"),
    slimops.SparseConfig(0.5, pattern="block", block_size=64),
]

LINEARS = ["0", "2", "4"]


@pytest.fixture(scope="module", params=DEVICES)
def planned(request):
    """One model, and its plan under a default, a strict and a loose budget (measured once each)."""
    device = request.param
    model = _mlp(device)
    x = _inputs(device)
    before = copy.deepcopy(model.state_dict())
    plans = {b: make_plan(model, (x,), CANDIDATES, max_error_db=b, **FAST) for b in (-30.0, -200.0, 100.0)}
    return device, model, x, before, plans


def _chosen(p: Plan, fqn: str):
    layer = p.layers[fqn]
    return layer.results[layer.chosen]


def test_plan_measures_every_layer_and_candidate(planned):
    _, _, x, _, plans = planned
    p = plans[-30.0]
    assert isinstance(p, Plan) and list(p) == LINEARS and len(p) == 3
    assert list(p.candidates) == [DENSE, "fp16", "w8a16", "w8a16(g128)", "w8a8", "fp8", "2:4", "block64(0.5)"]
    assert p.device == str(x.device) and p.device_name
    assert {fqn: p.layers[fqn].shape for fqn in LINEARS} == {"0": (10, 64, 128), "2": (10, 128, 64), "4": (10, 64, 32)}
    for fqn in LINEARS:
        layer = p.layers[fqn]
        assert list(layer.results) == list(p.candidates)
        dense = layer.results[DENSE]
        assert dense.status == "ok" and dense.error_db == -math.inf and dense.latency_s > 0
        for m in layer.results.values():
            if m.status == "ok":
                assert m.latency_s > 0 and m.error_db is not None and m.module
            else:
                assert m.status in ("unsupported", "error") and m.why and m.latency_s is None and m.error_db is None
    # Int8 per-channel error is well under the budget; magnitude pruning of a dense layer is far over it.
    assert p.layers["0"].results["w8a16"].error_db < -35
    assert p.layers["0"].results["2:4"].error_db > -15
    # Pruning a weight that is already 2:4 changes nothing.
    assert p.layers[SPARSE].results["2:4"].module == "Sparse24Linear"
    assert p.layers[SPARSE].results["2:4"].error_db < -40  # exact on CPU; fp16 rounding on a GPU
    # Refusals carry the handler's reason.
    last = p.layers["4"].results
    assert last["block64(0.5)"].status == "unsupported" and "64" in last["block64(0.5)"].why
    assert last["w8a16(g128)"].status == "error" and "group_size" in last["w8a16(g128)"].why


@pytest.mark.parametrize("budget", [-30.0, -200.0, 100.0])
def test_choice_is_fastest_allowed(planned, budget):
    p = planned[4][budget]
    assert p.max_error_db == budget
    for fqn in LINEARS:
        layer = p.layers[fqn]
        allowed = {n: m.latency_s for n, m in layer.results.items() if m.status == "ok" and m.error_db <= budget}
        assert DENSE in allowed
        assert layer.chosen == min(allowed, key=allowed.get)
        assert _chosen(p, fqn).error_db <= budget
        assert p[fqn] is p.candidates[layer.chosen]
        assert (p[fqn] is None) == (layer.chosen == DENSE)


def test_strict_budget_keeps_dense(planned):
    device, p = planned[0], planned[4][-200.0]
    # Nothing but dense (and a bit-exact candidate, if any) gets through -200 dB.
    for fqn in LINEARS:
        assert p[fqn] is None or _chosen(p, fqn).error_db == -math.inf
    if device == "cpu":  # on a GPU the fp16 model's HalfConfig(fp16) is exact too
        assert p["0"] is None and p["4"] is None


def test_loose_budget_takes_the_fastest_that_runs(planned):
    p = planned[4][100.0]
    for fqn in LINEARS:
        ran = {n: m.latency_s for n, m in p.layers[fqn].results.items() if m.status == "ok"}
        assert p.layers[fqn].chosen == min(ran, key=ran.get)


def test_plan_does_not_touch_the_model(planned):
    _, model, _, before, _ = planned
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _recorded_inputs(model, x):
    inputs = {}
    hooks = [
        model.get_submodule(f).register_forward_pre_hook(lambda m, a, f=f: inputs.setdefault(f, a[0].clone()))
        for f in LINEARS
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return inputs


@pytest.mark.parametrize("budget", [-30.0, 100.0])
def test_convert_applies_the_plan(planned, budget):
    _, model, _, _, plans = planned
    p = plans[budget]
    converted = slimops.convert(copy.deepcopy(model), p)
    for fqn in LINEARS:
        assert type(converted.get_submodule(fqn)).__name__ == _chosen(p, fqn).module


def test_measured_error_is_what_convert_gives(planned):
    # Every candidate that ran, applied alone (the choice itself depends on timing noise).
    _, model, x, _, plans = planned
    p = plans[100.0]
    inputs = _recorded_inputs(model, x)
    converted_some = False
    for name, config in p.candidates.items():
        ran = [f for f in LINEARS if p.layers[f].results[name].status == "ok"]
        if config is None or not ran:
            continue
        converted = slimops.convert(copy.deepcopy(model), {f: config for f in ran})
        with torch.no_grad():
            for fqn in ran:
                measured = p.layers[fqn].results[name]
                new = converted.get_submodule(fqn)
                assert type(new).__name__ == measured.module, (fqn, name)
                # The converted layer on the recorded input reproduces the measured error.
                got = error_db(model.get_submodule(fqn)(inputs[fqn]), new(inputs[fqn]))
                if measured.error_db == -math.inf:
                    assert got == -math.inf, (fqn, name)
                else:
                    assert got == pytest.approx(measured.error_db, abs=0.5), (fqn, name)
                converted_some |= type(new) is not nn.Linear
    assert converted_some


def test_eval_fn_and_json(tmp_path):
    model, x = _mlp("cpu"), _inputs("cpu")
    ref = model(x).detach()
    calls = []

    def eval_fn(m):
        calls.append(m)
        with torch.no_grad():
            return -error_db(ref, m(x))  # SQNR of the whole model's output

    p = make_plan(model, x, CANDIDATES[:4], max_error_db=-25, eval_fn=eval_fn, **FAST)
    assert len(calls) == 2 and calls[0] is model and calls[1] is not model
    assert p.metric_before == math.inf  # the original against itself
    converted = slimops.convert(copy.deepcopy(model), p)
    with torch.no_grad():
        assert p.metric_after == -error_db(ref, converted(x))
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]

    path = tmp_path / "plan.json"
    text = p.to_json(str(path))

    def no_constants(name):
        raise ValueError(f"not JSON: {name}")

    d = json.loads(path.read_text(), parse_constant=no_constants)
    assert d == json.loads(text)
    assert d["max_error_db"] == -25 and d["device"] == "cpu" and d["metric_before"] == "inf"
    assert [layer["fqn"] for layer in d["layers"]] == LINEARS
    layer = d["layers"][0]
    assert layer["shape"] == [10, 64, 128] and layer["chosen"] == p.layers["0"].chosen
    assert layer["results"]["dense"]["error_db"] == "-inf"  # exact: JSON has no -Infinity
    assert isinstance(layer["results"]["w8a8"]["error_db"], float)
    assert set(d["candidates"]) == set(p.candidates) and d["candidates"]["dense"] is None


def test_print_shows_the_table():
    from rich.console import Console

    p = make_plan(_mlp("cpu"), _inputs("cpu"), CANDIDATES, **FAST)
    out = io.StringIO()
    p.print(Console(file=out, width=250))
    text = out.getvalue()
    for word in ["slimops plan", "64 x 128", "w8a16(g128)", "block64(0.5)", "chosen", "4 · block64(0.5): unsupported"]:
        assert word in text, word


def test_default_candidates_and_kwargs_inputs():
    class KwModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(32, 16)

        def forward(self, *, hidden):
            return self.proj(hidden)

    model = KwModel().eval()
    p = make_plan(model, {"hidden": torch.randn(4, 32)}, **FAST)
    assert list(p.candidates)[1:] == ["bf16", "w8a16", "w8a8", "fp8", "2:4", "block64(0.5)"]
    assert [type(c) for c in default_candidates()] == [type(c) for c in p.candidates.values() if c is not None]
    results = p.layers["proj"].results
    # Everything but block-sparse runs on CPU; 64x64 blocks do not fit a 16x32 weight.
    assert {n for n, m in results.items() if m.status == "ok"} == set(p.candidates) - {"block64(0.5)"}
    assert results["block64(0.5)"].status == "unsupported"


def test_uncalled_layers_stay_dense():
    class WithAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.unused = nn.Linear(32, 32)
            self.head = nn.Linear(32, 8)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0])

    model = WithAttention().eval()
    p = make_plan(model, torch.randn(2, 3, 32), [slimops.Int8DynamicConfig()], max_error_db=100, **FAST)
    assert list(p) == ["attn.out_proj", "unused", "head"]
    # nn.MultiheadAttention reads out_proj's weight without calling it.
    for fqn in ("attn.out_proj", "unused"):
        assert p[fqn] is None and p.layers[fqn].shape is None and "not called" in p.layers[fqn].note
    assert p.layers["head"].results["w8a8"].status == "ok"
    slimops.convert(model, p)  # applies cleanly


def test_no_linear_layer_warns():
    model = nn.Sequential(nn.ReLU())
    with pytest.warns(UserWarning, match="no linear layer"):
        p = make_plan(model.eval(), torch.randn(3), **FAST)
    assert len(p) == 0 and dict(p) == {} and p.latency_before_s == 0
    json.loads(p.to_json())


def test_training_mode_warns():
    model = _mlp("cpu").train()
    with pytest.warns(UserWarning, match="training mode"):
        make_plan(model, _inputs("cpu"), [slimops.Int8DynamicConfig()], **FAST)


def test_same_candidate_object_shared_by_layers():
    # Every layer choosing one config object must still convert each of them.
    model = _mlp("cpu")
    p = make_plan(model, _inputs("cpu"), [slimops.HalfConfig(torch.bfloat16)], max_error_db=100, repeats=1, warmup=0)
    p.configs = {f: p.candidates["bf16"] for f in LINEARS}  # force the choice: timing is noise here
    converted = slimops.convert(copy.deepcopy(model), p)
    assert [type(converted.get_submodule(f)).__name__ for f in LINEARS] == ["HalfLinear"] * 3


def test_error_db():
    y = torch.ones(4, 8)
    assert error_db(y, y.clone()) == -math.inf
    assert error_db(y, y * 1.1) == pytest.approx(-20.0)
    assert error_db(y, y * 1.01) == pytest.approx(-40.0)
    assert error_db(torch.zeros(3), torch.ones(3)) == math.inf


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"model": "not a model"}, TypeError, "model must be a torch.nn.Module"),
        ({"example_inputs": 3}, TypeError, "example_inputs"),
        ({"example_inputs": {1: torch.randn(2, 64)}}, TypeError, "keys must be str"),
        ({"candidates": [slimops.Int8DynamicConfig(), nn.Linear(2, 2)]}, TypeError, r"candidates\[1\]"),
        ({"candidates": ["w8a8"]}, TypeError, r"candidates\[0\]"),
        ({"candidates": slimops.Int8DynamicConfig()}, TypeError, "candidates must be a list"),
        ({"max_error_db": "-30"}, TypeError, "max_error_db must be a real number"),
        ({"max_error_db": True}, TypeError, "max_error_db"),
        ({"max_error_db": math.nan}, ValueError, "NaN"),
        ({"eval_fn": 3}, TypeError, "eval_fn must be callable"),
        ({"eval_fn": lambda m: "good"}, TypeError, "eval_fn must return a real number"),
        ({"repeats": 0}, ValueError, "repeats must be >= 1"),
        ({"warmup": 1.5}, TypeError, "warmup must be an int"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = {"model": _mlp("cpu"), "example_inputs": _inputs("cpu"), "candidates": [slimops.Int8DynamicConfig()], **FAST}
    args.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=match):
            make_plan(**args)


def test_plans_hugging_face_gpt2_conv1d_layers():
    """GPT-2's projections are HF ``Conv1D``, which ``convert`` sees exactly as ``nn.Linear``."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=4, vocab_size=128, n_positions=32)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    result = make_plan(model, {"input_ids": ids}, [slimops.Int8WeightOnlyConfig()], max_error_db=math.inf,
                       repeats=2, warmup=1)
    want = {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
            "transformer.h.0.mlp.c_proj", "lm_head"}
    assert set(result.layers) == want
    assert result.layers["transformer.h.0.mlp.c_fc"].shape == (18, 64, 256)  # (M, K, N) of the real call
    converted = slimops.convert(copy.deepcopy(model), result)
    chosen = {fqn for fqn, c in result.items() if c is not None}
    assert set(converted.slimops_summary.converted) == chosen


def _hooks(model: nn.Module) -> list:
    return [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]


def test_eval_fn_mode_switch_is_undone():
    model = _mlp("cpu")
    seen = []

    def eval_fn(m):
        seen.append(m.training)
        m.train()  # e.g. an eval_fn that fine-tunes a little before measuring
        return 0.0

    make_plan(model, _inputs("cpu"), [slimops.Int8DynamicConfig()], eval_fn=eval_fn, repeats=1, warmup=0)
    assert not any(m.training for m in model.modules())
    # The planned copy is made from the model as it came in, not as eval_fn left it.
    assert seen == [False, False]


def test_hooks_are_removed_when_the_forward_raises():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            self.lin(x)
            raise RuntimeError("boom")

    model = Fails().eval()
    with pytest.raises(RuntimeError, match="boom"):
        make_plan(model, torch.randn(2, 8), [slimops.Int8DynamicConfig()], **FAST)
    assert _hooks(model) == []
    assert isinstance(model.lin, nn.Linear)


def test_plan_leaves_no_hooks(planned):
    assert _hooks(planned[1]) == []


def test_layer_called_by_keyword_is_measured():
    class ByKeyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(32, 16)

        def forward(self, x):
            return self.proj(input=x)

    p = make_plan(ByKeyword().eval(), torch.randn(4, 32), [slimops.Int8DynamicConfig()], max_error_db=100, **FAST)
    assert p.layers["proj"].shape == (4, 32, 16) and p.layers["proj"].note is None
    assert p.layers["proj"].results["w8a8"].status == "ok"


def test_wall_clock_waits_for_queued_work_before_timing(monkeypatch):
    # An asynchronous device (MPS, XPU, ...): the warm-up's queued work must not be timed in the first run.
    from slimops import _measure

    events = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: events.append("sync"))
    seconds = _measure.median_seconds([lambda: events.append("run")], [torch.device("mps")], warmup=1, repeats=2)
    assert len(seconds) == 1 and seconds[0] >= 0
    assert events == ["run", "sync", "run", "sync", "sync", "run", "sync"]
