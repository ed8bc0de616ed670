""":func:`tune`: an optuna study over a compression space (its samplers, pruners and RDB storage).

Each trial samples the space (:mod:`slimops.tune.space`), calls ``build(params)`` for a
compressed model, measures the objectives (``evaluate(model)``, the model's bytes, its
forward latency with slimops' timing helpers) and returns them to optuna. What it does not
do is search: the samplers are optuna's.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from slimops import _measure
from slimops.tune.result import TrialResult, TuneResult
from slimops.tune.space import Space, parse_space

OBJECTIVES = {"metric": "maximize", "size": "minimize", "latency": "minimize"}
SAMPLERS = ("tpe", "random", "grid", "nsga2")
# Latency: untimed and timed forwards of the batch evaluate passed first (medians).
LATENCY_WARMUP, LATENCY_REPEATS = 2, 10


class TrialParams(dict):
    """The values one trial sampled, by name (a dict), as ``build(params)`` receives them.

    ``params.configs`` is the ``{fqn: config}`` map of the layer groups for ``slimops.convert``;
    ``params.report(value, step)`` hands an intermediate metric (e.g. accuracy after each
    epoch of recovery training) to optuna's pruner, and raises ``optuna.TrialPruned`` when the
    pruner stops the trial (let it propagate out of ``build``).
    """

    def __init__(self, values: dict[str, Any], space: Space, trial):
        super().__init__(values)
        self.configs = space.configs(values)
        self.number = trial.number
        self._trial = trial

    def report(self, value: float, step: int) -> None:
        """Report an intermediate metric at ``step`` (>= 0); raise ``optuna.TrialPruned`` if the pruner says so.

        NOTE: optuna prunes single-objective studies only (``Trial.report`` refuses several
        objectives); with several, the value is kept in the trial's user attributes and the
        trial runs on.
        """
        import optuna

        value = _measure.metric_value(value, "TrialParams.report", "a real number")
        if len(self._trial.study.directions) > 1:
            seen = dict(self._trial.user_attrs.get("intermediate", {}))
            seen[str(int(step))] = value
            self._trial.set_user_attr("intermediate", seen)
            return
        self._trial.report(value, step)
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (metric {value})")


def tune(
    build: Callable[[TrialParams], nn.Module],
    evaluate: Callable[[nn.Module], float],
    space: Mapping[str, Any],
    objectives: Sequence[str] | Mapping[str, str] = ("metric", "size"),
    n_trials: int = 20,
    sampler: str = "tpe",
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    *,
    pruner=None,
) -> TuneResult:
    """Search ``space`` for the compressed models that trade ``objectives`` best, with optuna.

    Args:
        build: ``build(params) -> model``: compress a fresh copy of the model as ``params``
            say (``slimops.convert(model, params.configs)``, recovery training with
            ``params["lr"]``, ...); call ``params.report(metric, step)`` during training to let
            the pruner stop a hopeless trial.
        evaluate: ``evaluate(model) -> float``, the metric (higher is better unless
            ``objectives`` says ``{"metric": "minimize"}``).
        space: the declarative space (see :mod:`slimops.tune.space`).
        objectives: names from ``"metric"`` (maximized), ``"size"`` (parameter and buffer
            bytes, minimized) and ``"latency"`` (median seconds of one forward of the first
            batch ``evaluate`` gives the model, minimized); or a dict naming the metric's direction.
        n_trials: trials the study holds when done; a resumed study runs only the missing ones.
        sampler: ``"tpe"``, ``"random"``, ``"grid"`` (every dimension discrete) or ``"nsga2"``.
        storage: an optuna storage URL (``"sqlite:///study.db"``) to keep the study in, so a
            run stopped by a crash or Ctrl-C resumes with its finished trials; None: in memory.
        study_name: the study's name in ``storage`` (default ``"slimops.tune"``).
        timeout: stop starting trials after this many seconds.
        seed: seeds the sampler, and ``torch.manual_seed(seed + trial number)`` before each build.
        pruner: an ``optuna.pruners`` pruner for ``params.report`` (default: ``MedianPruner``
            with 2 startup trials; single-objective studies only, see :meth:`TrialParams.report`).

    Returns:
        A :class:`TuneResult`. A trial whose ``build`` or ``evaluate`` raises is recorded as
        failed (``result.failed``, with the error) and the study goes on; if every trial of
        this call fails, the first error is raised.
    """
    import optuna

    if not callable(build) or not callable(evaluate):
        bad = "build" if not callable(build) else "evaluate"
        raise TypeError(f"slimops.tune: {bad} must be callable")
    parsed = parse_space(space)
    directions = _objectives(objectives)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"slimops.tune: n_trials must be a positive int, got {n_trials!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or timeout <= 0):
        raise ValueError(f"slimops.tune: timeout must be a positive number of seconds or None, got {timeout!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"slimops.tune: seed must be an int or None, got {seed!r}")
    if storage is not None and not isinstance(storage, str):
        raise TypeError(f"slimops.tune: storage must be a URL str (e.g. 'sqlite:///study.db') or None, got {storage!r}")
    study_name = "slimops.tune" if study_name is None else study_name
    if pruner is None:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if len(directions) == 1 else optuna.pruners.NopPruner()
    elif not isinstance(pruner, optuna.pruners.BasePruner):
        raise TypeError(f"slimops.tune: pruner must be an optuna.pruners pruner, got {type(pruner).__name__}")

    # optuna logs each new study and each failed trial (with its traceback); slimops warns once
    # per failed trial, in one line, and keeps the rest quiet.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        return _run(build, evaluate, parsed, directions, n_trials, sampler, storage, study_name, timeout, seed, pruner)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run(build, evaluate, parsed: Space, directions, n_trials, sampler, storage, study_name, timeout, seed, pruner):
    import optuna

    chosen = _sampler(sampler, parsed, seed)
    try:
        study = optuna.create_study(
            storage=storage, study_name=study_name, load_if_exists=True, sampler=chosen,
            pruner=pruner, directions=list(directions.values()),
        )
    except ValueError as e:
        raise ValueError(f"slimops.tune: study {study_name!r} in {storage}: {e}") from e
    if list(study.directions) != [getattr(optuna.study.StudyDirection, d.upper()) for d in directions.values()]:
        raise ValueError(
            f"slimops.tune: study {study_name!r} in {storage} was created with other objectives "
            f"({[d.name.lower() for d in study.directions]}); use another study_name"
        )
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    done_before = len(study.get_trials(deepcopy=False, states=finished))
    if done_before == 0 and sampler != "grid" and all("none" in cs for _, cs in parsed.groups.values()):
        # The uncompressed model is the reference every trade-off is judged against: measure it first.
        study.enqueue_trial({f"layers.{g}": "none" for g in parsed.groups}, skip_if_exists=True)

    objective = _Objective(build, evaluate, parsed, directions, seed)
    remaining = n_trials - done_before
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(Exception,))
        if objective.errors and len(objective.errors) == objective.calls:
            first = objective.errors[0]
            raise RuntimeError(f"slimops.tune: every trial of this run failed; the first: {first}") from first.__cause__
    return _result(study, parsed, directions, storage)


def _objectives(objectives) -> dict[str, str]:
    if isinstance(objectives, str):
        objectives = [objectives]
    if isinstance(objectives, Mapping):
        pairs = list(objectives.items())
    elif isinstance(objectives, Sequence):
        pairs = [(name, OBJECTIVES.get(name)) for name in objectives]
    else:
        raise TypeError(f"slimops.tune: objectives must be a list of names or a dict, got {type(objectives).__name__}")
    if not pairs:
        raise ValueError(f"slimops.tune: objectives is empty; choose from {list(OBJECTIVES)}")
    out: dict[str, str] = {}
    for name, direction in pairs:
        if name not in OBJECTIVES:
            raise ValueError(f"slimops.tune: unknown objective {name!r}; known objectives: {', '.join(OBJECTIVES)}")
        if name in out:
            raise ValueError(f"slimops.tune: objective {name!r} is given twice")
        allowed = ("maximize", "minimize") if name == "metric" else ("minimize",)
        if direction not in allowed:
            raise ValueError(f"slimops.tune: objective {name!r} can only be {' or '.join(allowed)}, got {direction!r}")
        out[name] = direction
    return out


def _sampler(name: str, space: Space, seed: int | None):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"slimops.tune: unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}")


class _Objective:
    """One trial: sample, build, measure. Errors are kept (and re-raised for optuna to record)."""

    def __init__(self, build, evaluate, space: Space, directions: dict[str, str], seed: int | None):
        self.build, self.evaluate, self.space, self.directions, self.seed = build, evaluate, space, directions, seed
        self.calls = 0
        self.errors: list[_TrialError] = []

    def __call__(self, trial) -> tuple[float, ...]:
        import optuna

        self.calls += 1
        params = TrialParams(self.space.suggest(trial), self.space, trial)
        if self.seed is not None:
            torch.manual_seed(self.seed + trial.number)
        try:
            model = self._step("build", self.build, params)
            if not isinstance(model, nn.Module):
                raise TypeError(f"build must return an nn.Module, got {type(model).__name__}")
            metrics = self._measure(model)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            error = _TrialError(f"trial {trial.number} with {dict(params)}: {_measure.describe_error(e)}")
            error.__cause__ = e
            self.errors.append(error)
            trial.set_user_attr("error", str(error))
            warnings.warn(f"slimops.tune: {error} (recorded as failed; the study goes on)", stacklevel=2)
            raise error from e
        for name, value in metrics.items():
            trial.set_user_attr(name, value)
        return tuple(metrics[name] for name in self.directions)

    @staticmethod
    def _step(what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as e:
            e.add_note(f"slimops.tune: in {what}")
            raise

    def _measure(self, model: nn.Module) -> dict[str, float]:
        from slimops.report import tensor_bytes

        first: list = []
        hook = None
        if "latency" in self.directions:
            # The first batch evaluate feeds the model is the one timed: a real input, at a real batch size.
            def keep_first(module, args, kwargs):
                if not first:
                    first.append((_measure.clone(args), _measure.clone(kwargs)))

            hook = model.register_forward_pre_hook(keep_first, with_kwargs=True)
        try:
            with _measure.keep_modes(model):
                value = self.evaluate(model)
        finally:
            if hook is not None:
                hook.remove()
        metric = _measure.metric_value(value, "slimops.tune", "a real number (the metric)", " from evaluate")
        if math.isnan(metric):
            raise ValueError("evaluate returned NaN")
        out = {"metric": metric, "size": float(tensor_bytes(model))}
        if "latency" in self.directions:
            if not first:
                raise ValueError("objective 'latency': evaluate never called the model's forward, so there is no input to time")
            args, kwargs = first[0]
            with torch.no_grad(), _measure.keep_modes(model):
                model.eval()
                (seconds,) = _measure.median_seconds(
                    [lambda: model(*args, **kwargs)], [_measure.device_of(model)],
                    warmup=LATENCY_WARMUP, repeats=LATENCY_REPEATS,
                )
            out["latency"] = seconds
        return out


class _TrialError(RuntimeError):
    """A trial's build or evaluate failed; the message names the trial and its params."""


