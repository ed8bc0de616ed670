"""Pruning: importance criteria, sparsity patterns, schedules, the :class:`Pruner`, and :class:`SparseConfig`.

Gradual pruning while training (Zhu & Gupta 2017), then packing::

    pruner = slimops.prune.Pruner(
        model, criterion="taylor", pattern="unstructured", sparsity=0.75,
        schedule=slimops.prune.gradual(end_step=1000, frequency=50),
    )
    for x, y in batches:                 # build the optimizer after the Pruner or before: both work
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()                  # gradient criteria observe here, through hooks
        optimizer.step()
        pruner.step()                    # advance the schedule; update masks when it says so
    pruner.sparsity_report().print()
    pruner.finalize()                    # 2:4, block-sparse, shrunk or dense, layer by layer

One-shot, without training: ``slimops.convert(model, SparseConfig(0.5, pattern="2:4"))``.

Criteria give one importance score per weight (higher = keep). Patterns group
the weights into units (single weights, ``b x b`` tiles, N:M candidates, or
whole output channels) and prune the units of lowest mean importance. Masks
only ever grow sparser: a pruned weight is never revived.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from slimops.conversion import Config, FilterFn, Unsupported, register_handler
from slimops.nn.sparse import (
    BLOCK_SIZES,
    BlockSparseLinear,
    MaskedLinear,
    Sparse24Linear,
    check_linear,
    dense_linear,
)

# --------------------------------------------------------------------------- criteria


def _prunable_weight(module: nn.Module) -> nn.Parameter | None:
    if isinstance(module, (nn.Linear, nn.Conv2d, MaskedLinear)) and isinstance(module.weight, nn.Parameter):
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
      ``nn.Linear``, ``nn.Conv2d`` and ``MaskedLinear`` weight.

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


# --------------------------------------------------------------------------- patterns


class Pattern:
    """Base class: how weights are grouped into units that are pruned together.

    Patterns work on a 2-D view ``[out, in]`` of the weight (a Conv2d weight is
    viewed as ``[out_channels, in_channels * kh * kw]``). A unit's score is the
    mean importance of its weights.
    """

    name: ClassVar[str] = ""

    def check(self, shape: tuple[int, int]) -> str | None:
        """Why a ``[out, in]`` weight cannot take this pattern, or None."""
        return None

    @property
    def max_sparsity(self) -> float:
        """The highest sparsity the pattern can reach (below 1)."""
        return 1.0

    def unit_size(self, shape: tuple[int, int]) -> int:
        return 1

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores of the units of a ``[out, in]`` score matrix (+inf: a unit that may not be pruned)."""
        return scores

    def expand(self, pruned_units: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """The ``[out, in]`` bool matrix of the weights in the pruned units."""
        return pruned_units

    def __repr__(self) -> str:
        return f"{self.name}()"


class Unstructured(Pattern):
    """Single weights."""

    name = "unstructured"


class Block(Pattern):
    """``size x size`` tiles; both weight dimensions must be multiples of ``size``."""

    name = "block"

    def __init__(self, size: int = 64):
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"block pattern: size must be a positive int, got {size!r}")
        self.size = size

    def check(self, shape):
        n, k = shape
        if n % self.size or k % self.size:
            return f"block {self.size}x{self.size} does not divide the weight [{n}, {k}]"
        return None

    def unit_size(self, shape):
        return self.size * self.size

    def unit_scores(self, scores):
        n, k, b = scores.shape[0], scores.shape[1], self.size
        return scores.reshape(n // b, b, k // b, b).mean(dim=(1, 3))

    def expand(self, pruned_units, shape):
        b = self.size
        return pruned_units.repeat_interleave(b, dim=0).repeat_interleave(b, dim=1)

    def __repr__(self):
        return f"block({self.size})"


class NM(Pattern):
    """N:M semi-structured: at most ``n`` kept weights in every ``m`` consecutive inputs of a row.

    The final sparsity is ``1 - n / m``. Below it (a gradual schedule on its way),
    the lowest-scored of each group's ``m - n`` pruning candidates go first.
    """

    name = "n_m"

    def __init__(self, n: int = 2, m: int = 4):
        for arg, v in (("n", n), ("m", m)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"n_m pattern: {arg} must be a positive int, got {v!r}")
        if n >= m:
            raise ValueError(f"n_m pattern: n must be smaller than m, got n={n}, m={m}")
        self.n, self.m = n, m

    def check(self, shape):
        if shape[1] % self.m:
            return f"{self.n}:{self.m} needs in_features divisible by {self.m}, got {shape[1]}"
        return None

    @property
    def max_sparsity(self):
        return 1.0 - self.n / self.m

    def unit_scores(self, scores):
        rows, k = scores.shape
        g = scores.reshape(rows, k // self.m, self.m)
        # The m - n lowest of each group are the candidates; ties go to the lower position.
        low = torch.argsort(g, dim=-1, stable=True)[..., : self.m - self.n]
        candidate = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, low, True)
        return torch.where(candidate, g, torch.full_like(g, math.inf)).reshape(rows, k)

    def __repr__(self):
        return f"n_m({self.n}, {self.m})"


class Channel(Pattern):
    """Whole output channels (rows of the ``[out, in]`` view). :meth:`Pruner.finalize` and
    :func:`prune_channels` remove them physically along simple chains (see :func:`channel_consumer`)."""

    name = "channel"

    def unit_size(self, shape):
        return shape[1]

    def unit_scores(self, scores):
        return scores.mean(dim=1)

    def expand(self, pruned_units, shape):
        return pruned_units[:, None].expand(shape)


def unstructured() -> Unstructured:
    """Single weights."""
    return Unstructured()


def block(size: int = 64) -> Block:
    """``size x size`` tiles scored by their mean (equivalently, summed) importance."""
    return Block(size)


def n_m(n: int = 2, m: int = 4) -> NM:
    """N:M along the input dimension; ``n_m(2, 4)`` is the 2:4 the sparse tensor cores run."""
    return NM(n, m)


def channel() -> Channel:
    """Whole output channels of a Linear or Conv2d."""
    return Channel()


PATTERNS: dict[str, Callable[[], Pattern]] = {
    "unstructured": Unstructured,
    "block": Block,
    "n_m": NM,
    "2:4": lambda: NM(2, 4),
    "channel": Channel,
}


def get_pattern(pattern: str | Pattern) -> Pattern:
    """A pattern from a name (``unstructured``, ``block`` (64x64), ``n_m`` / ``2:4``, ``channel``)
    or an instance (``block(32)``, ``n_m(2, 4)``, ...)."""
    if isinstance(pattern, Pattern):
        return pattern
    if isinstance(pattern, str) and pattern.lower() in PATTERNS:
        return PATTERNS[pattern.lower()]()
    known = ", ".join(PATTERNS)
    raise ValueError(
        f"unknown sparsity pattern {pattern!r}; known patterns: {known} "
        "(or an instance: unstructured(), block(size), n_m(n, m), channel())"
    )


# --------------------------------------------------------------------------- selection


def _check_sparsity(sparsity, what: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"{what} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _layer_units(scores: torch.Tensor, keep: torch.Tensor, pattern: Pattern, normalize: bool) -> torch.Tensor:
    """Unit scores of one layer; weights already pruned score -inf so they stay pruned."""
    s = _as_2d(scores).float()
    keep = _as_2d(keep)
    if not torch.isfinite(s).all():
        raise ValueError("pruning scores hold inf or NaN (non-finite weights or gradients?)")
    if normalize:
        # Global ranking compares layers through each one's mean importance per kept weight:
        # scale-free (a layer scaled by 10 ranks the same) and size-free.
        mean = s[keep].mean() if keep.any() else s.new_zeros(())
        if mean > 0:
            s = s / mean
    s = torch.where(keep, s, torch.full_like(s, -math.inf))
    return pattern.unit_scores(s)


def select_masks(
    scores: list[torch.Tensor],
    keeps: list[torch.Tensor],
    pattern: Pattern,
    sparsity: float,
    scope: str,
) -> list[torch.Tensor]:
    """New keep-masks (bool, shaped like each score tensor) at ``sparsity`` for the given layers.

    ``scope="layer"`` prunes ``round(sparsity * units)`` units of each layer;
    ``scope="global"`` prunes the ``round(sparsity * weights)`` weights with the lowest
    normalized scores across all layers (to the nearest whole unit). Either way
    every layer keeps at least one unit, and the new masks are subsets of ``keeps``.
    """
    shapes = [tuple(_as_2d(s).shape) for s in scores]
    units = [_layer_units(s, k, pattern, scope == "global") for s, k in zip(scores, keeps)]
    pruned: list[torch.Tensor] = []
    if scope == "layer":
        for u, shape in zip(units, shapes):
            flat = u.reshape(-1)
            limit = int(torch.isfinite(flat).sum() + (flat == -math.inf).sum())  # +inf units are not prunable
            count = min(round(sparsity * flat.numel()), limit, flat.numel() - 1)
            p = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
            p[torch.argsort(flat, stable=True)[:count]] = True
            pruned.append(p.reshape(u.shape))
    else:
        sizes = [pattern.unit_size(shape) for shape in shapes]
        flat = torch.cat([u.reshape(-1).cpu() for u in units])
        size = torch.cat([torch.full((u.numel(),), s, dtype=torch.int64) for u, s in zip(units, sizes)])
        order = torch.argsort(flat, stable=True)
        order = order[flat[order] != math.inf]
        cum = size[order].cumsum(0)
        target = round(sparsity * sum(math.prod(s) for s in shapes))
        take = int(torch.searchsorted(cum, torch.tensor(target), right=True))  # largest prefix <= target
        if take < cum.numel() and cum[take] - target < target - (cum[take - 1] if take else 0):
            take += 1  # the nearest whole unit
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[order[:take]] = True
        start = 0
        for u in units:
            p = chosen[start : start + u.numel()].clone()
            if p.all():  # never empty a layer: keep its best unit
                p[torch.argmax(flat[start : start + u.numel()])] = False
            pruned.append(p.reshape(u.shape).to(u.device))
            start += u.numel()
    masks = []
    for p, shape, k in zip(pruned, shapes, keeps):
        drop = pattern.expand(p, shape)
        masks.append((_as_2d(k) & ~drop).reshape(k.shape))
    return masks


# --------------------------------------------------------------------------- schedules


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


# --------------------------------------------------------------------------- channel surgery


class ChannelPruningError(ValueError):
    """A layer's output channels cannot be removed; ``.reason`` says why, the message names the layer too."""

    def __init__(self, fqn: str, reason: str):
        super().__init__(f"cannot remove output channels of {fqn or 'the model'}: {reason}")
        self.fqn = fqn
        self.reason = reason


# Modules that act on each channel separately (and keep the channel count), so a removed
# channel can be followed through them.
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
)


@dataclasses.dataclass
class _Chain:
    producer: nn.Module
    between: list[nn.Module]  # element-wise modules and BatchNorms, in order
    consumer: nn.Module
    consumer_fqn: str


def _uses(model: nn.Module) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    return counts


def channel_consumer(model: nn.Module, fqn: str) -> _Chain:
    """Follow the output channels of the Linear / Conv2d at ``fqn`` to the one layer that reads them.

    Channels can be removed when the layer sits in an ``nn.Sequential`` (plain
    forward) and is followed, through element-wise activations, dropout and a
    BatchNorm of the matching kind, by a Linear (after a Linear) or an ungrouped
    Conv2d (after a Conv2d), none of them used anywhere else.

    Raises:
        ChannelPruningError: with the reason when the dependency is not that clear.
    """
    producer = model.get_submodule(fqn)
    if type(producer) not in (nn.Linear, nn.Conv2d, MaskedLinear):
        raise ChannelPruningError(fqn, f"{type(producer).__name__} is not an nn.Linear or nn.Conv2d")
    if isinstance(producer, nn.Conv2d) and producer.groups != 1:
        raise ChannelPruningError(fqn, f"grouped convolution (groups={producer.groups}) ties outputs to inputs")
    parent_fqn, _, name = fqn.rpartition(".")
    parent = model.get_submodule(parent_fqn) if parent_fqn else model
    where = parent_fqn or "the model"
    if not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward:
        raise ChannelPruningError(
            fqn,
            f"its output goes wherever {type(parent).__name__}.forward sends it; only chains inside an "
            "nn.Sequential are followed",
        )
    uses = _uses(model)
    if uses[id(producer)] > 1:
        raise ChannelPruningError(fqn, "the module is used at more than one place in the model")
    names = list(parent._modules)
    linear = isinstance(producer, (nn.Linear, MaskedLinear))
    channels = producer.weight.shape[0]
    between: list[nn.Module] = []
    for child in names[names.index(name) + 1 :]:
        m = parent._modules[child]
        child_fqn = f"{parent_fqn}.{child}" if parent_fqn else child
        if uses[id(m)] > 1:
            raise ChannelPruningError(fqn, f"{child_fqn} ({type(m).__name__}) is used at more than one place")
        bn = nn.BatchNorm1d if linear else nn.BatchNorm2d
        if isinstance(m, _ELEMENTWISE) or (type(m) is bn and m.num_features == channels):
            between.append(m)
            continue
        if type(m) in ((nn.Linear, MaskedLinear) if linear else (nn.Conv2d,)):
            k = m.weight.shape[1]
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise ChannelPruningError(fqn, f"its consumer {child_fqn} is a grouped convolution")
            if k != channels:
                raise ChannelPruningError(fqn, f"{child_fqn} reads {k} channels, not the {channels} produced")
            return _Chain(producer, between, m, child_fqn)
        raise ChannelPruningError(
            fqn,
            f"{child_fqn} ({type(m).__name__}) sits between it and the next layer; only element-wise "
            f"activations, dropout and {bn.__name__} are followed",
        )
    raise ChannelPruningError(
        fqn,
        f"its output leaves {where} (no layer reads it inside the nn.Sequential), so who consumes "
        "its channels is unknown",
    )


@torch.no_grad()
def _removed_constants(chain: _Chain, removed: torch.Tensor) -> torch.Tensor:
    """What each removed channel feeds the consumer: the producer's bias (its weights count as zero)
    through the modules in between, in eval mode."""
    p = chain.producer
    c = p.weight.shape[0]
    z = p.weight.new_zeros((1, c) if not isinstance(p, nn.Conv2d) else (1, c, 1, 1))
    if p.bias is not None:
        z.view(-1)[:] = p.bias.detach()
    for m in chain.between:
        was = m.training
        m.eval()
        z = m(z)
        m.train(was)
    return z.reshape(-1)[removed]


def _param_like(old: nn.Parameter | None, new: torch.Tensor | None):
    return None if new is None else nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)


