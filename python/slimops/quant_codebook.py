"""``CodebookWeightOnlyConfig``: codebook (NF4 / k-means) 4-bit weight-only conversion of ``nn.Linear`` layers.

``slimops.convert(model, CodebookWeightOnlyConfig(codebook="nf4", group_size=64))`` swaps every
``nn.Linear`` (and the layers that stand in for one) for :class:`slimops.nn.CodebookWeightOnlyLinear`.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from slimops.conversion import Config, register_handler
from slimops.nn.codebook import CODEBOOKS, KMEANS_ITERS, KMEANS_SCOPES, CodebookWeightOnlyLinear


@dataclasses.dataclass
class CodebookWeightOnlyConfig(Config):
    """W4A16 with a non-uniform 16-entry codebook (:class:`~slimops.nn.CodebookWeightOnlyLinear`).

    Args:
        bits: index bits; 4 (the only width with a kernel).
        codebook: "nf4" (QLoRA's NormalFloat table, no fit) or "kmeans" (fitted on each weight).
        group_size: inputs per absmax block; a positive multiple of 32. 64 as bitsandbytes' NF4:
            with an fp32 scale that is 4.5 bits per weight, int4 g128 asym's count.
        kmeans: "layer" (one table per layer) or "row" (one per output row, +512 / in_features
            bits per weight); k-means only.
        kmeans_iters: Lloyd iterations (k-means only).
    """

    bits: int = 4
    codebook: str = "nf4"
    group_size: int = 64
    kmeans: str = "layer"
    kmeans_iters: int = KMEANS_ITERS

    def __post_init__(self):
        if self.bits != 4:
            raise ValueError(f"CodebookWeightOnlyConfig: bits must be 4 (the kernel's index width), got {self.bits!r}")
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or g % 32:
            raise ValueError(f"CodebookWeightOnlyConfig: group_size must be a positive multiple of 32, got {g!r}")
        if self.codebook not in CODEBOOKS:
            raise ValueError(f"CodebookWeightOnlyConfig: codebook must be one of {CODEBOOKS}, got {self.codebook!r}")
        if self.kmeans not in KMEANS_SCOPES:
            raise ValueError(f"CodebookWeightOnlyConfig: kmeans must be one of {KMEANS_SCOPES}, got {self.kmeans!r}")
        it = self.kmeans_iters
        if isinstance(it, bool) or not isinstance(it, int) or it < 0:
            raise ValueError(f"CodebookWeightOnlyConfig: kmeans_iters must be an int >= 0, got {it!r}")


@register_handler(CodebookWeightOnlyConfig, nn.Linear)
def _codebook_weight_only(module: nn.Linear, config: CodebookWeightOnlyConfig) -> nn.Module:
    return CodebookWeightOnlyLinear.from_float(
        module, config.group_size, config.codebook, config.kmeans, config.kmeans_iters
    )
