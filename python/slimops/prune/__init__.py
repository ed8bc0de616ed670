"""Pruning: importance criteria, sparsity patterns, schedules, the :class:`Pruner`, and :class:`SparseConfig`.

Gradual pruning while training (Zhu & Gupta 2017), then packing::

    pruner = slimops.prune.Pruner(
        model, criterion="taylor", pattern="unstructured", sparsity=0.75,
        schedule=slimops.prune.gradual(end_step=1000, frequency=50),
    )
    for x, y in batches:                 # build the optimizer after the Pruner or before: both work
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()                    # gradient criteria read .grad; masks update when the schedule says so
    pruner.sparsity_report().print()
    pruner.finalize()                    # 2:4, block-sparse, shrunk or dense, layer by layer

One-shot, without training: ``slimops.convert(model, SparseConfig(0.5, pattern="2:4"))``
(by magnitude), or with calibration data, ``slimops.prune.oneshot(model, batches, 0.5, "2:4",
method="sparsegpt")`` (or ``"wanda"``), then that ``convert`` to pack.

Criteria give one importance score per weight (higher = keep). Patterns group
the weights into units (single weights, ``b x b`` tiles, N:M candidates, or
whole output channels) and prune the units of lowest mean importance. Masks
only ever grow sparser: a pruned weight is never revived.
"""

from __future__ import annotations

from slimops.prune.channels import (
    ChannelPruneResult,
    ChannelPruningError,
    channel_consumer,
    prune_channels,
    remove_channels,
)
from slimops.prune.config import SparseConfig
from slimops.prune.criteria import (
    CRITERIA,
    Criterion,
    FisherCriterion,
    GradientCriterion,
    MagnitudeCriterion,
    RandomCriterion,
    TaylorCriterion,
    get_criterion,
)
from slimops.prune.oneshot import METHODS, oneshot
from slimops.prune.packing import is_2_4, pack_linear, zero_tile_fraction
from slimops.prune.patterns import (
    NM,
    PATTERNS,
    Block,
    Channel,
    Pattern,
    Unstructured,
    block,
    channel,
    get_pattern,
    n_m,
    unstructured,
)
from slimops.prune.pruner import Pruner
from slimops.prune.report import LayerSparsity, SparsityReport
from slimops.prune.schedules import (
    OneShot,
    Polynomial,
    Schedule,
    get_schedule,  # noqa: F401  (not in __all__, but slimops.prune.get_schedule stays reachable)
    gradual,
    one_shot,
)
from slimops.prune.selection import select_masks

__all__ = [
    "CRITERIA",
    "METHODS",
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
    "oneshot",
    "pack_linear",
    "prune_channels",
    "remove_channels",
    "select_masks",
    "unstructured",
    "zero_tile_fraction",
]
