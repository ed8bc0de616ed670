"""Masked and block-sparse linears: typed wrappers, fakes and autograd.

Schemas and the op table: csrc/ops.cpp; checks: csrc/sparse.cpp. CPU kernels:
csrc/cpu/sparse.cpp; ``block_sparse_pack``
is built from ATen ops for every device (csrc/sparse.cpp). GPU: Triton
(kernels/masked_linear.py, kernels/block_sparse.py). Semantics:
:mod:`slimops.reference.sparse`.
"""

from __future__ import annotations

import torch

from slimops import _build
from slimops.ops._autograd import linear_with_input_grad
from slimops.ops._checks import cpp_checks, linear_shape
from slimops.ops._checks_sparse import block_sparse_rows, grad_weight_shape, weight_rows


def masked_linear(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x (W ⊙ M)^T + b``, differentiable, for fine-tuning a pruned layer.

    The gradient of ``weight`` is masked (``(grad^T x) ⊙ M``), so pruned weights
    stay exactly zero through any optimizer step; ``x``'s gradient uses ``W ⊙ M``.
    On a GPU the mask is applied to weight tiles in registers: ``W ⊙ M`` never
    exists in memory.

    Args:
        x: float ``[..., K]``.
        weight: ``[N, K]`` of x's dtype.
        mask: bool ``[N, K]``, True where the weight is kept.
        bias: optional float ``[N]``.
    """
    return torch.ops.slimops.masked_linear.default(x, weight, mask, bias)


def masked_linear_grad_input(grad: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Backward of :func:`masked_linear` for ``x``: ``grad (W ⊙ M)``, ``[..., N] -> [..., K]``."""
    return torch.ops.slimops.masked_linear_grad_input.default(grad, weight, mask)


def masked_linear_grad_weight(grad: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Backward of :func:`masked_linear` for the weight: ``(grad^T x) ⊙ M`` over all leading dims, ``[N, K]``."""
    return torch.ops.slimops.masked_linear_grad_weight.default(grad, x, mask)


def block_sparse_pack(
    weight: torch.Tensor, mask: torch.Tensor | None = None, block_n: int = 64, block_k: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack the kept ``block_n x block_k`` tiles of ``weight [N, K]`` (BSR).

    A tile is kept when any of its elements is kept by ``mask`` (or is non-zero
    when there is no mask); kept values are ``weight * mask``. Block sizes are
    16, 32, 64 or 128 and must divide N and K.

    Returns:
        ``(values [nnz, block_n, block_k], row_ptr int32 [N / block_n + 1], col_idx int32 [nnz])``.
    """
    return torch.ops.slimops.block_sparse_pack.default(weight, mask, block_n, block_k)


def block_sparse_to_dense(values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, k: int) -> torch.Tensor:
    """The dense ``[N, K]`` weight (values' dtype) of a packed one: zeros outside the stored tiles.

    Loop-free and without a host sync (it runs in ``torch.compile``'s backward too);
    :func:`slimops.reference.sparse.block_sparse_to_dense` is the tile-by-tile specification.
    """
    # Tile t lies in block row r where row_ptr[r] <= t < row_ptr[r + 1].
    nnz, bn, bk = values.shape
    rows = row_ptr.shape[0] - 1
    t = torch.arange(nnz, device=values.device, dtype=row_ptr.dtype)
    block_row = torch.searchsorted(row_ptr[1:], t, right=True)
    tiles = values.new_zeros((rows, k // bk, bn, bk))
    tiles = tiles.index_put((block_row, col_idx.long()), values)
    return tiles.permute(0, 2, 1, 3).reshape(rows * bn, k)


def _block_sparse_dense_weight(k, values, row_ptr, col_idx):
    return block_sparse_to_dense(values, row_ptr, col_idx, k)


def block_sparse_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x W^T + b`` for a packed weight (see :func:`block_sparse_pack`); skips the tiles not stored.

    ``x`` is ``[..., K]`` of the values' dtype; K must be a multiple of block_k.
    Returns ``[..., N]``. Differentiable in ``x`` (and ``bias``) only: ``dx = dy W``
    with the dense weight built in backward; the packed tensors get no gradient.
    """
    return linear_with_input_grad(
        torch.ops.slimops.block_sparse_linear.default, _block_sparse_dense_weight, x, (values, row_ptr, col_idx), bias
    )


if _build.HAS_C:

    @torch.library.register_fake("slimops::masked_linear")
    def _masked_linear_fake(x, weight, mask, bias=None):
        cpp_checks("masked_linear", x, weight, mask, bias)
        return x.new_empty(linear_shape(x, weight_rows("masked_linear", x, weight)))

    @torch.library.register_fake("slimops::masked_linear_grad_input")
    def _masked_linear_grad_input_fake(grad, weight, mask):
        cpp_checks("masked_linear_grad_input", grad, weight, mask)
        weight_rows("masked_linear_grad_input", grad, weight, "grad")
        return grad.new_empty(linear_shape(grad, weight.shape[1]))

    @torch.library.register_fake("slimops::masked_linear_grad_weight")
    def _masked_linear_grad_weight_fake(grad, x, mask):
        cpp_checks("masked_linear_grad_weight", grad, x, mask)
        return x.new_empty(grad_weight_shape(grad, x))

    @torch.library.register_fake("slimops::block_sparse_pack")
    def _block_sparse_pack_fake(weight, mask, block_n, block_k):
        cpp_checks("block_sparse_pack", weight, mask, block_n, block_k)
        nnz = torch.library.get_ctx().new_dynamic_size()  # how many tiles are kept depends on the data
        rows = weight.shape[0] // block_n
        return (
            weight.new_empty((nnz, block_n, block_k)),
            weight.new_empty((rows + 1,), dtype=torch.int32),
            weight.new_empty((nnz,), dtype=torch.int32),
        )

    @torch.library.register_fake("slimops::block_sparse_linear")
    def _block_sparse_linear_fake(x, values, row_ptr, col_idx, bias=None):
        cpp_checks("block_sparse_linear", x, values, row_ptr, col_idx, bias)
        return x.new_empty(linear_shape(x, block_sparse_rows(x, values, row_ptr)))

    def _setup_context(ctx, inputs, output):
        x, weight, mask, bias = inputs
        ctx.save_for_backward(x, weight, mask)
        ctx.bias_dtype = None if bias is None else bias.dtype

    def _backward(ctx, grad):
        x, weight, mask = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.slimops.masked_linear_grad_input.default(grad, weight, mask)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.slimops.masked_linear_grad_weight.default(grad, x, mask)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_w, None, grad_b

    torch.library.register_autograd("slimops::masked_linear", _backward, setup_context=_setup_context)
