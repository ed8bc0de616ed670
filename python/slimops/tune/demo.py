"""The search stage of ``slimops demo --tune N`` and ``slimops tune``: the space, ``build`` and
``evaluate`` of :func:`slimops.tune` for a model trained on the digits (:mod:`slimops.demo`).

Each linear layer is a group choosing none / int8 weight-only / int8 dynamic / fp8 / sparse.
``build`` prunes the sparse groups with a :class:`slimops.prune.Pruner` each (magnitude, their
own sparsity and pattern, one-shot or gradual over ``prune_steps``), recovers with
distillation from the dense model (``lr``, ``kd_temperature``, ``kd_alpha``), packs, then
quantizes the other groups. The metric is top-1 accuracy (%) on the demo's test split.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

from torch import nn

from slimops.tune.result import TuneResult
from slimops.tune.search import TrialParams, tune
from slimops.tune.space import CHOICES


def search_space(model: nn.Module) -> dict:
    """One layer group per ``nn.Linear`` of ``model``, and the recovery hyperparameters."""
    linears = [fqn for fqn, m in model.named_modules() if type(m) is nn.Linear]
    return {
        "layers": {f"fc{i}": ([fqn], list(CHOICES)) for i, fqn in enumerate(linears)},
        "sparsity": (0.5, 0.9),
        "pattern": ["unstructured", "block"],
        "group_size": [None, 32],
        "lr": (3e-4, 3e-3, "log"),
        "kd_temperature": (1.0, 8.0),
        "kd_alpha": (0.3, 0.9),
        "prune_steps": [0, 20, 40],  # 0: one-shot at the first step; else gradual to that step
    }


def search(
    dense: nn.Module,
    data: tuple,
    cfg,
    n_trials: int,
    *,
    amp=None,
    sampler: str = "tpe",
    objectives: Sequence[str] = ("metric", "size"),
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    recovery_epochs: int = 3,
) -> TuneResult:
    """Run :func:`slimops.tune` on a copy of ``dense`` (trained by the demo) with :func:`search_space`.

    Args:
        dense: the trained model (not changed).
        data: ``(x_train, y_train, x_test, y_test)`` from :func:`slimops.demo.load_data`.
        cfg: the :class:`slimops.demo.DemoConfig` (batch size, seed).
        n_trials, sampler, objectives, storage, study_name, timeout: as :func:`slimops.tune`.
        amp: the autocast dtype of recovery training, or None.
        recovery_epochs: epochs of distillation for a trial that prunes.
    """
    from rich.progress import Progress

    from slimops import prune as P
    from slimops.conversion import convert
    from slimops.demo import _train, accuracy
    from slimops.distill import Distiller
    from slimops.prune import SparseConfig

    if isinstance(recovery_epochs, bool) or not isinstance(recovery_epochs, int) or recovery_epochs < 1:
        # NOTE: the Pruners prune at their first step: without a step, a "sparse" layer would stay dense.
        raise ValueError(f"recovery_epochs must be a positive int, got {recovery_epochs!r}")
    space = search_space(dense)
    groups = space["layers"]
    x_test, y_test = data[2], data[3]

    def evaluate(model: nn.Module) -> float:
        return accuracy(model, x_test, y_test)

    def build(params: TrialParams) -> nn.Module:
        model = copy.deepcopy(dense).train().requires_grad_(True)
        steps = params["prune_steps"]
        schedule = P.one_shot() if steps == 0 else P.gradual(end_step=steps, frequency=max(1, steps // 8))
        pruners = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a layer the pattern cannot take stays dense (pruner.skipped)
            for group, (fqns, _) in groups.items():
                if params[f"layers.{group}"] != "sparse":
                    continue
                config = params.configs[fqns[0]]
                pattern = P.block(config.block_size) if config.pattern == "block" else config.pattern
                pruners.append(P.Pruner(model, "magnitude", pattern, config.sparsity, schedule,
                                        filter_fn=lambda m, fqn, names=set(fqns): fqn in names))
        if pruners:
            distiller = Distiller(copy.deepcopy(dense), model, params["kd_temperature"], params["kd_alpha"])

            def after_step():
                for pruner in pruners:
                    pruner.step()

            with Progress(disable=True) as quiet:
                _train(model, data, recovery_epochs, cfg, amp, quiet, "recover", distiller.loss, after_step,
                       lr=params["lr"], after_epoch=lambda epoch: params.report(evaluate(model), epoch))
            for pruner in pruners:
                pruner.finalize()
        quantized = {fqn: c for fqn, c in params.configs.items() if not isinstance(c, SparseConfig)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert(model, quantized)
        return model.eval().requires_grad_(False)

    return tune(build, evaluate, space, list(objectives), n_trials, sampler, storage, study_name, timeout, cfg.seed)
