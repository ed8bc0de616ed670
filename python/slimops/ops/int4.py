"""int4 weight-only linear: typed wrapper and fake impl.

The schema and the op table row live in csrc/ops.cpp; the checks in csrc/int4.cpp; the CPU
kernel in csrc/cpu/int4.cpp; the Triton launcher in kernels/int4.py. The semantics and the
packed format are those of :mod:`slimops.reference.int4`.
"""

from __future__ import annotations

import torch

from slimops import _build
from slimops.ops._autograd import linear_with_input_grad
from slimops.ops._checks import cpp_checks, linear_shape
from slimops.ops._checks_quant_mm import linear_out_features


def weight_int4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W4A16: ``x @ ((q - zero_point) * scale)^T + bias``, the int4 weight unpacked in registers.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``, any strides.
        qweight: uint8 ``[N, ceil(K / 32) * 16]``, two int4 per byte in chunks of 32 inputs
            (:func:`slimops.reference.int4.pack_int4`).
        scale: float ``[N, ceil(K / group_size)]``, one per group of ``group_size`` inputs.
        zero_point: float like ``scale`` (asymmetric), or None (symmetric: ``q - 8``).
        group_size: a positive multiple of 32.
        bias: optional float ``[N]``.

    Returns:
        ``[..., N]`` in ``x``'s dtype, accumulated in fp32. Differentiable in ``x`` and ``bias``.
    """
    return linear_with_input_grad(
        _op_with_group_size(group_size), _int4_dense_weight(group_size), x, (qweight, scale, zero_point), bias
    )


def _op_with_group_size(group_size: int):
    def op(x, qweight, scale, zero_point, bias):
        return torch.ops.slimops.weight_int4_linear.default(x, qweight, scale, zero_point, group_size, bias)

    return op


def _int4_dense_weight(group_size: int):
    def dense(k: int, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None) -> torch.Tensor:
        # [N, K] float32 from the packed nibbles (traceable ATen ops: it runs in compiled backward too)
        n = qweight.shape[0]
        b = qweight.reshape(n, -1, 16)
        q = torch.stack((b & 0x0F, b >> 4), dim=2).reshape(n, -1)[:, :k].float()
        group = torch.arange(k, device=qweight.device) // group_size
        z = 8.0 if zero_point is None else zero_point.float()[:, group]
        return (q - z) * scale.float()[:, group]

    return dense


if _build.HAS_C:

    @torch.library.register_fake("slimops::weight_int4_linear")
    def _weight_int4_linear_fake(x, qweight, scale, zero_point, group_size, bias=None):
        cpp_checks("weight_int4_linear", x, qweight, scale, zero_point, group_size, bias)
        return x.new_empty(linear_shape(x, linear_out_features("weight_int4_linear", x, qweight)))
