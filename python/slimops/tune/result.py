""":class:`TuneResult`: what :func:`slimops.tune` found: every finished trial, the Pareto front,
``best(metric_floor=...)``, JSON and a plot of the front."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any

from slimops import _measure

# Objective -> its unit in tables and plots.
UNITS = {"metric": "", "size": "bytes", "latency": "s"}


@dataclasses.dataclass
class TrialResult:
    """One trial: its ``params`` (every sampled value), its ``metrics`` (``metric``, ``size`` in
    bytes, ``latency`` in seconds when measured), and ``configs``, the ``{fqn: config}`` map
    ``slimops.convert`` takes (None keeps a layer as it is)."""

    number: int
    state: str  # "complete", "pruned", "fail", "running"
    params: dict[str, Any]
    metrics: dict[str, float]
    configs: dict
    error: str | None = None  # why a failed trial failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "params": self.params,
            "metrics": self.metrics,
            "configs": {fqn: None if c is None else repr(c) for fqn, c in self.configs.items()},
            "error": self.error,
        }


@dataclasses.dataclass
class TuneResult:
    """What :func:`slimops.tune` returns.

    ``trials`` holds every trial of the study (a resumed study's earlier ones too), ``pareto``
    the completed trials no other completed trial beats on every objective (optuna's
    ``study.best_trials``), ``dense`` the trial whose every layer group chose ``"none"``, when
    one completed. ``objectives`` maps each objective to ``"maximize"`` or ``"minimize"``.
    """

    objectives: dict[str, str]
    trials: list[TrialResult]
    pareto: list[TrialResult]
    study_name: str
    storage: str | None
    dense: TrialResult | None = None

    @property
    def completed(self) -> list[TrialResult]:
        return [t for t in self.trials if t.state == "complete"]

    @property
    def failed(self) -> list[TrialResult]:
        return [t for t in self.trials if t.state == "fail"]

    @property
    def pruned(self) -> list[TrialResult]:
        return [t for t in self.trials if t.state == "pruned"]

    def best(self, metric_floor: float | None = None) -> TrialResult:
        """The Pareto trial with the best cost (size, then latency) whose metric reaches ``metric_floor``.

        With ``metric_floor=None``: the Pareto trial of the best metric. For a minimized metric
        (a loss), the floor is a ceiling: the metric must be at most ``metric_floor``. With only
        ``"metric"`` as objective, the trial of the best metric.

        Raises ``ValueError`` when no Pareto trial reaches the floor (the message gives the best metric).
        """
        if not self.pareto:
            raise ValueError("TuneResult.best: no trial completed (see .failed and .pruned)")
        sign = 1.0 if self.objectives.get("metric", "maximize") == "maximize" else -1.0
        if metric_floor is not None and (isinstance(metric_floor, bool) or not isinstance(metric_floor, numbers.Real)):
            raise TypeError(f"TuneResult.best: metric_floor must be a real number or None, got {metric_floor!r}")
        candidates = self.pareto
        if metric_floor is not None:  # the metric is measured even when it is not an objective
            candidates = [t for t in self.pareto if sign * t.metrics["metric"] >= sign * metric_floor]
            if not candidates:
                top = max(t.metrics["metric"] * sign for t in self.pareto) * sign
                word = "at least" if sign > 0 else "at most"
                raise ValueError(
                    f"TuneResult.best: no Pareto trial has a metric {word} {metric_floor} (the best is {top})"
                )
        costs = [name for name in ("size", "latency") if name in self.objectives]
        if metric_floor is None or not costs:
            key = lambda t: (-sign * t.metrics.get("metric", 0.0), *(t.metrics[c] for c in costs))  # noqa: E731
        else:
            key = lambda t: (*(t.metrics[c] for c in costs), -sign * t.metrics.get("metric", 0.0))  # noqa: E731
        return min(candidates, key=key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "objectives": self.objectives,
            "pareto": [t.number for t in self.pareto],
            "dense": None if self.dense is None else self.dense.number,
            "trials": [t.to_dict() for t in self.trials],
        }

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        """The result as JSON text (configs as their ``repr``), also written to ``path`` when given."""
        return _measure.write_json(_measure.json_safe(self.to_dict()), path, indent)

    def table(self):
        """The Pareto front as a ``rich`` table, best metric first."""
        from rich.table import Table

        table = Table(title=f"slimops.tune: Pareto front of {self.study_name!r} ({len(self.completed)} completed)")
        table.add_column("trial", justify="right")
        for name in self.objectives:
            table.add_column(name, justify="right")
        table.add_column("layers")
        table.add_column("other params")
        sign = 1.0 if self.objectives.get("metric", "maximize") == "maximize" else -1.0
        for t in sorted(self.pareto, key=lambda t: -sign * t.metrics.get("metric", 0.0)):
            cells = [_fmt(name, t.metrics.get(name)) for name in self.objectives]
            layers = ", ".join(f"{k[7:]}={v}" for k, v in t.params.items() if k.startswith("layers."))
            other = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items() if not k.startswith("layers."))
            table.add_row(str(t.number) + (" (dense)" if t is self.dense else ""), *cells, layers, other)
        return table

    def print(self, console=None) -> None:
        _measure.wide_console(console).print(self.table())

    def plot(self, path: str | os.PathLike) -> None:
        """Save a PNG: the metric against each cost objective, every completed trial, the front joined."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        costs = [name for name in ("size", "latency") if name in self.objectives]
        if "metric" not in self.objectives or not costs:
            raise ValueError("TuneResult.plot: the front is drawn for 'metric' against 'size' or 'latency'")
        fig, axes = plt.subplots(1, len(costs), figsize=(6 * len(costs), 4.5), squeeze=False)
        scale = {"size": (1 / 1024, "size (KiB)"), "latency": (1e3, "latency (ms)")}
        for ax, cost in zip(axes[0], costs, strict=True):
            factor, label = scale[cost]
            done = self.completed
            ax.scatter([t.metrics[cost] * factor for t in done], [t.metrics["metric"] for t in done],
                       c="0.7", s=18, label="trials")
            front = sorted(self.pareto, key=lambda t: t.metrics[cost])
            ax.plot([t.metrics[cost] * factor for t in front], [t.metrics["metric"] for t in front],
                    "o-", c="C1", label="Pareto front")
            if self.dense is not None:
                ax.scatter([self.dense.metrics[cost] * factor], [self.dense.metrics["metric"]], marker="*", s=160,
                           c="C0", label="dense", zorder=3)
            ax.set_xlabel(label)
            ax.set_ylabel("metric")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"slimops.tune: {self.study_name}")
        fig.tight_layout()
        fig.savefig(path, format="png")
        plt.close(fig)


def _fmt(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if name == "size":
        return f"{value / 1024:.1f} KiB"
    if name == "latency":
        return _measure.fmt_seconds(value, 2)
    return f"{value:.4g}"


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
