"""Reference of ``block_sparse_int8_linear``: block-sparse tiles stored as int8, one scale per output row.

The format is :func:`slimops.reference.sparse.block_sparse_pack`'s BSR (``values [nnz, BN, BK]``,
``row_ptr int32 [N / BN + 1]``, ``col_idx int32 [nnz]``) with int8 values and an fp32 ``scale [N]``:
the weight is ``W[n, k] = values[...] * scale[n]`` on the stored tiles and 0 elsewhere.

Why one scale per output row rather than per tile: the scale then multiplies each finished dot
product once (no multiply per tile in the kernels' inner loops, 4 bytes per row instead of
``4 * BN`` per tile), and the quantized weights are exactly those of dense per-channel int8
(:class:`slimops.nn.Int8WeightOnlyLinear`) on the same pruned weight, so fusing changes speed only.
"""

from __future__ import annotations

import torch

from slimops.reference.sparse import block_sparse_to_dense


def block_sparse_int8_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x (Q * scale[:, None])^T + b`` in float64 (Q the dense int8 weight), rounded once to ``x.dtype``."""
    w = block_sparse_to_dense(values, row_ptr, col_idx, x.shape[-1]).double() * scale.double()[:, None]
    out = x.double() @ w.t()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)
