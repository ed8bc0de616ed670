"""2:4 semi-structured sparsity: typed wrappers and fake impls.

Schemas and the op table: csrc/ops.cpp; checks: csrc/sparse24.cpp. ``sparse24_compress`` is built from ATen ops for every
device (csrc/sparse24.cpp); ``sparse24_linear`` runs on the CPU by decoding to
the dense weight (csrc/cpu/sparse24.cpp) and on a GPU on the sparse tensor
cores, ``mma.sp`` in CUDA C++ (csrc/cuda/sparse24.cu; Triton has no sparse
MMA). Semantics: :mod:`slimops.reference.sparse`.

The compressed form of a weight ``[N, K]`` (``nn.Linear`` layout) with at most
2 non-zeros in every group of 4 consecutive inputs:

* ``values [N, K/2]``: the 2 kept weights of each group, in input order;
* ``meta uint8 [N, K/8]``: byte ``j`` of row ``n`` holds the 2-bit positions
  (0..3 in their group) of the kept entries of inputs ``8j..8j+7``: 4 entries
  (2 per group, increasing position), entry ``e`` in bits ``2e..2e+1``.
"""

from __future__ import annotations

import torch

from slimops import _build
from slimops.ops._autograd import linear_with_input_grad
from slimops.ops._checks import cpp_checks, linear_shape
from slimops.ops._checks_sparse import sparse24_weight_shape, weight_rows


def sparse24_compress(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress a 2:4 weight for :func:`sparse24_linear`.

    Each group of 4 consecutive inputs of a row keeps its non-zeros, then its
    lowest zero positions, 2 entries in all, in increasing position (as
    :func:`slimops.reference.sparse.sparse24_split`). A group with more than 2
    non-zeros (NaN counts as non-zero) is an error naming the first one. Runs
    on the weight's device; it reads the weight back to check it (a GPU
    synchronizes once), so call it when converting a model, not per step.

    Args:
        weight: float32/float16/bfloat16 ``[N, K]``; K a multiple of 8.

    Returns:
        ``(values [N, K/2] of weight's dtype, meta uint8 [N, K/8])``.
    """
    return torch.ops.slimops.sparse24_compress.default(weight)


def sparse24_to_dense(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense ``[N, K]`` weight (values' dtype) that :func:`sparse24_compress` compressed."""
    from slimops.reference.sparse import sparse24_to_dense as from_positions

    # Entry e of meta byte j is the position (bits 2e..2e+1) of value 4j + e in its group of 4.
    shifts = torch.arange(0, 8, 2, device=meta.device, dtype=torch.uint8)
    positions = ((meta.unsqueeze(-1) >> shifts) & 3).reshape(meta.shape[0], -1)
    return from_positions(values, positions)


def _sparse24_dense_weight(k, values, meta):
    return sparse24_to_dense(values, meta)


def sparse24_linear(
    x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x W^T + bias`` for a weight compressed by :func:`sparse24_compress`.

    fp32 accumulation, bias added in fp32, one rounding to ``x``'s dtype.
    On a GPU it runs on the sparse tensor cores (``mma.sp``, sm_80+):
    float16 and bfloat16 only, float32 is an error there (the CPU takes all
    three). Every M and every K that is a multiple of 8 work; the fast paths
    want K % 64 == 0 (other K run a slower step order, and large M then runs
    the small-M kernel per 32 rows). Differentiable in ``x`` (and ``bias``) only:
    ``dx = dy W`` with the dense weight decoded in backward; values and meta
    get no gradient.

    ``meta`` is trusted on a GPU: positions that are not increasing within a
    group (meta not made by :func:`sparse24_compress`) give unspecified
    results there; the CPU checks them.

    Args:
        x: ``[..., K]`` of values' dtype, any strides.
        values: ``[N, K/2]``.
        meta: uint8 ``[N, K/8]``.
        bias: optional float ``[N]``.

    Returns:
        ``[..., N]`` in ``x``'s dtype.
    """
    return linear_with_input_grad(torch.ops.slimops.sparse24_linear.default, _sparse24_dense_weight, x, (values, meta), bias)


if _build.HAS_C:

    @torch.library.register_fake("slimops::sparse24_compress")
    def _sparse24_compress_fake(weight):
        cpp_checks("sparse24_compress", weight)
        n, k = sparse24_weight_shape(weight)
        return weight.new_empty((n, k // 2)), weight.new_empty((n, k // 8), dtype=torch.uint8)

    @torch.library.register_fake("slimops::sparse24_linear")
    def _sparse24_linear_fake(x, values, meta, bias=None):
        cpp_checks("sparse24_linear", x, values, meta, bias)
        return x.new_empty(linear_shape(x, weight_rows("sparse24_linear", x, values)))