def _result(study, space: Space, directions: dict[str, str], storage: str | None) -> TuneResult:
    import optuna

    states = {
        optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
        optuna.trial.TrialState.FAIL: "fail", optuna.trial.TrialState.RUNNING: "running",
        optuna.trial.TrialState.WAITING: "waiting",
    }
    trials: dict[int, TrialResult] = {}
    for t in study.get_trials(deepcopy=False):
        params = dict(t.params)
        try:
            configs = space.configs(_with_defaults(params, space))
        except (KeyError, ValueError, TypeError):
            configs = {}  # a trial stopped before it sampled every group
        metrics = {k: float(t.user_attrs[k]) for k in OBJECTIVES if k in t.user_attrs}
        trials[t.number] = TrialResult(t.number, states[t.state], params, metrics, configs, t.user_attrs.get("error"))
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    pareto = [trials[t.number] for t in study.best_trials] if complete else []
    if len(directions) == 1 and complete:
        pareto = [trials[study.best_trial.number]]
    dense = next(
        (t for t in trials.values() if t.state == "complete" and space.groups
         and all(t.params.get(f"layers.{g}") == "none" for g in space.groups)),
        None,
    )
    return TuneResult(directions, list(trials.values()), pareto, study.study_name, storage, dense)


def _with_defaults(params: dict, space: Space) -> dict:
    """``params`` with the fixed values and the defaults ``Space.suggest`` adds (not stored by optuna)."""
    out = dict(params)
    for group in space.groups:
        if out.get(f"layers.{group}") == "sparse" and out.get(f"{group}.pattern") == "2:4":
            out[f"{group}.sparsity"] = 0.5
    for name, dim in space.dims.items():
        if dim.is_fixed:
            out[name] = dim.fixed
    return out
