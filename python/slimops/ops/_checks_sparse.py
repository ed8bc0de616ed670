"""Argument validation of the masked and block-sparse linears, for the fakes and the Triton launchers.

Mirrors csrc/sparse.cpp message for message.
"""

from __future__ import annotations

import math

import torch

from slimops.ops._checks import _check, _fail, check_dtype, check_float_input, check_same_device
from slimops.ops._checks_quant_mm import MatmulGeometry

BLOCK_SIZES = (16, 32, 64, 128)


def _check_bias(bias, n, like, op):
    if bias is None:
        return
    check_float_input(bias, op, "bias")
    _check(bias.dim() == 1 and bias.shape[0] == n,
           lambda: _fail(op, f"bias must have shape [{n}] (out_features), got {tuple(bias.shape)}"))
    check_same_device(like, bias, op, "x", "bias")


def _check_mask(mask, weight_shape, like, op):
    check_dtype(mask, torch.bool, op, "mask")
    _check(tuple(mask.shape) == tuple(weight_shape),
           lambda: _fail(op, f"mask must have the weight's shape {list(weight_shape)}, got {list(mask.shape)}"))
    check_same_device(like, mask, op, "x" if like is not mask else "mask", "mask")


def validate_masked_linear(x, weight, mask, bias) -> MatmulGeometry:
    op = "masked_linear"
    check_float_input(x, op, "x")
    _check(x.dim() >= 1, lambda: _fail(op, "x must have at least 1 dimension [..., K], got a 0-d tensor"))
    k = x.shape[-1]
    _check(weight.dim() == 2, lambda: _fail(op, f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}"))
    _check(weight.dtype == x.dtype, lambda: _fail(op, f"weight must have x's dtype {x.dtype}, got {weight.dtype}"))
    _check(weight.shape[1] == k,
           lambda: _fail(op, f"weight has in_features {weight.shape[1]} but x has K = {k} (mismatched K)"))
    check_same_device(x, weight, op, "x", "weight")
    _check_mask(mask, weight.shape, x, op)
    _check_bias(bias, weight.shape[0], x, op)
    return MatmulGeometry(math.prod(x.shape[:-1]), weight.shape[0], k)


def validate_masked_linear_grad_input(grad, weight, mask) -> MatmulGeometry:
    op = "masked_linear_grad_input"
    check_float_input(grad, op, "grad")
    _check(grad.dim() >= 1, lambda: _fail(op, "grad must have at least 1 dimension [..., N], got a 0-d tensor"))
    _check(weight.dim() == 2, lambda: _fail(op, f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}"))
    _check(weight.dtype == grad.dtype,
           lambda: _fail(op, f"weight must have grad's dtype {grad.dtype}, got {weight.dtype}"))
    _check(weight.shape[0] == grad.shape[-1],
           lambda: _fail(op, f"weight has out_features {weight.shape[0]} but grad has N = {grad.shape[-1]}"))
    check_same_device(grad, weight, op, "grad", "weight")
    check_dtype(mask, torch.bool, op, "mask")
    _check(tuple(mask.shape) == tuple(weight.shape),
           lambda: _fail(op, f"mask must have the weight's shape {list(weight.shape)}, got {list(mask.shape)}"))
    check_same_device(grad, mask, op, "grad", "mask")
    return MatmulGeometry(math.prod(grad.shape[:-1]), weight.shape[0], weight.shape[1])


def validate_masked_linear_grad_weight(grad, x, mask) -> MatmulGeometry:
    op = "masked_linear_grad_weight"
    check_float_input(grad, op, "grad")
    check_float_input(x, op, "x")
    _check(grad.dim() >= 1 and x.dim() >= 1,
           lambda: _fail(op, "grad and x must have at least 1 dimension, got a 0-d tensor"))
    _check(tuple(grad.shape[:-1]) == tuple(x.shape[:-1]),
           lambda: _fail(op, f"grad {tuple(grad.shape)} and x {tuple(x.shape)} must share their leading dims"))
    n, k = grad.shape[-1], x.shape[-1]
    check_same_device(grad, x, op, "grad", "x")
    check_dtype(mask, torch.bool, op, "mask")
    _check(tuple(mask.shape) == (n, k),
           lambda: _fail(op, f"mask must have shape ({n}, {k}) (grad's N, x's K), got {list(mask.shape)}"))
    check_same_device(grad, mask, op, "grad", "mask")
    return MatmulGeometry(math.prod(x.shape[:-1]), n, k)


def validate_block_sizes(weight_shape, block_n, block_k, op="block_sparse_pack") -> None:
    for name, b in (("block_n", block_n), ("block_k", block_k)):
        _check(b in BLOCK_SIZES, lambda: _fail(op, f"{name} must be one of {BLOCK_SIZES}, got {b}"))
    n, k = weight_shape
    _check(n % block_n == 0 and k % block_k == 0,
           lambda: _fail(op, f"block {block_n}x{block_k} must divide the weight's shape {[n, k]} "
                         "(pad the layer's features to a multiple of the block first)"))


def validate_block_sparse_pack(weight, mask, block_n, block_k) -> None:
    op = "block_sparse_pack"
    check_float_input(weight, op, "weight")
    _check(weight.dim() == 2, lambda: _fail(op, f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}"))
    if mask is not None:
        _check_mask(mask, weight.shape, weight, op)
    validate_block_sizes(tuple(weight.shape), block_n, block_k, op)


def validate_block_sparse_linear(x, values, row_ptr, col_idx, bias) -> MatmulGeometry:
    op = "block_sparse_linear"
    check_float_input(x, op, "x")
    _check(x.dim() >= 1, lambda: _fail(op, "x must have at least 1 dimension [..., K], got a 0-d tensor"))
    _check(values.dim() == 3, lambda: _fail(op, f"values must be [nnz, block_n, block_k], got {tuple(values.shape)}"))
    _check(values.dtype == x.dtype, lambda: _fail(op, f"values must have x's dtype {x.dtype}, got {values.dtype}"))
    block_n, block_k = values.shape[1], values.shape[2]
    for name, b in (("block_n", block_n), ("block_k", block_k)):
        _check(b in BLOCK_SIZES, lambda: _fail(op, f"values' {name} must be one of {BLOCK_SIZES}, got {b}"))
    check_dtype(row_ptr, torch.int32, op, "row_ptr")
    check_dtype(col_idx, torch.int32, op, "col_idx")
    _check(row_ptr.dim() == 1 and row_ptr.shape[0] >= 1,
           lambda: _fail(op, f"row_ptr must be 1-D [N / block_n + 1], got {tuple(row_ptr.shape)}"))
    _check(col_idx.dim() == 1 and col_idx.shape[0] == values.shape[0],
           lambda: _fail(op, f"col_idx must be [nnz] = [{values.shape[0]}], got {tuple(col_idx.shape)}"))
    k = x.shape[-1]
    _check(k % block_k == 0, lambda: _fail(op, f"x's K = {k} must be a multiple of block_k = {block_k}"))
    for name, t in (("values", values), ("row_ptr", row_ptr), ("col_idx", col_idx)):
        check_same_device(x, t, op, "x", name)
    n = (row_ptr.shape[0] - 1) * block_n
    _check_bias(bias, n, x, op)
    return MatmulGeometry(math.prod(x.shape[:-1]), n, k)
