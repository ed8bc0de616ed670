"""Importance criteria: one fp32 score per weight (higher = keep), by magnitude, gradient,
first-order Taylor, Fisher / OBD, or at random, and :func:`get_criterion` to pick one by name."""

from __future__ import annotations

import weakref
from typing import ClassVar

import torch
from torch import nn

from slimops.nn.sparse import MaskedConv2d, MaskedLinear


def _prunable_weight(module: nn.Module) -> nn.Parameter | None:
    if isinstance(module, (nn.Linear, nn.Conv2d, MaskedLinear, MaskedConv2d)) and isinstance(module.weight, nn.Parameter):
        return module.weight
    return None


class Criterion:
    """Base class: an importance score per weight (a tensor shaped like the weight, fp32).

    Gradient-based criteria (``needs_grad = True``) accumulate statistics of the
    weight gradients. Feed them one of two ways:

    * inside a :class:`Pruner`, hooks on the pruned weights observe every
      backward pass on their own (do not call :meth:`observe` as well);
    * otherwise call ``criterion.observe(model)`` after each ``loss.backward()``
      and before ``optimizer.zero_grad()``; it reads ``.grad`` of every
      ``nn.Linear``, ``nn.Conv2d``, ``MaskedLinear`` and ``MaskedConv2d`` weight.

    Statistics are kept per weight tensor (by identity) until :meth:`reset`.
    """

    name: ClassVar[str] = ""
    needs_grad: ClassVar[bool] = False

    def __init__(self):
        # id(weight) -> (weakref to weight, accumulated fp32 tensor, number of observations)
        self._stats: dict[int, tuple[weakref.ref, torch.Tensor, int]] = {}

    def observe(self, model: nn.Module) -> int:
        """Accumulate the current ``.grad`` of every prunable weight in ``model``; returns how many were seen."""
        seen = 0
        for module in model.modules():
            w = _prunable_weight(module)
            if w is not None and w.grad is not None:
                self.observe_grad(w, w.grad)
                seen += 1
        return seen

    @torch.no_grad()
    def observe_grad(self, weight: torch.Tensor, grad: torch.Tensor) -> None:
        """Accumulate one gradient of ``weight`` (a no-op for criteria that need none)."""
        if not self.needs_grad:
            return
        if grad.shape != weight.shape:
            raise ValueError(f"{self.name}: grad shape {tuple(grad.shape)} != weight shape {tuple(weight.shape)}")
        stat = self._statistic(weight.detach().float(), grad.detach().float())
        entry = self._stats.get(id(weight))
        if entry is None or entry[0]() is not weight:
            self._stats[id(weight)] = (weakref.ref(weight), stat, 1)
        else:
            self._stats[id(weight)] = (entry[0], entry[1].add_(stat), entry[2] + 1)

    def num_observed(self, weight: torch.Tensor) -> int:
        """How many gradients of ``weight`` were accumulated since the last reset."""
        entry = self._stats.get(id(weight))
        return 0 if entry is None or entry[0]() is not weight else entry[2]

    def reset(self) -> None:
        """Forget the accumulated statistics."""
        self._stats.clear()

    def _statistic(self, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _mean_statistic(self, weight: torch.Tensor) -> torch.Tensor:
        n = self.num_observed(weight)
        if n == 0:
            raise ValueError(
                f"the {self.name!r} criterion has seen no gradient of this weight {tuple(weight.shape)}: run "
                "backward passes first (a Pruner observes them through hooks; elsewhere call "
                "criterion.observe(model) after each loss.backward())"
            )
        return self._stats[id(weight)][1] / n

    @torch.no_grad()
    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """Importance of every element of ``weight``: fp32, same shape, higher means keep."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MagnitudeCriterion(Criterion):
    """``|w|``: needs no data."""

    name = "magnitude"

    def scores(self, weight):
        return weight.detach().float().abs()


class GradientCriterion(Criterion):
    """``mean_t |g_t|``: the average absolute gradient over the observed steps."""

    name = "gradient"
    needs_grad = True

    def _statistic(self, w, g):
        return g.abs()

    def scores(self, weight):
        return self._mean_statistic(weight).clone()


class TaylorCriterion(Criterion):
    """First-order Taylor, ``mean_t |w_t · g_t|``: the loss change of removing each weight, to first
    order (Molchanov et al. 2019), averaged over the observed steps with the weight of each step."""

    name = "taylor"
    needs_grad = True

    def _statistic(self, w, g):
        return (w * g).abs()

    def scores(self, weight):
        return self._mean_statistic(weight).clone()


class FisherCriterion(Criterion):
    """Second order, the Fisher / OBD diagonal: ``w² · E[g²]`` (LeCun et al. 1990).

    ``E[g²]`` is the mean of the squared mini-batch gradient over the observed
    (calibration) batches, the usual empirical-Fisher approximation of the
    Hessian diagonal; ``w`` is the weight when the scores are taken.
    """

    name = "fisher"
    needs_grad = True

    def _statistic(self, w, g):
        return g.square()

    def scores(self, weight):
        return weight.detach().float().square() * self._mean_statistic(weight)


class RandomCriterion(Criterion):
    """Uniform random scores, a control. Each weight tensor draws its scores once (from a
    generator seeded with ``seed``, in the order the tensors are first scored) and keeps them.
    """

    name = "random"

    def __init__(self, seed: int = 0):
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"RandomCriterion: seed must be an int, got {seed!r}")
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._drawn: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def reset(self) -> None:
        # NOTE: the drawn scores are not statistics: they survive reset so that masks stay consistent.
        super().reset()

    def scores(self, weight):
        entry = self._drawn.get(id(weight))
        if entry is None or entry[0]() is not weight:
            r = torch.rand(weight.shape, generator=self._generator).to(weight.device)
            entry = (weakref.ref(weight), r)
            self._drawn[id(weight)] = entry
        return entry[1].clone()

    def __repr__(self) -> str:
        return f"RandomCriterion(seed={self.seed})"


CRITERIA: dict[str, type[Criterion]] = {
    "magnitude": MagnitudeCriterion,
    "gradient": GradientCriterion,
    "taylor": TaylorCriterion,
    "fisher": FisherCriterion,
    "random": RandomCriterion,
}
_CRITERION_ALIASES = {"obd": "fisher"}


def get_criterion(criterion: str | Criterion) -> Criterion:
    """A criterion instance from a name (``magnitude``, ``gradient``, ``taylor``, ``fisher``/``obd``,
    ``random``) or an instance (returned as is)."""
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str):
        key = _CRITERION_ALIASES.get(criterion.lower(), criterion.lower())
        if key in CRITERIA:
            return CRITERIA[key]()
    known = ", ".join(list(CRITERIA) + list(_CRITERION_ALIASES))
    raise ValueError(f"unknown pruning criterion {criterion!r}; known criteria: {known} (or a Criterion instance)")
