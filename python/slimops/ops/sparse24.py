"""2:4 semi-structured sparsity: typed wrappers and fake impls.

Schemas: csrc/ops.cpp. ``sparse24_compress`` is built from ATen ops for every
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

The validators below mirror csrc/sparse24.cpp message for message.
"""

from __future__ import annotations

import math

import torch

from slimops import _build
from slimops.ops._checks import _check, _fail, check_dtype, check_float_input, check_same_device
from slimops.ops._checks_quant_mm import MatmulGeometry
from slimops.ops.quant_mm import linear_with_input_grad


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


def validate_sparse24_compress(weight: torch.Tensor) -> None:
    op = "sparse24_compress"
    check_float_input(weight, op, "weight")
    _check(
        weight.dim() == 2,
        lambda: _fail(op, f"weight must be 2-D [out_features, in_features], got shape {list(weight.shape)}"),
    )
    _check(
        weight.shape[1] % 8 == 0,
        lambda: _fail(
            op, f"weight has in_features K = {weight.shape[1]}, which must be a multiple of 8 "
            "(each meta byte covers 8 inputs: 2 groups of 4)"
        ),
    )


def validate_sparse24_linear(x, values, meta, bias) -> MatmulGeometry:
    op = "sparse24_linear"
    check_float_input(x, op, "x")
    _check(x.dim() >= 1, lambda: _fail(op, "x must have at least 1 dimension [..., K], got a 0-d tensor"))
    k = x.shape[-1]
    _check(
        values.layout == torch.strided,
        lambda: _fail(op, f"values must be a dense (strided) tensor, got layout {values.layout}"),
    )
    _check(values.dim() == 2, lambda: _fail(op, f"values must be 2-D [N, K/2], got shape {list(values.shape)}"))
    _check(values.dtype == x.dtype, lambda: _fail(op, f"values must have x's dtype {x.dtype}, got {values.dtype}"))
    _check(
        k % 8 == 0,
        lambda: _fail(
            op, f"x has K = {k}, which must be a multiple of 8 (each meta byte covers 8 inputs: 2 groups of 4)"
        ),
    )
    _check(
        values.shape[1] * 2 == k,
        lambda: _fail(
            op, f"values has {values.shape[1]} columns but x has K = {k} (mismatched K): "
            f"values must be [N, K/2] = [N, {k // 2}]"
        ),
    )
    n = values.shape[0]
    check_dtype(meta, torch.uint8, op, "meta")
    _check(
        meta.dim() == 2 and meta.shape[0] == n and meta.shape[1] == k // 8,
        lambda: _fail(op, f"meta must have shape [N, K/8] = [{n}, {k // 8}], got {list(meta.shape)}"),
    )
    check_same_device(x, values, op, "x", "values")
    check_same_device(x, meta, op, "x", "meta")
    if bias is not None:
        check_float_input(bias, op, "bias")
        _check(
            bias.dim() == 1 and bias.shape[0] == n,
            lambda: _fail(op, f"bias must have shape [{n}] (out_features), got {list(bias.shape)}"),
        )
        check_same_device(x, bias, op, "x", "bias")
    return MatmulGeometry(math.prod(x.shape[:-1]), n, k)


if _build.HAS_C:

    @torch.library.register_fake("slimops::sparse24_compress")
    def _sparse24_compress_fake(weight):
        validate_sparse24_compress(weight)
        n, k = weight.shape
        return weight.new_empty((n, k // 2)), weight.new_empty((n, k // 8), dtype=torch.uint8)

    @torch.library.register_fake("slimops::sparse24_linear")
    def _sparse24_linear_fake(x, values, meta, bias=None):
        g = validate_sparse24_linear(x, values, meta, bias)
        return x.new_empty((*x.shape[:-1], g.n))

