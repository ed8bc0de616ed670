"""slimops.tune: on a digits MLP the search finds a model smaller than the dense one within a point
of its accuracy; samplers, optuna's pruner, resuming a killed study from SQLite, failed trials,
bad input, the result's JSON and plot."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops.report import tensor_bytes

optuna = pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the digits MLP


@pytest.fixture(scope="module")
def digits():
    """An MLP trained on scikit-learn's bundled digits (seeded, one thread, about 2 s), and its test split."""
    from sklearn import datasets

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = datasets.load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    test, train = perm[:540], perm[540:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for idx in torch.randperm(len(train), generator=g).split(64):
            loss = F.cross_entropy(model(x[train[idx]]), y[train[idx]])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval().requires_grad_(False)
    yield model, x[test], y[test]
    torch.set_num_threads(threads)


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).double().mean().item() * 100


DIGITS_SPACE = {
    "layers": {
        "hidden": (["0", "2"], ["none", "int8_weight_only", "int8_dynamic", "fp8", "sparse"]),
        "head": (["4"], ["none", "int8_weight_only"]),
    },
    "sparsity": (0.3, 0.9),
    "pattern": ["unstructured", "block"],
    "group_size": [None, 32],
}


def test_the_search_beats_the_dense_model_on_size_within_a_point(digits):
    dense, x, y = digits

    def build(params):
        model = copy.deepcopy(dense)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slimops.convert(model, params.configs)
        return model

    result = slimops.tune(build, lambda m: _accuracy(m, x, y), DIGITS_SPACE, ["metric", "size"], n_trials=10, seed=0)
    assert len(result.completed) == 10 and not result.failed
    base = result.dense
    assert base is not None and base.number == 0  # the uncompressed model is measured first
    assert base.metrics["metric"] == pytest.approx(_accuracy(dense, x, y))
    assert base.metrics["size"] == tensor_bytes(dense)
    best = result.best(metric_floor=base.metrics["metric"] - 1.0)
    # Measured (seed 0): trial 4, int8 dynamic hidden + int8 weight-only head, 0.26x the bytes, same accuracy.
    assert best.metrics["size"] < 0.5 * base.metrics["size"], best
    assert best.metrics["metric"] >= base.metrics["metric"] - 1.0
    assert best in result.pareto
    # The config map is what convert takes, and reproduces the trial's model.
    again = copy.deepcopy(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slimops.convert(again, best.configs)
    assert _accuracy(again, x, y) == best.metrics["metric"]
    assert tensor_bytes(again) == best.metrics["size"]
    # No completed trial beats a Pareto trial on both objectives.
    for p in result.pareto:
        for t in result.completed:
            assert not (t.metrics["metric"] > p.metrics["metric"] and t.metrics["size"] < p.metrics["size"])


def test_latency_is_timed_on_the_first_batch_evaluate_gives(digits, monkeypatch):
    dense, x, y = digits
    from slimops import _measure

    timed = []
    real = _measure.median_seconds

    def spy(fns, devices, **kw):
        timed.append(kw)
        return real(fns, devices, **kw)

    monkeypatch.setattr(_measure, "median_seconds", spy)
    seen = []

    def evaluate(model):
        seen.append(model[0](x[:3]).shape)  # a submodule call is not the model's forward
        return _accuracy(model, x[:100], y[:100])

    result = slimops.tune(
        lambda p: copy.deepcopy(dense), evaluate, {"width": [1]}, ["metric", "latency"], n_trials=1, seed=0
    )
    (trial,) = result.completed
    assert trial.metrics["latency"] > 0 and len(timed) == 1
    assert timed[0] == {"warmup": 2, "repeats": 10}


def test_latency_without_a_forward_is_a_failed_trial_that_says_why():
    with pytest.raises(RuntimeError, match="every trial of this run failed.*evaluate never called the model's forward"):
        slimops.tune(lambda p: nn.Linear(4, 4), lambda m: 1.0, {"a": [1, 2]}, ["metric", "latency"], n_trials=2)


# ---------------------------------------------------------------- samplers


def _toy_build(params):
    # A model whose size follows the params: "width" neurons.
    return nn.Linear(8, params["width"])


def _toy_evaluate(model):
    return float(model.out_features)  # bigger is "better": metric and size pull apart


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "nsga2"])
def test_every_sampler_runs_and_is_seeded(sampler):
    space = {"width": [1, 2, 4, 8], "lr": (1e-3, 1e-1, "log") if sampler != "grid" else [1e-3, 1e-2]}
    runs = [
        slimops.tune(_toy_build, _toy_evaluate, space, ["metric", "size"], n_trials=6, sampler=sampler, seed=3)
        for _ in range(2)
    ]
    first, second = ([t.params for t in r.trials] for r in runs)
    assert first == second  # same seed, same trials
    assert len(runs[0].completed) == 6
    for t in runs[0].completed:
        assert t.metrics["metric"] == t.params["width"] and t.metrics["size"] == 4 * (8 * t.params["width"] + t.params["width"])
    # Metric and size rise together here: every width is on the front.
    assert {t.params["width"] for t in runs[0].pareto} == {t.params["width"] for t in runs[0].completed}


