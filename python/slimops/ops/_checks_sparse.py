"""What decides the output shapes of the sparse fakes: masked, block-sparse and 2:4 (see :mod:`slimops.ops._checks`).

The full checks are csrc/sparse.cpp's and csrc/sparse24.cpp's, run by the op (and by the fakes on concrete sizes).
"""

from __future__ import annotations

import torch

from slimops.ops._checks import check, check_2d, check_min_dim


def weight_rows(op: str, x: torch.Tensor, weight: torch.Tensor, x_name: str = "x") -> int:
    """N of a weight ``[N, K]`` applied to x ``[..., K]`` (grad ``[..., N]`` for the input gradient)."""
    check_min_dim(x, op, x_name, "[..., N]" if x_name == "grad" else "[..., K]")
    check_2d(weight, op, "weight", "[N, K]")
    return weight.shape[0]


def grad_weight_shape(grad: torch.Tensor, x: torch.Tensor) -> tuple:
    op = "masked_linear_grad_weight"
    check(grad.dim() >= 1 and x.dim() >= 1, op, "grad and x must have at least 1 dimension, got a 0-d tensor")
    return grad.shape[-1], x.shape[-1]


def block_sparse_rows(
    x: torch.Tensor, values: torch.Tensor, row_ptr: torch.Tensor, op: str = "block_sparse_linear"
) -> int:
    """N = (row_ptr.numel() - 1) * block_n of a packed weight (float or int8 tiles)."""
    check_min_dim(x, op, "x")
    check(values.dim() == 3, op, f"values must be [nnz, block_n, block_k], got {tuple(values.shape)}")
    check(row_ptr.dim() == 1 and row_ptr.shape[0] >= 1, op,
          f"row_ptr must be 1-D [N / block_n + 1], got {tuple(row_ptr.shape)}")  # fmt: skip
    return (row_ptr.shape[0] - 1) * values.shape[1]


def sparse24_weight_shape(weight: torch.Tensor) -> tuple:
    check_2d(weight, "sparse24_compress", "weight", "[out_features, in_features]")
    return tuple(weight.shape)
