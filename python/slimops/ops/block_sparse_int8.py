"""Block-sparse int8 weight-only linear: typed wrapper and fake impl.

The schema and the op table row live in csrc/ops.cpp; the checks in csrc/sparse.cpp
(``validate_block_sparse_int8_linear``, sharing ``block_sparse_linear``'s BSR checks); the CPU
kernel in csrc/cpu/block_sparse_int8.cpp; the Triton launcher in kernels/block_sparse_int8.py;
the CUDA C++ decode kernel in csrc/cuda/block_sparse_int8.cu. Semantics:
:mod:`slimops.reference.block_sparse_int8`.
"""

from __future__ import annotations

import torch

from slimops import _build
from slimops.ops._autograd import linear_with_input_grad
from slimops.ops._checks import cpp_checks, linear_shape
from slimops.ops._checks_sparse import block_sparse_rows
from slimops.ops.sparse import block_sparse_to_dense

_OP = "block_sparse_int8_linear"


def block_sparse_int8_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x W^T + b`` for a block-sparse weight stored as int8 tiles, ``W[n] = Q[n] * scale[n]``.

    Only the stored tiles are read; each is converted to float in registers.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``, any strides; K a multiple of block_k.
        values: int8 ``[nnz, block_n, block_k]``, the stored tiles in BSR order
            (:func:`slimops.ops.block_sparse_pack`); block sizes 16, 32, 64 or 128.
        row_ptr: int32 ``[N / block_n + 1]``.
        col_idx: int32 ``[nnz]``.
        scale: fp32 ``[N]``, one per output row.
        bias: optional float ``[N]``, added in fp32.

    Returns:
        ``[..., N]`` in ``x``'s dtype, accumulated in fp32. Differentiable in ``x`` and ``bias``.
    """
    return linear_with_input_grad(
        torch.ops.slimops.block_sparse_int8_linear.default,
        block_sparse_int8_dense_weight,
        x,
        (values, row_ptr, col_idx, scale),
        bias,
    )


def block_sparse_int8_dense_weight(
    k: int, values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """The dense fp32 ``[N, K]`` weight (traceable ATen ops: it runs in compiled backward too)."""
    return block_sparse_to_dense(values.float(), row_ptr, col_idx, k) * scale.float()[:, None]


if _build.HAS_C:

    @torch.library.register_fake("slimops::block_sparse_int8_linear")
    def _block_sparse_int8_linear_fake(x, values, row_ptr, col_idx, scale, bias=None):
        cpp_checks(_OP, x, values, row_ptr, col_idx, scale, bias)
        return x.new_empty(linear_shape(x, block_sparse_rows(x, values, row_ptr, _OP)))
