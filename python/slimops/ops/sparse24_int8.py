"""2:4 sparsity + int8 weight-only in one kernel: typed wrapper and fake impl.

The schema and the op table row live in csrc/ops.cpp; the checks in csrc/sparse24.cpp
(``validate_sparse24_int8_linear``, which shares ``sparse24_linear``'s meta and shape checks);
the CPU kernel in csrc/cpu/sparse24_int8.cpp. Semantics: :mod:`slimops.reference.sparse24_int8`.
"""

from __future__ import annotations

import torch

from slimops import _build
from slimops.ops._autograd import linear_with_input_grad
from slimops.ops._checks import cpp_checks, linear_shape
from slimops.ops._checks_sparse import weight_rows


def sparse24_int8_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x W^T + bias`` for a 2:4 weight stored as int8 kept values with one scale per output row.

    ``W[n]`` is ``values[n] * scale[n]`` put back at the positions ``meta`` gives (the layout of
    :func:`slimops.ops.sparse24_compress`): 0.5 byte of value and 0.125 byte of metadata per
    weight. fp32 accumulation, the scale applied once per output, bias added in fp32, one
    rounding to ``x``'s dtype. Differentiable in ``x`` (and ``bias``) only.

    Metadata whose 2 positions in a group are not increasing is an error on the CPU (it is
    checked as it is read).

    Args:
        x: float32/float16/bfloat16 ``[..., K]``, any strides; K a multiple of 8.
        values: int8 ``[N, K/2]``.
        meta: uint8 ``[N, K/8]``.
        scale: float32 ``[N]``.
        bias: optional float ``[N]``.

    Returns:
        ``[..., N]`` in ``x``'s dtype.
    """
    return linear_with_input_grad(
        torch.ops.slimops.sparse24_int8_linear.default, sparse24_int8_dense_weight, x, (values, meta, scale), bias
    )


def sparse24_int8_dense_weight(k: int, values: torch.Tensor, meta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The dense float32 ``[N, K]`` weight (traceable ATen ops: it runs in compiled backward too)."""
    from slimops.ops.sparse24 import sparse24_to_dense

    return sparse24_to_dense(values.float() * scale.float()[:, None], meta)


if _build.HAS_C:

    @torch.library.register_fake("slimops::sparse24_int8_linear")
    def _sparse24_int8_linear_fake(x, values, meta, scale, bias=None):
        cpp_checks("sparse24_int8_linear", x, values, meta, scale, bias)
        return x.new_empty(linear_shape(x, weight_rows("sparse24_int8_linear", x, values)))
