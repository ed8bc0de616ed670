"""int8 quantize / dequantize: typed wrappers and fake impls.

The schemas and the op table live in csrc/ops.cpp, the checks in csrc/quantize.cpp
and the CPU kernels in csrc/cpu/quantize.cpp; on a GPU, CUDA C++
(csrc/cuda/quantize.cu) or Triton (kernels/quantize.py) by the rule.
The semantics, bit for bit, are those of :mod:`slimops.reference.quantize`.
"""

from __future__ import annotations

import torch

from slimops import _build
from slimops.ops._checks import cpp_checks
from slimops.ops._checks_quantize import channel_scale_shape, per_row_shapes


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric int8 quantization with one scale per row.

    ``scale = amax(|row|) / 127``, ``q = clamp(round_half_even(x / scale), -127, 127)``.
    Rows of zeros get scale 1; rows holding inf/NaN get scale +inf and q = 0.

    Args:
        x: float32/float16/bfloat16 tensor ``[..., K]``; any strides.

    Returns:
        ``(q, scale)``: int8 ``[..., K]`` (contiguous) and float32 ``[..., 1]``.
    """
    return torch.ops.slimops.quantize_per_token.default(x)


def quantize_per_channel(
    x: torch.Tensor, axis: int, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 quantization with one scale (and zero point) per slice along ``axis``.

    Symmetric: ``q`` in [-127, 127] and ``zero_point = 0``. Asymmetric: the range
    ``[min(x, 0), max(x, 0)]`` maps onto [-128, 127], so 0.0 stays exact.

    Args:
        x: float32/float16/bfloat16 tensor; any strides.
        axis: the channel dimension (negative counts from the end).
        symmetric: symmetric (weights) or asymmetric (activations with an offset).

    Returns:
        ``(q, scale, zero_point)``: int8 like ``x``; float32 and int32 with
        size 1 in every dim except ``axis``.
    """
    return torch.ops.slimops.quantize_per_channel.default(x, axis, symmetric)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(q - zero_point) * scale`` computed in float32 and rounded once to ``out_dtype``.

    Args:
        q: int8 tensor.
        scale: float32 with ``q``'s rank, size 1 or ``q``'s size in each dim, the
            non-1 dims forming one contiguous run (per-tensor, per-token or
            per-channel, as the quantizers return it).
        zero_point: optional int32 shaped like ``scale``.
        out_dtype: float32, float16 or bfloat16.
    """
    return torch.ops.slimops.dequantize.default(q, scale, zero_point, out_dtype)


if _build.HAS_C:

    @torch.library.register_fake("slimops::quantize_per_token")
    def _quantize_per_token_fake(x):
        cpp_checks("quantize_per_token", x)
        q_shape, scale_shape = per_row_shapes(x, "quantize_per_token")
        return x.new_empty(q_shape, dtype=torch.int8), x.new_empty(scale_shape, dtype=torch.float32)

    @torch.library.register_fake("slimops::quantize_per_channel")
    def _quantize_per_channel_fake(x, axis, symmetric=True):
        cpp_checks("quantize_per_channel", x, axis, symmetric)
        shape = channel_scale_shape(x, axis)
        return (
            x.new_empty(x.shape, dtype=torch.int8),
            x.new_empty(shape, dtype=torch.float32),
            x.new_empty(shape, dtype=torch.int32),
        )

    @torch.library.register_fake("slimops::dequantize")
    def _dequantize_fake(q, scale, zero_point, out_dtype):
        cpp_checks("dequantize", q, scale, zero_point, out_dtype)
        return q.new_empty(q.shape, dtype=out_dtype)