def test_grid_covers_the_grid_once_and_stops():
    space = {"width": [1, 2, 3], "pattern_of_life": ["a", "b"]}
    result = slimops.tune(_toy_build, _toy_evaluate, space, ["metric"], n_trials=20, sampler="grid", seed=0)
    combos = [(t.params["width"], t.params["pattern_of_life"]) for t in result.completed]
    assert sorted(combos) == [(w, p) for w in (1, 2, 3) for p in ("a", "b")]


def test_grid_refuses_a_continuous_range():
    with pytest.raises(ValueError, match="sampler 'grid' needs every dimension discrete; 'lr' is a continuous range"):
        slimops.tune(_toy_build, _toy_evaluate, {"width": [1], "lr": (0.1, 1.0)}, ["metric"], 2, sampler="grid")


def test_layer_groups_sample_their_own_options_only_when_used():
    space = {
        "layers": {"a": (["x"], ["sparse", "int8_weight_only"]), "b": (["y", "z"], ["none", "sparse"])},
        "sparsity": (0.2, 0.8),
        "pattern": ["unstructured", "2:4"],
        "group_size": [None, 16],
    }
    seen = []

    def build(params):
        seen.append(params)
        return nn.Linear(2, 2)

    slimops.tune(build, lambda m: 1.0, space, ["metric"], n_trials=12, sampler="random", seed=0)
    for p in seen:
        for group, fqns in (("a", ["x"]), ("b", ["y", "z"])):
            choice = p[f"layers.{group}"]
            configs = [p.configs[f] for f in fqns]
            assert all(c is configs[0] for c in configs)  # one config object per group
            if choice == "sparse":
                assert isinstance(configs[0], slimops.SparseConfig)
                assert configs[0].pattern == p[f"{group}.pattern"] and configs[0].sparsity == p[f"{group}.sparsity"]
                if p[f"{group}.pattern"] == "2:4":
                    assert p[f"{group}.sparsity"] == 0.5
                else:
                    assert 0.2 <= p[f"{group}.sparsity"] <= 0.8
                assert f"{group}.group_size" not in p
            elif choice == "int8_weight_only":
                assert configs[0] == slimops.Int8WeightOnlyConfig(p[f"{group}.group_size"])
                assert f"{group}.sparsity" not in p
            else:
                assert configs[0] is None and not any(k.startswith(f"{group}.") for k in p)


# ---------------------------------------------------------------- pruning, failures


