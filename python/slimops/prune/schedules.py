"""Pruning schedules: when masks are updated and to which sparsity (:func:`one_shot`, and the
cubic :func:`gradual` schedule of Zhu & Gupta 2017)."""

from __future__ import annotations

import dataclasses

from slimops.prune.selection import _check_sparsity


class Schedule:
    """When masks are updated, and to which sparsity."""

    def sparsity(self, step: int, final: float) -> float:
        raise NotImplementedError

    def updates_at(self, step: int) -> bool:
        raise NotImplementedError


def _check_step(v, what: str, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {v!r}")
    return v


@dataclasses.dataclass
class OneShot(Schedule):
    """Prune to the final sparsity once, at ``step`` (the ``step``-th call of :meth:`Pruner.step`, from 0)."""

    step: int = 0

    def __post_init__(self):
        _check_step(self.step, "one_shot: step")

    def sparsity(self, step, final):
        return final if step >= self.step else 0.0

    def updates_at(self, step):
        return step == self.step


@dataclasses.dataclass
class Polynomial(Schedule):
    """Gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune"):

    ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))^power`` for ``t0 <= t <= t0 + n Δt``,

    with ``t0 = begin_step``, ``t0 + n Δt = end_step``, ``Δt = frequency``; ``s_i`` before
    ``t0`` and ``s_f`` after the end. Masks are updated every ``frequency`` steps
    from ``begin_step``, and at ``end_step``.

    Args:
        end_step: the step at which the final sparsity is reached.
        begin_step: the first step that prunes.
        frequency: steps between mask updates (``Δt``).
        initial_sparsity: ``s_i``, in [0, 1).
        power: 3 in the paper (cubic: prune fast early, when redundancy is high).
    """

    end_step: int
    begin_step: int = 0
    frequency: int = 100
    initial_sparsity: float = 0.0
    power: float = 3.0

    def __post_init__(self):
        _check_step(self.begin_step, "gradual: begin_step")
        _check_step(self.end_step, "gradual: end_step", self.begin_step + 1)
        _check_step(self.frequency, "gradual: frequency", 1)
        _check_sparsity(self.initial_sparsity, "gradual: initial_sparsity")
        if isinstance(self.power, bool) or not isinstance(self.power, (int, float)) or not self.power > 0:
            raise ValueError(f"gradual: power must be a positive number, got {self.power!r}")

    def sparsity(self, step, final):
        if step <= self.begin_step:
            return self.initial_sparsity
        if step >= self.end_step:
            return final
        frac = (step - self.begin_step) / (self.end_step - self.begin_step)
        return final + (self.initial_sparsity - final) * (1.0 - frac) ** self.power

    def updates_at(self, step):
        if step < self.begin_step or step > self.end_step:
            return False
        return (step - self.begin_step) % self.frequency == 0 or step == self.end_step


def one_shot(step: int = 0) -> OneShot:
    """Prune to the final sparsity at one step (the first :meth:`Pruner.step` call by default)."""
    return OneShot(step)


def gradual(
    end_step: int, begin_step: int = 0, frequency: int = 100, initial_sparsity: float = 0.0, power: float = 3.0
) -> Polynomial:
    """The cubic schedule of Zhu & Gupta (2017); see :class:`Polynomial`."""
    return Polynomial(end_step, begin_step, frequency, initial_sparsity, power)


def get_schedule(schedule: str | Schedule) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if schedule == "one_shot":
        return OneShot()
    if schedule in ("gradual", "polynomial"):
        raise ValueError(
            f"schedule {schedule!r} needs its steps: pass slimops.prune.gradual(end_step=..., frequency=...)"
        )
    raise ValueError(f"unknown schedule {schedule!r}; known schedules: one_shot, gradual(end_step, ...) (a Schedule)")
