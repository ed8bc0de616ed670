"""``Int4WeightOnlyConfig``: int4 weight-only (W4A16) conversion of ``nn.Linear`` layers.

``slimops.convert(model, Int4WeightOnlyConfig(group_size=128, scheme="asym"))`` swaps every
``nn.Linear`` (and the layers that stand in for one) for :class:`slimops.nn.Int4WeightOnlyLinear`.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from slimops.conversion import Config, register_handler
from slimops.nn.int4 import SCHEMES, Int4WeightOnlyLinear


@dataclasses.dataclass
class Int4WeightOnlyConfig(Config):
    """W4A16 int4 weight-only (:class:`~slimops.nn.Int4WeightOnlyLinear`).

    Args:
        group_size: consecutive inputs sharing a scale (and zero point); a positive multiple of 32.
            Layers whose ``in_features`` it does not divide get a shorter last group.
        scheme: "asym" (scale + float zero point per group, q in 0..15) or "sym" (scale only, q - 8).
    """

    group_size: int = 128
    scheme: str = "asym"

    def __post_init__(self):
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or g % 32:
            raise ValueError(f"Int4WeightOnlyConfig: group_size must be a positive multiple of 32, got {g!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"Int4WeightOnlyConfig: scheme must be one of {SCHEMES}, got {self.scheme!r}")


@register_handler(Int4WeightOnlyConfig, nn.Linear)
def _int4_weight_only(module: nn.Linear, config: Int4WeightOnlyConfig) -> nn.Module:
    return Int4WeightOnlyLinear.from_float(module, config.group_size, config.scheme)
