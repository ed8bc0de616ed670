"""Mask selection: the keep-masks that prune the lowest-scored units of a pattern, per layer
or ranked across layers (:func:`select_masks`)."""

from __future__ import annotations

import math

import torch

from slimops.prune.patterns import Pattern


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