@torch.no_grad()
def remove_channels(model: nn.Module, fqn: str, keep: torch.Tensor) -> str:
    """Remove the output channels of ``fqn`` not in ``keep``, and the matching inputs of its consumer.

    A removed channel is treated as if its weights were zero: it then outputs a
    constant (the bias, through the activation and BatchNorm in between), whose
    contribution is folded into the consumer's bias. That is exact for a Linear
    consumer and for a Conv2d without zero padding; NOTE: next to the border of a
    zero-padded Conv2d the folded constant is slightly off (the padding would have
    read zeros there). BatchNorm folding uses the running statistics (eval mode).
    Parameters are replaced: build the optimizer afterwards.

    Args:
        model: the model holding the layer.
        fqn: the producer's name in ``model``.
        keep: bool ``[out_channels]`` or the int indices of the channels to keep.

    Returns:
        the consumer's name. Raises :class:`ChannelPruningError` when the chain is not clear.
    """
    chain = channel_consumer(model, fqn)
    p, q = chain.producer, chain.consumer
    c = p.weight.shape[0]
    if keep.dtype == torch.bool:
        if keep.shape != (c,):
            raise ValueError(f"remove_channels: keep mask must be [{c}], got {tuple(keep.shape)}")
        idx = keep.nonzero().reshape(-1)
    else:
        idx = keep.reshape(-1).long().unique()
        if idx.numel() and (idx.min() < 0 or idx.max() >= c):
            raise ValueError(f"remove_channels: keep indices must be in [0, {c})")
    if idx.numel() == 0:
        raise ValueError(f"remove_channels: {fqn} would keep no channel")
    idx = idx.to(p.weight.device)
    removed = torch.ones(c, dtype=torch.bool, device=idx.device)
    removed[idx] = False

    # Everything new is computed first; the modules change only at the end.
    const = _removed_constants(chain, removed)
    qw = q.weight.detach()
    qb = None if q.bias is None else q.bias.detach().clone()
    if removed.any() and bool((const != 0).any()):
        w_removed = qw[:, removed]
        fold = (w_removed.reshape(w_removed.shape[0], w_removed.shape[1], -1).sum(-1) * const).sum(1)
        qb = fold if qb is None else qb + fold
    new_q_weight = qw[:, idx]

    p.weight = _param_like(p.weight, p.weight.detach()[idx])
    if p.bias is not None:
        p.bias = _param_like(p.bias, p.bias.detach()[idx])
    if isinstance(p, MaskedLinear):
        p.mask = p.mask[idx].contiguous()
    elif isinstance(p, nn.Linear):
        p.out_features = idx.numel()
    else:
        p.out_channels = idx.numel()
    for m in chain.between:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.affine:
                m.weight = _param_like(m.weight, m.weight.detach()[idx])
                m.bias = _param_like(m.bias, m.bias.detach()[idx])
            if m.running_mean is not None:
                m.running_mean = m.running_mean[idx].contiguous()
                m.running_var = m.running_var[idx].contiguous()
            m.num_features = idx.numel()
    q.weight = _param_like(q.weight, new_q_weight)
    if qb is not None:
        q.bias = nn.Parameter(qb.contiguous(), requires_grad=q.weight.requires_grad)
    if isinstance(q, MaskedLinear):
        q.mask = q.mask[:, idx].contiguous()
    elif isinstance(q, nn.Linear):
        q.in_features = idx.numel()
    else:
        q.in_channels = idx.numel()
    return chain.consumer_fqn