def test_the_pruner_stops_trials_behind_the_median():
    steps_run = {}

    def build(params):
        # A "recovery training" whose metric climbs to the quality the params give it.
        q = params["quality"]
        for step in range(5):
            steps_run[params.number] = step
            params.report(q * (step + 1), step)
        return nn.Linear(2, 2)

    space = {"quality": [5, 4, 3, 2, 1]}
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    result = slimops.tune(build, lambda m: 0.0, space, ["metric"], n_trials=5, sampler="grid", seed=0, pruner=pruner)
    quality = {t.number: t.params["quality"] for t in result.trials}
    assert result.pruned, [(t.number, t.state) for t in result.trials]
    for t in result.pruned:
        # Pruned at step 1, right after the warm-up: the rest of its training never ran.
        assert steps_run[t.number] == 1
        assert quality[t.number] < max(quality[c.number] for c in result.completed)
    assert all(steps_run[t.number] == 4 for t in result.completed)


def test_several_objectives_keep_intermediate_values_without_pruning(tmp_path):
    def build(params):
        for step in range(3):
            params.report(0.1 * step, step)
        return nn.Linear(2, 2)

    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = slimops.tune(build, lambda m: 1.0, {"a": [1, 2]}, ["metric", "size"], n_trials=2, storage=url, seed=0)
    assert len(result.completed) == 2 and not result.pruned
    for t in optuna.load_study(study_name="slimops.tune", storage=url).trials:
        assert t.user_attrs["intermediate"] == {"0": 0.0, "1": 0.1, "2": 0.2}


def test_a_failing_trial_is_recorded_and_the_study_goes_on():
    def build(params):
        if params["width"] == 3:
            raise RuntimeError("out of memory (simulated)")
        return nn.Linear(8, params["width"])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = slimops.tune(build, _toy_evaluate, {"width": [1, 2, 3, 4]}, ["metric"], 4, sampler="grid", seed=0)
    (failed,) = result.failed
    assert failed.params == {"width": 3}
    assert "RuntimeError: out of memory (simulated)" in failed.error and "width" in failed.error
    assert sorted(t.params["width"] for t in result.completed) == [1, 2, 4]


def test_a_build_that_always_raises_is_a_clear_error():
    def build(params):
        raise KeyError("no layer named 'fc9'")

    with pytest.raises(RuntimeError, match="every trial of this run failed; the first: trial 0 .*KeyError.*fc9"):
        slimops.tune(build, _toy_evaluate, {"width": [1, 2]}, ["metric"], n_trials=2)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"space": {}}, ValueError, "space is empty"),
        ({"space": []}, TypeError, "space must be a dict"),
        ({"space": {"a": 1}}, ValueError, "space searches nothing"),
        ({"space": {"a": []}}, ValueError, "space\\['a'\\] is an empty list"),
        ({"space": {"a": (1.0, 0.5)}}, ValueError, "low must be below high"),
        ({"space": {"a": (0.0, 1.0, "log")}}, ValueError, "a log range needs low > 0"),
        ({"space": {"layers": {"g": (["0"], ["int4"])}}}, ValueError, "unknown choice\\(s\\) \\['int4'\\]"),
        ({"space": {"layers": {"g": ("0", ["none"])}}}, ValueError, "fqns must be a non-empty list"),
        ({"space": {"layers": {"g": (["0"], ["sparse"])}}}, ValueError, "needs a 'sparsity' range"),
        ({"space": {"layers": {"g": (["0"], ["none"]), "h": (["0"], ["fp8"])}}}, ValueError, "in more than one group"),
        ({"objectives": ["accuracy"]}, ValueError, "unknown objective 'accuracy'; known objectives: metric, size, latency"),
        ({"objectives": []}, ValueError, "objectives is empty"),
        ({"objectives": {"size": "maximize"}}, ValueError, "'size' can only be minimize"),
        ({"sampler": "cmaes"}, ValueError, "unknown sampler 'cmaes'; known samplers: tpe, random, grid, nsga2"),
        ({"n_trials": 0}, ValueError, "n_trials must be a positive int"),
        ({"timeout": -1}, ValueError, "timeout must be a positive number"),
        ({"pruner": "median"}, TypeError, "pruner must be an optuna.pruners pruner"),
        ({"build": None}, TypeError, "build must be callable"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs, error, message):
    args = {"build": _toy_build, "evaluate": _toy_evaluate, "space": {"width": [1, 2]}, "objectives": ["metric"],
            "n_trials": 2} | kwargs
    with pytest.raises(error, match=message):
        slimops.tune(**args)


