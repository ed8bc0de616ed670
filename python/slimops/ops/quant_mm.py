"""Quantized matmul: typed wrappers and fake impls.

The schemas and the op table live in csrc/ops.cpp; the checks in
csrc/quant_mm.cpp; the CPU kernels in csrc/cpu/quant_mm.cpp; the dynamic
linears are composed in C++ on every device (csrc/quant_linear.cpp). On a GPU,
``int8_mm`` and ``quantize_fp8_per_row`` run Triton; ``weight_int8_linear``
runs a CUDA C++ decode kernel below the rule's M and Triton above it. The
semantics are those of :mod:`slimops.reference.quant_mm`.

Weights use the ``nn.Linear`` layout ``[N, K]`` throughout: ``y = x W^T``.
The three linears are differentiable in ``x`` (and ``bias``) only, so layers
before a converted one still train: ``dx = dy W`` with ``W`` the dequantized
weight, built in backward (:func:`slimops.ops._autograd.linear_with_input_grad`). The dynamic
ones pass the gradient straight through their activation rounding.
Scales are not checked for finiteness per call (that would synchronize the
GPU and break CUDA graphs); the modules check weight scales once, when they
are built or loaded, and a non-finite activation row propagates as NaN.
"""

from __future__ import annotations

import torch

from slimops import _build
from slimops.ops._autograd import linear_with_input_grad
from slimops.ops._checks import cpp_checks, linear_shape
from slimops.ops._checks_quant_mm import int8_mm_geometry, linear_out_features
from slimops.ops._checks_quantize import per_row_shapes


def int8_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """int8 GEMM with exact int32 accumulation and a fused dequantizing epilogue.

    ``out[m, n] = (sum_k a[m, k] * b[n, k]) * a_scale[m] * b_scale[n] + bias[n]``,
    the epilogue in fp32 and rounded once to ``out_dtype``. The int32
    accumulator never leaves the kernel.

    Args:
        a: int8 ``[M, K]``, any strides (activations, e.g. from :func:`quantize_per_token`).
        b: int8 ``[N, K]`` (a weight in ``nn.Linear`` layout).
        a_scale: float32 ``[M]`` or ``[M, 1]``.
        b_scale: float32 ``[N]`` or ``[N, 1]``.
        bias: optional float ``[N]``.
        out_dtype: float32, float16 or bfloat16.

    Every M from 1 up, any K and N: there is no alignment requirement.
    """
    return torch.ops.slimops.int8_mm.default(a, b, a_scale, b_scale, bias, out_dtype)


def int8_dynamic_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """W8A8 linear: ``x`` quantized per token to int8, then :func:`int8_mm`.

    Args:
        x: float ``[..., K]``, any strides.
        weight: int8 ``[N, K]``, symmetric per output channel.
        weight_scale: float32 ``[N]`` or ``[N, 1]``.
        bias: optional float ``[N]``.

    Returns:
        ``[..., N]`` in ``x``'s dtype.
    """
    return linear_with_input_grad(
        torch.ops.slimops.int8_dynamic_linear.default, _scaled_dense_weight, x, (weight, weight_scale), bias
    )


def weight_int8_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """W8A16 linear: ``x @ (weight * scale)^T + bias`` with the weight dequantized in registers.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``, any strides.
        weight: int8 ``[N, K]``.
        scale: float ``[N]`` (per output channel) or ``[N, G]`` (per group of
            ``K / G`` consecutive inputs; G must divide K).
        bias: optional float ``[N]``.

    Returns:
        ``[..., N]`` in ``x``'s dtype, accumulated in fp32.
    """
    return linear_with_input_grad(torch.ops.slimops.weight_int8_linear.default, _int8_dense_weight, x, (weight, scale), bias)


def quantize_fp8_per_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic float8_e4m3fn quantization, one scale per row.

    ``scale = amax(|row|) / 448``; ``q = e4m3(clamp(x / scale, -448, 448))``,
    rounded to nearest even. Zero rows get scale 1; rows holding inf/NaN get
    scale +inf and q = 0.

    Returns:
        ``(q, scale)``: float8_e4m3fn ``[..., K]`` and float32 ``[..., 1]``.
    """
    return torch.ops.slimops.quantize_fp8_per_row.default(x)


def fp8_dynamic_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """fp8 W8A8 linear: ``x`` quantized per row to e4m3, then ``torch._scaled_mm`` with rowwise scales.

    Args:
        x: float ``[..., K]``; K a multiple of 16.
        weight: float8_e4m3fn ``[N, K]``; N a multiple of 16 (cuBLAS fp8 alignment;
            :class:`slimops.nn.Fp8DynamicLinear` pads for you).
        weight_scale: float32 ``[N]`` or ``[N, 1]``.
        bias: optional float ``[N]`` (added in bf16).

    Returns:
        ``[..., N]`` in ``x``'s dtype. The GEMM writes bf16 (the only output
        cuBLAS supports with rowwise scales), converted to ``x``'s dtype.
    """
    return linear_with_input_grad(
        torch.ops.slimops.fp8_dynamic_linear.default, _scaled_dense_weight, x, (weight, weight_scale), bias
    )


def _int8_dense_weight(k: int, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # int8 [N, K] times a [N] / [N, 1] (per channel) or [N, G] (per group of K / G) scale.
    n = weight.shape[0]
    g = scale.numel() // n
    return (weight.float().reshape(n, g, k // g) * scale.float().reshape(n, g, 1)).reshape(n, k)


def _scaled_dense_weight(k: int, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    # int8 or e4m3 [N, K] times a per-row scale [N] / [N, 1]. NOTE: the dynamic linears also
    # round x (per token to int8, per row to e4m3); their backward treats that rounding as
    # identity (straight-through, as in QAT).
    return weight.float() * weight_scale.float().reshape(-1, 1)


if _build.HAS_C:

    @torch.library.register_fake("slimops::int8_mm")
    def _int8_mm_fake(a, b, a_scale, b_scale, bias=None, out_dtype=torch.float32):
        cpp_checks("int8_mm", a, b, a_scale, b_scale, bias, out_dtype)
        g = int8_mm_geometry(a, b)
        return a.new_empty((g.m, g.n), dtype=out_dtype)

    @torch.library.register_fake("slimops::weight_int8_linear")
    def _weight_int8_linear_fake(x, weight, scale, bias=None):
        cpp_checks("weight_int8_linear", x, weight, scale, bias)
        return x.new_empty(linear_shape(x, linear_out_features("weight_int8_linear", x, weight)))

    @torch.library.register_fake("slimops::quantize_fp8_per_row")
    def _quantize_fp8_per_row_fake(x):
        cpp_checks("quantize_fp8_per_row", x)
        q_shape, scale_shape = per_row_shapes(x, "quantize_fp8_per_row")
        return x.new_empty(q_shape, dtype=torch.float8_e4m3fn), x.new_empty(scale_shape, dtype=torch.float32)

    @torch.library.register_fake("slimops::int8_dynamic_linear")
    def _int8_dynamic_linear_fake(x, weight, weight_scale, bias=None):
        cpp_checks("int8_dynamic_linear", x, weight, weight_scale, bias)
        return x.new_empty(linear_shape(x, linear_out_features("int8_dynamic_linear", x, weight)))

    @torch.library.register_fake("slimops::fp8_dynamic_linear")
    def _fp8_dynamic_linear_fake(x, weight, weight_scale, bias=None):
        cpp_checks("fp8_dynamic_linear", x, weight, weight_scale, bias)
        return x.new_empty(linear_shape(x, linear_out_features("fp8_dynamic_linear", x, weight)))
