"""Quantized matmul: typed wrappers, fake impls and the GPU registrations.

The schemas live in csrc/ops.cpp; the CPU kernels in csrc/cpu/quant_mm.cpp; the
dynamic linears are composed in C++ on every device (csrc/quant_linear.cpp).
On a GPU, ``int8_mm`` and ``quantize_fp8_per_row`` run Triton;
``weight_int8_linear`` runs a CUDA C++ decode kernel below the rule's M and
Triton above it. The semantics are those of :mod:`slimops.reference.quant_mm`.

Weights use the ``nn.Linear`` layout ``[N, K]`` throughout: ``y = x W^T``.
The three linears are differentiable in ``x`` (and ``bias``) only, so layers
before a converted one still train: ``dx = dy W`` with ``W`` the dequantized
weight, built in backward (:func:`linear_with_input_grad`). The dynamic
ones pass the gradient straight through their activation rounding.
Scales are not checked for finiteness per call (that would synchronize the
GPU and break CUDA graphs); the modules check weight scales once, when they
are built or loaded, and a non-finite activation row propagates as NaN.
"""

from __future__ import annotations

import torch

from slimops import _build
from slimops.ops._checks_quant_mm import (
    validate_int8_mm,
    validate_quantize_fp8_per_row,
    validate_weight_int8_linear,
)
from slimops.ops._triton import register_triton, triton_usable


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


class _LinearInputGrad(torch.autograd.Function):
    """An inference linear ``op(x, *weight_parts, bias)`` with a gradient for ``x`` and ``bias``.

    ``dx = dy @ W`` with ``W = dense_weight(K, *weight_parts)``, the dense float ``[N, K]``
    weight the op multiplies by, built in backward only (forward saves the compact
    parts, never a dense copy); the matmul runs in ``x``'s dtype. The weight parts are
    module buffers and get no gradient.
    """

    @staticmethod
    def forward(x, bias, op, dense_weight, *parts):
        return op(x, *parts, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, bias, _, dense_weight, *parts = inputs
        ctx.save_for_backward(*parts)
        ctx.dense_weight = dense_weight
        ctx.x_dtype, ctx.k = x.dtype, x.shape[-1]
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx, grad):
        parts = ctx.saved_tensors
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            # [..., N] @ [N, K] -> [..., K]
            grad_x = grad.to(ctx.x_dtype) @ ctx.dense_weight(ctx.k, *parts).to(ctx.x_dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return (grad_x, grad_b, None, None, *(None for _ in parts))


def linear_with_input_grad(op, dense_weight, x: torch.Tensor, parts: tuple, bias: torch.Tensor | None):
    """``op(x, *parts, bias)``, differentiable in ``x`` and ``bias`` when they need a gradient.

    NOTE: the autograd wrapper is applied here, in the typed wrapper, and only when a
    gradient is needed: an autograd kernel registered on the op itself runs Python on
    every call in grad or ``no_grad`` mode (measured +20-30 us a call on the 2-core CPU),
    which the inference path must not pay. Calls to ``torch.ops.slimops.*`` directly get
    no gradient.

    Args:
        op: the op overload, schema ``(Tensor x, Tensor... parts, Tensor? bias)``.
        dense_weight: ``(K, *parts) -> [N, K]`` float, made of traceable ATen ops (it runs in
            ``torch.compile``'s backward too).
    """
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        return _LinearInputGrad.apply(x, bias, op, dense_weight, *parts)
    return op(x, *parts, bias)


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


def _linear_fake(x, n):
    return x.new_empty((*x.shape[:-1], n))


if _build.HAS_C:

    @torch.library.register_fake("slimops::int8_mm")
    def _int8_mm_fake(a, b, a_scale, b_scale, bias=None, out_dtype=torch.float32):
        g = validate_int8_mm(a, b, a_scale, b_scale, bias, out_dtype)
        return a.new_empty((g.m, g.n), dtype=out_dtype)

    @torch.library.register_fake("slimops::weight_int8_linear")
    def _weight_int8_linear_fake(x, weight, scale, bias=None):
        g = validate_weight_int8_linear(x, weight, scale, bias)
        return _linear_fake(x, g.n)

    @torch.library.register_fake("slimops::quantize_fp8_per_row")
    def _quantize_fp8_per_row_fake(x):
        validate_quantize_fp8_per_row(x)
        return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)

    # The composites (csrc/quant_linear.cpp) validate fully in C++ on real tensors;
    # under tracing these fakes run instead and check what decides the output shape.
    def _check_linear(op, x, weight, weight_scale, bias, weight_dtype):
        torch._check(x.dtype in (torch.float32, torch.float16, torch.bfloat16),
                     lambda: f"slimops.{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
        torch._check(weight.dtype == weight_dtype and weight.dim() == 2,
                     lambda: f"slimops.{op}: weight must be a 2-D {weight_dtype} [N, K], got {weight.dtype} "
                     f"of shape {tuple(weight.shape)}")
        torch._check(weight.shape[1] == x.shape[-1],
                     lambda: f"slimops.{op}: weight has in_features {weight.shape[1]} but x has K = {x.shape[-1]} "
                     "(mismatched K): weight must be [N, K] as in nn.Linear")
        torch._check(weight_scale.dtype == torch.float32 and weight_scale.numel() == weight.shape[0],
                     lambda: f"slimops.{op}: weight_scale must be float32 with one scale per output row")
        return weight.shape[0]

    @torch.library.register_fake("slimops::int8_dynamic_linear")
    def _int8_dynamic_linear_fake(x, weight, weight_scale, bias=None):
        return _linear_fake(x, _check_linear("int8_dynamic_linear", x, weight, weight_scale, bias, torch.int8))

    @torch.library.register_fake("slimops::fp8_dynamic_linear")
    def _fp8_dynamic_linear_fake(x, weight, weight_scale, bias=None):
        n = _check_linear("fp8_dynamic_linear", x, weight, weight_scale, bias, torch.float8_e4m3fn)
        return _linear_fake(x, n)

    if triton_usable():
        from slimops.kernels import fp8 as _fp8
        from slimops.kernels import int8_mm as _int8_mm
        from slimops.kernels import weight_int8 as _weight_int8

        register_triton(
            {"int8_mm": _int8_mm.int8_mm, "quantize_fp8_per_row": _fp8.quantize_fp8_per_row}, cuda_cpp=False
        )
        register_triton({"weight_int8_linear": _weight_int8.weight_int8_linear})
