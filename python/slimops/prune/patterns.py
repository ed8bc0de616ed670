"""Sparsity patterns: how weights are grouped into units pruned together (single weights,
``b x b`` blocks, N:M groups, whole output channels), and :func:`get_pattern` to pick one by name."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch


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