def test_best_and_its_floor():
    result = slimops.tune(_toy_build, _toy_evaluate, {"width": [1, 2, 4, 8]}, ["metric", "size"], 4, "grid", seed=0)
    assert result.best().params["width"] == 8  # the best metric
    assert result.best(metric_floor=3).params["width"] == 4  # the smallest reaching 3
    with pytest.raises(ValueError, match="no Pareto trial has a metric at least 9 \\(the best is 8.0\\)"):
        result.best(metric_floor=9)
    with pytest.raises(TypeError, match="metric_floor must be a real number"):
        result.best(metric_floor="high")
    loss = slimops.tune(_toy_build, _toy_evaluate, {"width": [1, 2, 4, 8]}, {"metric": "minimize", "size": "minimize"},
                        4, "grid", seed=0)
    assert loss.best(metric_floor=2).params["width"] == 1  # a minimized metric: the floor is a ceiling


def test_to_json_and_plot(tmp_path):
    space = {"layers": {"all": (["0"], ["none", "int8_weight_only"])}}
    result = slimops.tune(lambda p: slimops.convert(nn.Sequential(nn.Linear(64, 32)), p.configs),
                          lambda m: 1.0, space, ["metric", "size"], n_trials=3, sampler="grid", seed=0)
    data = json.loads(result.to_json(tmp_path / "tune.json"))
    assert data == json.loads((tmp_path / "tune.json").read_text())
    assert data["objectives"] == {"metric": "maximize", "size": "minimize"}
    assert data["dense"] == result.dense.number
    int8 = next(t for t in data["trials"] if t["params"]["layers.all"] == "int8_weight_only")
    assert int8["configs"] == {"0": "Int8WeightOnlyConfig(group_size=None)"} and int8["metrics"]["size"] > 0
    result.plot(tmp_path / "front.png")
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- resuming a killed study


def _slow_build(params):
    time.sleep(0.4)  # time for the test to kill the process between two trials' starts
    return nn.Linear(8, params["width"])


def resume_run(url: str, n_trials: int) -> None:
    """What the killed subprocess runs (``python -c``)."""
    slimops.tune(_slow_build, _toy_evaluate, {"width": (1, 64)}, ["metric", "size"], n_trials, "random", url,
                 "killed", seed=0)


def test_a_killed_study_resumes_from_sqlite_with_its_finished_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    code = f"from tests.tools.test_tune import resume_run; resume_run({url!r}, 40)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        done = []
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                study = optuna.load_study(study_name="killed", storage=url)
            except KeyError:
                continue  # not created yet
            done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            if len(done) >= 3:
                break
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # no clean-up, as a crash
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {t.number: (t.params, t.values) for t in optuna.load_study(study_name="killed", storage=url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))}
    assert 3 <= len(before) < 40

    result = slimops.tune(_toy_build, _toy_evaluate, {"width": (1, 64)}, ["metric", "size"], len(before) + 2,
                          "random", url, "killed", seed=0)
    after = {t.number: t for t in result.completed}
    for number, (params, values) in before.items():
        assert after[number].params == params
        assert [after[number].metrics["metric"], after[number].metrics["size"]] == values
    assert len(after) == len(before) + 2  # only the missing trials ran
    # The trial the kill interrupted stays "running" in the database: neither kept nor counted.
    assert [t.state for t in result.trials if t.number not in after] in ([], ["running"])
