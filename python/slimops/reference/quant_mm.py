"""Pure-PyTorch references for the quantized matmul family.

These are the specification. Integer accumulation is exact (int64 here, int32
in the kernels: |acc| <= 128 * 128 * K fits int32 for K < 2^17 = 131,072, the
largest K ``int8_mm`` takes). The float
epilogues are written in float64, so a kernel's result is compared against
the exact value and held to the roundings the kernel is allowed (its fp32
epilogue, then one rounding to the output dtype).

Layouts follow ``nn.Linear``: weights are ``[N, K]`` (out_features, in_features)
and ``y = x W^T``.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def int8_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(a @ b^T)[m, n] * a_scale[m] * b_scale[n] + bias[n]``, exact, rounded once to ``out_dtype``.

    a: int8 ``[M, K]``; b: int8 ``[N, K]``; a_scale: fp32 ``[M]`` or ``[M, 1]``;
    b_scale: fp32 ``[N]`` or ``[N, 1]``; bias: float ``[N]`` or None.
    """
    acc = a.to(torch.int64) @ b.to(torch.int64).t()  # exact
    out = acc.double() * a_scale.double().reshape(-1, 1) * b_scale.double().reshape(1, -1)
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)


def int8_dynamic_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """W8A8: ``x`` quantized per token (:func:`slimops.reference.quantize_per_token`), then :func:`int8_mm`.

    Returns ``[..., N]`` in ``x.dtype``.
    """
    from slimops.reference.quantize import quantize_per_token

    q, s = quantize_per_token(x)
    k = x.shape[-1]
    out = int8_mm(q.reshape(-1, k), weight, s.reshape(-1, 1), weight_scale, bias, x.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def expand_group_scale(scale: torch.Tensor, k: int) -> torch.Tensor:
    """``[N]`` / ``[N, G]`` scales -> ``[N, K]``: group ``g`` covers columns ``g*K/G .. (g+1)*K/G - 1``."""
    scale = scale.reshape(scale.shape[0], -1)
    return scale.repeat_interleave(k // scale.shape[1], dim=1)


def weight_int8_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """W8A16: ``x @ (weight * scale)^T + bias``, exact in float64, rounded once to ``x.dtype``.

    weight: int8 ``[N, K]``; scale: ``[N]`` / ``[N, 1]`` (per channel) or ``[N, G]``
    (per group of ``K / G`` consecutive inputs), any float dtype.
    """
    k = x.shape[-1]
    w = weight.double() * expand_group_scale(scale, k).double()
    out = x.double() @ w.t()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)


def quantize_fp8_per_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic float8_e4m3fn quantization with one scale per row.

    ``scale = amax(|row|) / 448`` (one fp32 division); ``q = e4m3(clamp(x / scale, -448, 448))``
    with ``x / scale`` one correctly rounded fp32 division and the cast rounding to
    nearest even. Rows of zeros (or with ``amax / 448`` underflowing) get scale 1;
    rows holding inf/NaN get scale +inf and q = 0, as in the int8 quantizers.

    Returns ``(q, scale)``: float8_e4m3fn ``[..., K]`` and fp32 ``[..., 1]``.
    """
    x32 = x.float()
    bad = (~torch.isfinite(x32)).any(dim=-1, keepdim=True)
    scale = x32.abs().amax(dim=-1, keepdim=True) / FP8_MAX
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    scale = torch.where(bad, torch.full_like(scale, float("inf")), scale)
    v = (x32 / scale).clamp(-FP8_MAX, FP8_MAX)
    v = torch.where(bad, torch.zeros_like(v), v)
    return v.to(torch.float8_e4m3fn), scale


def fp8_dynamic_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """fp8 W8A8: ``x`` quantized per row to e4m3 (:func:`quantize_fp8_per_row`), times an e4m3
    weight ``[N, K]`` with per-row fp32 ``weight_scale``, exact in float64, rounded once to ``x.dtype``."""
    q, s = quantize_fp8_per_row(x)
    k = x.shape[-1]
    acc = q.reshape(-1, k).double() @ weight.double().t()
    out = acc * s.reshape(-1, 1).double() * weight_scale.double().reshape(1, -1)
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])