@dataclasses.dataclass
class ChannelPruneResult:
    """What :func:`prune_channels` did: ``{fqn: (channels before, after)}`` and ``{fqn: why skipped}``."""

    pruned: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)


def prune_channels(
    model: nn.Module,
    sparsity: float,
    criterion: str | Criterion = "magnitude",
    scope: str = "layer",
    filter_fn: FilterFn | None = None,
) -> ChannelPruneResult:
    """One-shot channel pruning of every Linear and Conv2d whose consumer is clear, in place.

    Each selected layer loses the output channels of lowest mean importance
    (``round(sparsity * channels)`` per layer, or ranked across layers for
    ``scope="global"``; at least one channel stays), and its consumer the
    matching inputs (:func:`remove_channels`). Layers whose dependency is not
    clear are left alone and listed with the reason in ``result.skipped``.
    Gradient criteria must have observed the model first (``criterion.observe(model)``).
    """
    sparsity = _check_sparsity(sparsity)
    crit = get_criterion(criterion)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    result = ChannelPruneResult()
    chosen: list[tuple[str, nn.Module]] = []
    for fqn, m in model.named_modules():
        if type(m) not in (nn.Linear, nn.Conv2d) or (filter_fn is not None and not filter_fn(m, fqn)):
            continue
        try:
            channel_consumer(model, fqn)
        except ChannelPruningError as why:
            result.skipped[fqn] = why.reason
            continue
        chosen.append((fqn, m))
    if not chosen:
        return result
    scores = [crit.scores(m.weight) for _, m in chosen]
    keeps = [torch.ones_like(s, dtype=torch.bool) for s in scores]
    masks = select_masks(scores, keeps, Channel(), sparsity, scope)
    for (fqn, m), mask in zip(chosen, masks):
        rows = _as_2d(mask).any(dim=1)
        before = m.weight.shape[0]
        remove_channels(model, fqn, rows)
        result.pruned[fqn] = (before, int(rows.sum()))
    return result


