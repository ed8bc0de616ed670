"""Importance criteria: one fp32 score per weight (higher = keep), by magnitude, gradient,
first-order Taylor, Fisher / OBD, or at random, and :func:`get_criterion` to pick one by name."""

from __future__ import annotations

import weakref
from typing import ClassVar

import torch
from torch import nn

from slimops.nn._convertible import _is_hf_conv1d
from slimops.nn.sparse import MaskedConv2d, MaskedLinear


def _prunable_weight(module: nn.Module) -> nn.Parameter | None:
    kinds = (nn.Linear, nn.Conv2d, MaskedLinear, MaskedConv2d)
    if (isinstance(module, kinds) or _is_hf_conv1d(module)) and isinstance(module.weight, nn.Parameter):
        return module.weight
    return None


class Criterion:
    """Base class: an importance score per weight (a tensor shaped like the weight, fp32).

    Gradient-based criteria (``needs_grad = True``) accumulate statistics of the
    weight gradients, one observation per training step. Feed them one of two ways:

    * inside a :class:`Pruner`, :meth:`Pruner.step` observes the pruned weights
      on its own (do not call :meth:`observe` as well);
    * otherwise call ``criterion.observe(model)`` after each ``loss.backward()``
      and before ``optimizer.zero_grad()``; it reads ``.grad`` of every
      ``nn.Linear``, Hugging Face ``Conv1D``, ``nn.Conv2d``, ``MaskedLinear`` and
      ``MaskedConv2d`` weight. With a ``torch.amp.GradScaler``, call it after
      ``scaler.unscale_(optimizer)`` or ``scaler.step(optimizer)``: before that the
      gradients are multiplied by the loss scale.

    Statistics are kept per weight tensor (by identity) until :meth:`reset`.
    """

    name: ClassVar[str] = ""
    needs_grad: ClassVar[bool] = False

    def __init__(self):
        # id(weight) -> (weakref to weight, accumulated fp32 tensor, number of observations)
        self._stats: dict[int, tuple[weakref.ref, torch.Tensor, int]] = {}

    @torch.no_grad()
    def observe(self, model: nn.Module) -> int:
        """Accumulate the current ``.grad`` of every prunable weight in ``model``; returns how many were seen.

        A step whose gradients hold inf or NaN (one a GradScaler skips) is not observed:
        nothing is accumulated and 0 is returned.
        """
        weights = [w for m in model.modules() if (w := _prunable_weight(m)) is not None and w.grad is not None]
        if not weights:
            return 0
        flags = [torch.isfinite(w.grad).all() for w in weights]
        if not bool(torch.stack([f.to(flags[0].device) for f in flags]).all()):  # one host sync
            return 0
        for w in weights:
            self.observe_grad(w, w.grad)
        return len(weights)

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
        if self.num_observed(weight) == 0:
            raise ValueError(_no_gradient(self.name, f"this weight {tuple(weight.shape)}"))
        return self._stats[id(weight)][1] / self.num_observed(weight)

    @torch.no_grad()
    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """Importance of every element of ``weight``: fp32, same shape, higher means keep."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _no_gradient(criterion: str, what: str, hint: str = "") -> str:
    return (
        f"the {criterion!r} criterion has seen no gradient of {what}{hint}: run backward passes first "
        "(a Pruner observes them in pruner.step(), after optimizer.step(); elsewhere call "
        "criterion.observe(model) after each loss.backward())"
    )


def require_observed(criterion: Criterion, weights: dict[str, torch.Tensor], hint: str = "") -> None:
    """Raise ``ValueError`` naming every layer of ``weights`` (``{fqn: weight}``) whose gradient
    the (gradient) ``criterion`` has not seen; ``hint`` is added to the message."""
    if not criterion.needs_grad:
        return
    unseen = [fqn for fqn, w in weights.items() if criterion.num_observed(w) == 0]
    if unseen:
        what = "the weight of " + ", ".join(repr(fqn) for fqn in unseen)
        raise ValueError(_no_gradient(criterion.name, what, hint))


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
