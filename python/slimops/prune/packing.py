"""Packing: turning a masked weight into the fastest module it allows (2:4, block-sparse, or
dense), with the mask checks that decide it."""

from __future__ import annotations

import torch
from torch import nn

from slimops.nn.sparse import (
    BLOCK_SIZES,
    BlockSparseLinear,
    Sparse24Linear,
    dense_linear,
)


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
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor,
    min_zero_tiles: float = 0.5,
    block_size: int | None = None,
) -> tuple[nn.Module, str]:
    """The fastest module for ``weight ⊙ mask``, and a line saying which and why.

    2:4 (:class:`Sparse24Linear`) when the mask is 2:4; else block-sparse
    (:class:`BlockSparseLinear`, the largest tile of 128/64/32/16 that divides the
    weight and leaves at least ``min_zero_tiles`` of the tiles empty; only
    ``block_size`` when given, e.g. the tile a block pattern pruned, so a coarser
    tile never stores the zeros of finer pruned tiles); else a dense ``nn.Linear``
    holding the zeros.
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
    for b in sorted(BLOCK_SIZES, reverse=True) if block_size is None else [block_size]:
        if n % b or k % b:
            continue
        zero = zero_tile_fraction(mask, b)
        if zero >= min_zero_tiles:
            module = BlockSparseLinear.from_dense(dense, mask, b)
            return module, f"BlockSparseLinear ({b}x{b}, {zero:.0%} zero tiles)"
    return dense, f"Linear (dense: {sparsity:.0%} sparse, no 2:4 or block structure that pays{note})"