# --------------------------------------------------------------------------- packing


def is_2_4(mask: torch.Tensor) -> bool:
    """Whether a ``[N, K]`` keep-mask has at most 2 kept entries in every 4 consecutive inputs."""
    n, k = mask.shape
    return k % 4 == 0 and bool((mask.reshape(n, k // 4, 4).sum(-1) <= 2).all())


def zero_tile_fraction(mask: torch.Tensor, block_size: int) -> float:
    """The fraction of ``block_size x block_size`` tiles of a keep-mask with nothing kept."""
    n, k = mask.shape
    b = block_size
    tiles = mask.reshape(n // b, b, k // b, b).any(dim=3).any(dim=1)
    return 1.0 - tiles.float().mean().item()


# The 2:4 metadata packs four 2-bit positions per byte: K must be a multiple of 8.
_S24_K_MULTIPLE = 8


def _s24_runs(weight: torch.Tensor) -> bool:
    # The sparse tensor cores take fp16/bf16 only; the CPU kernel takes fp32 too.
    return weight.device.type == "cpu" or weight.dtype in (torch.float16, torch.bfloat16)


def pack_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor, min_zero_tiles: float = 0.5
) -> tuple[nn.Module, str]:
    """The fastest module for ``weight ⊙ mask``, and a line saying which and why.

    2:4 (:class:`Sparse24Linear`) when the mask is 2:4; else block-sparse
    (:class:`BlockSparseLinear`, the largest tile of 128/64/32/16 that divides the
    weight and leaves at least ``min_zero_tiles`` of the tiles empty); else a dense
    ``nn.Linear`` holding the zeros.
    """
    n, k = weight.shape
    w = weight.detach() * mask
    dense = dense_linear(w, bias)
    sparsity = 1.0 - mask.float().mean().item()
    if sparsity == 0:
        return dense, "Linear (dense: nothing pruned)"
    note = ""
    if k % _S24_K_MULTIPLE == 0 and is_2_4(mask):
        if _s24_runs(weight):
            return Sparse24Linear.from_dense(dense), f"Sparse24Linear (2:4, {sparsity:.0%} sparse)"
        note = f"; 2:4 on {weight.device.type} needs float16/bfloat16 weights, not {weight.dtype}"
    for b in sorted(BLOCK_SIZES, reverse=True):
        if n % b or k % b:
            continue
        zero = zero_tile_fraction(mask, b)
        if zero >= min_zero_tiles:
            module = BlockSparseLinear.from_dense(dense, mask, b)
            return module, f"BlockSparseLinear ({b}x{b}, {zero:.0%} zero tiles)"
    return dense, f"Linear (dense: {sparsity:.0%} sparse, no 2:4 or block structure that pays{note})"


# --------------------------------------------------------------------------- reports


@dataclasses.dataclass
class LayerSparsity:
    """One pruned layer: shape of its weight, pruned weights, and (after finalize) its packed form."""

    shape: tuple[int, ...]
    numel: int
    pruned: int
    form: str = "MaskedLinear"

    @property
    def sparsity(self) -> float:
        return self.pruned / max(self.numel, 1)


@dataclasses.dataclass
class SparsityReport:
    """Per-layer sparsity of a :class:`Pruner`; ``report[fqn]`` is a :class:`LayerSparsity`."""

    layers: dict[str, LayerSparsity]
    skipped: dict[str, str]
    target: float
    step: int
    pattern: str
    criterion: str

    def __getitem__(self, fqn: str) -> LayerSparsity:
        return self.layers[fqn]

    @property
    def sparsity(self) -> float:
        """Pruned fraction of the weights of every pruned layer together."""
        total = sum(layer.numel for layer in self.layers.values())
        return sum(layer.pruned for layer in self.layers.values()) / max(total, 1)

    def table(self):
        """A ``rich.table.Table`` of the layers (and the skipped ones, with why)."""
        from rich.table import Table

        t = Table(
            title=f"sparsity: {self.pattern}, {self.criterion}, target {self.target:.1%} at step {self.step}",
        )
        for col, justify in (("layer", "left"), ("shape", "left"), ("pruned", "right"),
                             ("sparsity", "right"), ("form", "left")):
            t.add_column(col, justify=justify)
        for fqn, layer in self.layers.items():
            t.add_row(fqn, "x".join(map(str, layer.shape)), f"{layer.pruned}/{layer.numel}",
                      f"{layer.sparsity:.1%}", layer.form)
        total = sum(layer.numel for layer in self.layers.values())
        pruned = sum(layer.pruned for layer in self.layers.values())
        t.add_section()
        t.add_row("total", "", f"{pruned}/{total}", f"{self.sparsity:.1%}", "")
        for fqn, why in self.skipped.items():
            t.add_row(fqn, "", "", "skipped", why, style="dim")
        return t

    def print(self, console=None) -> None:
        """Print :meth:`table` (to stdout unless a ``rich.console.Console`` is given)."""
        from rich.console import Console

        (console or Console()).print(self.table())


# --------------------------------------------------------------------------- Pruner


class Pruner:
    """Prunes the ``nn.Linear`` layers of a model while it trains, then packs them.

    The constructor swaps every selected ``nn.Linear`` for a :class:`MaskedLinear`
    that shares its parameters (so an optimizer built before or after works) with
    an all-True mask. Call :meth:`step` after each optimizer step: it advances
    the schedule, updates the masks when the schedule says so (zeroing the newly
    pruned weights), and zeros any pruned weight an optimizer's old momentum
    moved. :meth:`finalize` turns each layer into its fastest packed form.

    Args:
        model: the model, changed in place.
        criterion: a name (``magnitude``, ``gradient``, ``taylor``, ``fisher``, ``random``) or a
            :class:`Criterion`. Gradient criteria are fed by hooks on the pruned weights during
            every backward pass since the last mask update.
        pattern: a name (``unstructured``, ``block``, ``2:4``/``n_m``, ``channel``) or a
            :class:`Pattern` (``block(32)``, ``n_m(2, 4)``, ...).
        sparsity: the final fraction of pruned weights, in [0, 1); for N:M it must be
            ``1 - n / m`` (None picks it).
        schedule: ``"one_shot"``, :func:`one_shot`, or :func:`gradual`.
        scope: ``"layer"`` (each layer at the sparsity) or ``"global"`` (ranked across layers,
            each layer's scores divided by its mean; every layer keeps at least one unit).
        filter_fn: ``filter_fn(module, fqn) -> bool`` selects the layers.

    Layers that cannot take the pattern (shape, or, for channels, no clear consumer)
    are left as they were and listed with the reason in :attr:`skipped`.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: str | Criterion = "magnitude",
        pattern: str | Pattern = "unstructured",
        sparsity: float | None = 0.5,
        schedule: str | Schedule = "one_shot",
        scope: str = "layer",
        filter_fn: FilterFn | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Pruner: model must be an nn.Module, got {type(model).__name__}")
        self.criterion = get_criterion(criterion)
        self.pattern = get_pattern(pattern)
        if sparsity is None and isinstance(self.pattern, NM):
            sparsity = self.pattern.max_sparsity
        self.sparsity = _check_sparsity(sparsity)
        if isinstance(self.pattern, NM) and not math.isclose(self.sparsity, self.pattern.max_sparsity):
            raise ValueError(
                f"sparsity must be {self.pattern.max_sparsity} for {self.pattern!r} (1 - n/m), got {self.sparsity}"
            )
        self.schedule = get_schedule(schedule)
        if isinstance(self.schedule, Polynomial) and self.schedule.initial_sparsity > self.sparsity:
            raise ValueError(
                f"gradual: initial_sparsity {self.schedule.initial_sparsity} exceeds the final sparsity {self.sparsity}"
            )
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.scope = scope
        self.model = model
        self.skipped: dict[str, str] = {}
        self.layers: dict[str, MaskedLinear] = {}
        self.step_count = 0
        self.current_sparsity = 0.0
        self.forms: dict[str, str] | None = None  # set by finalize
        self._final_stats: dict[str, LayerSparsity] = {}

        planned: list[tuple[str, nn.Linear]] = []
        for fqn, m in model.named_modules():
            if not isinstance(m, nn.Linear) or (filter_fn is not None and not filter_fn(m, fqn)):
                continue
            try:
                check_linear(m)
            except Unsupported as why:
                self.skipped[fqn] = str(why)
                continue
            why = self.pattern.check(tuple(m.weight.shape))
            if why is None and isinstance(self.pattern, Channel):
                try:
                    channel_consumer(model, fqn)
                except ChannelPruningError as e:
                    why = e.reason
            if why is not None:
                self.skipped[fqn] = why
                continue
            planned.append((fqn, m))
        if self.skipped:
            warnings.warn(
                f"Pruner leaves {len(self.skipped)} layer(s) dense: "
                + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()),
                stacklevel=2,
            )
        if not planned:
            warnings.warn("Pruner selected no layer", stacklevel=2)
        for fqn, m in planned:
            masked = MaskedLinear.from_float(m)
            _set_submodule(model, fqn, masked)
            self.layers[fqn] = masked
        self._hooks = []
        if self.criterion.needs_grad:
            for masked in self.layers.values():
                self._hooks.append(masked.weight.register_hook(self._observer(masked.weight)))

    def _observer(self, weight: nn.Parameter):
        ref = weakref.ref(weight)
        crit = self.criterion

        def hook(grad: torch.Tensor) -> None:
            w = ref()
            if w is not None:
                crit.observe_grad(w, grad)

        return hook

    def _check_live(self) -> None:
        if self.forms is not None:
            raise RuntimeError("Pruner: finalize() was called; the masked layers are gone")

    def step(self) -> None:
        """Call once per training step, after ``optimizer.step()``.

        The ``t``-th call (from 0) updates the masks if the schedule updates at ``t``
        and its sparsity there is above the current one, then zeros every pruned weight.
        """
        self._check_live()
        t = self.step_count
        if self.schedule.updates_at(t):
            target = self.schedule.sparsity(t, self.sparsity)
            if target > self.current_sparsity:
                self.update_masks(target)
        for layer in self.layers.values():
            layer.apply_mask_()
        self.step_count += 1

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        """Prune now to ``sparsity`` (never below what is already pruned), then reset the criterion."""
        self._check_live()
        sparsity = _check_sparsity(sparsity)
        if sparsity > self.pattern.max_sparsity + 1e-12:
            raise ValueError(f"sparsity {sparsity} exceeds what {self.pattern!r} allows ({self.pattern.max_sparsity})")
        if not self.layers:
            return
        layers = list(self.layers.values())
        scores = [self.criterion.scores(layer.weight) for layer in layers]
        masks = select_masks(scores, [layer.mask for layer in layers], self.pattern, sparsity, self.scope)
        for layer, mask in zip(layers, masks):
            layer.set_mask(mask)
        self.criterion.reset()
        self.current_sparsity = max(self.current_sparsity, sparsity)

    def sparsity_report(self) -> SparsityReport:
        """Per-layer sparsity now (and, after :meth:`finalize`, each layer's packed form)."""
        if self.forms is not None:
            layers = dict(self._final_stats)
        else:
            layers = {
                fqn: LayerSparsity(tuple(m.weight.shape), m.mask.numel(), int((~m.mask).sum()))
                for fqn, m in self.layers.items()
            }
        return SparsityReport(
            layers, dict(self.skipped), self.current_sparsity, self.step_count, repr(self.pattern), self.criterion.name
        )

    @torch.no_grad()
    def finalize(self, min_zero_tiles: float = 0.5) -> dict[str, str]:
        """Replace every masked layer with the fastest module its mask allows, in place.

        * channel pattern: the pruned output channels and the consumer's matching inputs
          are removed (:func:`remove_channels`), leaving a smaller dense ``nn.Linear``;
        * a 2:4 mask: :class:`Sparse24Linear`;
        * a mask with at least ``min_zero_tiles`` of its tiles empty: :class:`BlockSparseLinear`;
        * otherwise a dense ``nn.Linear`` holding the zeros (sparsity that does not pay).

        Returns ``{fqn: form}`` (also in :attr:`forms` and :meth:`sparsity_report`).
        The new modules do not train: they are for inference (or further conversion).
        """
        self._check_live()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        masks: dict[str, torch.Tensor] = {}
        stats: dict[str, LayerSparsity] = {}
        for fqn, layer in self.layers.items():
            stats[fqn] = LayerSparsity(tuple(layer.weight.shape), layer.mask.numel(), int((~layer.mask).sum()))
            masks[fqn] = layer.mask.clone()
            _set_submodule(self.model, fqn, layer.to_linear())
        forms: dict[str, str] = {}
        if isinstance(self.pattern, Channel):
            for fqn in self.layers:
                linear = self.model.get_submodule(fqn)
                rows = masks[fqn].any(dim=1)
                before = linear.out_features
                if rows.all():
                    forms[fqn] = "Linear (dense: no channel pruned)"
                    continue
                consumer = remove_channels(self.model, fqn, rows)
                masks[fqn] = masks[fqn][rows]
                if consumer in masks:
                    masks[consumer] = masks[consumer][:, rows]
                forms[fqn] = f"Linear (shrunk: {before} -> {int(rows.sum())} outputs; {consumer} reads fewer inputs)"
        else:
            for fqn in self.layers:
                linear = self.model.get_submodule(fqn)
                module, forms[fqn] = pack_linear(linear.weight, linear.bias, masks[fqn], min_zero_tiles)
                _set_submodule(self.model, fqn, module)
        for fqn, form in forms.items():
            stats[fqn].form = form
        self._final_stats = stats
        self.forms = forms
        self.layers = {}
        return dict(forms)


def _set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_fqn, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_fqn) if parent_fqn else model
    setattr(parent, child, new)


# --------------------------------------------------------------------------- SparseConfig


_CONFIG_PATTERNS = ("unstructured", "2:4", "block")


@dataclasses.dataclass
class SparseConfig(Config):
    """One-shot pruning of each ``nn.Linear`` into its packed form, for ``slimops.convert``.

    Each layer is pruned on its own (layer scope), then packed as
    :meth:`Pruner.finalize` would: 2:4 -> :class:`Sparse24Linear`; block with at least
    half the tiles empty -> :class:`BlockSparseLinear`; otherwise a dense ``nn.Linear``
    holding the zeros. Layers whose shape the pattern cannot take are skipped, with
    the reason, in ``model.slimops_summary.skipped``.

    Args:
        sparsity: fraction of pruned weights, in [0, 1); must be 0.5 for ``"2:4"``.
        pattern: ``"unstructured"``, ``"2:4"`` or ``"block"``.
        block_size: tile size for ``"block"``: 16, 32, 64 or 128.
        criterion: ``"magnitude"``, ``"random"``, or a gradient criterion (``"gradient"``,
            ``"taylor"``, ``"fisher"``), which reads each weight's current ``.grad``
            (run a backward pass before converting).
    """

    sparsity: float
    pattern: str = "unstructured"
    block_size: int = 64
    criterion: str = "magnitude"

    def __post_init__(self):
        _check_sparsity(self.sparsity, "SparseConfig: sparsity")
        if self.pattern not in _CONFIG_PATTERNS:
            raise ValueError(f"SparseConfig: unknown pattern {self.pattern!r}; known patterns: {', '.join(_CONFIG_PATTERNS)}")
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError(f"SparseConfig: sparsity must be 0.5 for pattern '2:4', got {self.sparsity}")
        if isinstance(self.block_size, bool) or self.block_size not in BLOCK_SIZES:
            raise ValueError(f"SparseConfig: block_size must be one of {BLOCK_SIZES}, got {self.block_size!r}")
        get_criterion(self.criterion)  # raises with the known names

    def make_pattern(self) -> Pattern:
        return {"unstructured": Unstructured, "2:4": lambda: NM(2, 4), "block": lambda: Block(self.block_size)}[
            self.pattern
        ]()


@register_handler(SparseConfig, nn.Linear)
def _sparse_linear(module: nn.Linear, config: SparseConfig) -> nn.Module:
    check_linear(module)
    pattern = config.make_pattern()
    why = pattern.check(tuple(module.weight.shape))
    if why is not None:
        raise Unsupported(why)
    if config.pattern == "2:4" and module.in_features % _S24_K_MULTIPLE:
        raise Unsupported(f"2:4 packing needs in_features divisible by {_S24_K_MULTIPLE}, got {module.in_features}")
    if config.pattern == "2:4" and not _s24_runs(module.weight):
        raise Unsupported(
            f"the 2:4 kernel on {module.weight.device.type} takes float16/bfloat16 weights, not "
            f"{module.weight.dtype}: convert the model to half precision first"
        )
    weight = module.weight.detach()
    if not torch.isfinite(weight).all():
        raise Unsupported("weight holds inf or NaN values")
    crit = get_criterion(config.criterion)
    if crit.needs_grad:
        if module.weight.grad is None:
            raise ValueError(
                f"SparseConfig: criterion {config.criterion!r} reads each weight's .grad, but this layer has none; "
                "run a backward pass on calibration data before slimops.convert"
            )
        crit.observe_grad(module.weight, module.weight.grad)
    scores = crit.scores(module.weight)
    keep = torch.ones_like(weight, dtype=torch.bool)
    (mask,) = select_masks([scores], [keep], pattern, config.sparsity, "layer")
    bias = None if module.bias is None else module.bias.detach()
    packed, _ = pack_linear(weight, bias, mask)
    return packed


__all__ = [
    "CRITERIA",
    "NM",
    "PATTERNS",
    "Block",
    "Channel",
    "ChannelPruneResult",
    "ChannelPruningError",
    "Criterion",
    "FisherCriterion",
    "GradientCriterion",
    "LayerSparsity",
    "MagnitudeCriterion",
    "OneShot",
    "Pattern",
    "Polynomial",
    "Pruner",
    "RandomCriterion",
    "Schedule",
    "SparseConfig",
    "SparsityReport",
    "TaylorCriterion",
    "Unstructured",
    "block",
    "channel",
    "channel_consumer",
    "get_criterion",
    "get_pattern",
    "gradual",
    "is_2_4",
    "n_m",
    "one_shot",
    "pack_linear",
    "prune_channels",
    "remove_channels",
    "select_masks",
    "unstructured",
    "zero_tile_fraction",
]
