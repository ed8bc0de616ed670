"""``slimops.tune``: search compression configs and recovery hyperparameters with optuna.

``slimops.tune(build, evaluate, space, objectives, n_trials, ...)`` runs an optuna study
(:mod:`slimops.tune.search`) over a declarative space (:mod:`slimops.tune.space`) and returns a
:class:`TuneResult` (:mod:`slimops.tune.result`) with the Pareto front.
"""

from __future__ import annotations

from slimops.tune.result import TrialResult, TuneResult
from slimops.tune.search import OBJECTIVES, SAMPLERS, TrialParams, tune
from slimops.tune.space import CHOICES

__all__ = ["CHOICES", "OBJECTIVES", "SAMPLERS", "TrialParams", "TrialResult", "TuneResult", "tune"]
