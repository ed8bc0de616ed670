"""Triton launcher of ``slimops::block_sparse_int8_linear``: BSR tiles stored as int8, one fp32 scale per row.

The specification is :func:`slimops.reference.block_sparse_int8.block_sparse_int8_linear`::

    out[m, r*BN + i] = to(x.dtype, scale[r*BN + i] * sum_{t in row r} sum_j x[m, col_idx[t]*BK + j] * values[t, i, j]
                       + bias[r*BN + i])

It runs the kernel of :mod:`slimops.kernels.block_sparse` (one program per block row, stored
tiles only, swap-AB at decode, autotuned per M bucket) with ``HAS_SCALE``: each int8 tile is
loaded as bytes (a quarter of fp32's traffic, half of bf16's) and converted to x's dtype in
registers before the dot (exact: |q| <= 127), and the per-row scale multiplies the fp32
accumulator once, in the epilogue, before the bias. One kernel for both formats, so the tiling,
the clamped indices and the autotune lists stay in one place.
"""

from __future__ import annotations

import torch

from slimops.kernels.block_sparse import launch


def block_sparse_int8_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x (values * scale)^T + bias`` over the stored int8 tiles; ``[..., N]`` in x's dtype.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``, any strides.
        values: int8 ``[nnz, BN, BK]``; row_ptr int32 ``[N / BN + 1]``; col_idx int32 ``[nnz]``.
        scale: fp32 ``[N]``.
        bias: optional float ``[N]``.

    NOTE: the arguments are trusted: ``torch.ops.slimops.block_sparse_int8_linear`` checks them (in C++) first.
    """
    return launch(x, values, row_ptr, col_idx, scale, bias)
