"""Codebook (NF4 / k-means) 4-bit weight-only linear: typed wrapper and fake impl.

The schema and the op table row live in csrc/ops.cpp; the checks in csrc/codebook4.cpp; the CPU
kernel in csrc/cpu/codebook4.cpp; the Triton launcher in kernels/codebook4.py. The semantics and
the format are those of :mod:`slimops.reference.codebook4`.
"""

from __future__ import annotations

import torch

from slimops import _build
from slimops.ops._autograd import linear_with_input_grad
from slimops.ops._checks import cpp_checks, linear_shape
from slimops.ops._checks_quant_mm import linear_out_features
from slimops.reference.int4 import unpack_int4


def weight_codebook4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    codebook: torch.Tensor,
    scale: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W4A16 with a codebook: ``x @ (codebook[c, q] * scale)^T + bias``, the table looked up in registers.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``, any strides.
        qweight: uint8 ``[N, ceil(K / 32) * 16]``, 4-bit indices in int4's nibble layout
            (:func:`slimops.reference.int4.pack_int4`).
        codebook: float ``[1, 16]`` (one table for the layer) or ``[N, 16]`` (one per output row).
        scale: float ``[N, ceil(K / group_size)]``, one per block of ``group_size`` inputs.
        group_size: a positive multiple of 32.
        bias: optional float ``[N]``.

    Returns:
        ``[..., N]`` in ``x``'s dtype, accumulated in fp32. Differentiable in ``x`` and ``bias``.
    """
    return linear_with_input_grad(
        _op_with_group_size(group_size), _codebook4_dense_weight(group_size), x, (qweight, codebook, scale), bias
    )


def _op_with_group_size(group_size: int):
    def op(x, qweight, codebook, scale, bias):
        return torch.ops.slimops.weight_codebook4_linear.default(x, qweight, codebook, scale, group_size, bias)

    return op


def _codebook4_dense_weight(group_size: int):
    def dense(k: int, qweight: torch.Tensor, codebook: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # [N, K] float32 from the packed indices (traceable ATen ops: it runs in compiled backward too)
        q = unpack_int4(qweight, k).long()
        table = codebook.float().expand(qweight.shape[0], 16)
        group = torch.arange(k, device=qweight.device) // group_size
        return torch.gather(table, 1, q) * scale.float()[:, group]

    return dense


if _build.HAS_C:

    @torch.library.register_fake("slimops::weight_codebook4_linear")
    def _weight_codebook4_linear_fake(x, qweight, codebook, scale, group_size, bias=None):
        cpp_checks("weight_codebook4_linear", x, qweight, codebook, scale, group_size, bias)
        return x.new_empty(linear_shape(x, linear_out_features("weight_codebook4_linear", x, qweight)))
