"""Pure-PyTorch reference of the codebook (non-uniform) 4-bit weight-only family.

Format (what the op's tensors hold):

* ``qweight`` uint8 ``[N, ceil(K / 32) * 16]``: 4-bit codebook indices in int4's nibble layout
  (:mod:`slimops.reference.int4`: byte ``16 c + i`` holds input ``32 c + i`` low and ``32 c + 16 + i``
  high), so both formats share the unpack code of every kernel.
* ``codebook`` float ``[C, 16]``: C = 1 (one table for the layer: NF4, or k-means on the whole
  layer) or C = N (one table per output row).
* ``scale`` float ``[N, ceil(K / group_size)]``: the block absmax (NF4 style).

The weight is ``w[n, k] = codebook[c, q[n, k]] * scale[n, k // group_size]`` with ``c = 0`` or ``n``.
The linear is exact here (float64), rounded once to ``x.dtype``.
"""

from __future__ import annotations

import torch

from slimops.reference.int4 import unpack_int4

ENTRIES = 16  # 4-bit indices


def dequantize_codebook4(
    qweight: torch.Tensor, codebook: torch.Tensor, scale: torch.Tensor, group_size: int, k: int
) -> torch.Tensor:
    """float64 ``[N, K]``: ``codebook[c, q] * scale`` per block (``c = 0`` for a ``[1, 16]`` codebook, else the row)."""
    q = unpack_int4(qweight, k).long()
    table = codebook.double().expand(qweight.shape[0], ENTRIES)  # [N, 16]: one table per row either way
    group = torch.arange(k, device=qweight.device) // group_size
    return torch.gather(table, 1, q) * scale.double()[:, group]


def weight_codebook4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    codebook: torch.Tensor,
    scale: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ dequantize_codebook4(...)^T + bias``, exact in float64, rounded once to ``x.dtype``."""
    k = x.shape[-1]
    out = x.double() @ dequantize_codebook4(qweight, codebook, scale, group_size, k).t()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)
