"""Pure-PyTorch references for the int8 quantize / dequantize family.

These functions *are* the specification: every backend (C++ CPU, CUDA C++,
Triton) must return bit-identical int8 values and scales that match to the
last bit (the tests allow 1 ulp on scales). They are written for clarity, not
speed, and every arithmetic step is the fp32 operation the kernels perform, in
the same order:

* ``amax`` is taken over ``|x|`` converted to fp32 (exact for fp16/bf16).
* ``scale = amax / 127`` (symmetric) or ``(max(x, 0) - min(x, 0)) / 255``
  (asymmetric), one correctly rounded fp32 division.
* ``q = clamp(rne(x / scale) [+ zero_point], qmin, qmax)``, where ``x / scale``
  is one correctly rounded fp32 division and ``rne`` rounds half to even.
* A reduction group (row or channel) whose scale would be 0 (all zeros, or
  values so small that ``amax / 127`` underflows) gets ``scale = 1`` so that
  ``q = 0`` and dequantization is exact.
* A group holding any inf or NaN gets ``scale = +inf``, ``zero_point = 0`` and
  ``q = 0``, so that :func:`dequantize` turns the whole group into NaN instead
  of silently producing finite garbage.

Scales and zero points keep the rank of the input (``keepdim`` layout): they
broadcast against ``q`` directly.
"""

from __future__ import annotations

import torch

QMIN_SYMMETRIC = -127
QMAX = 127
QMIN_ASYMMETRIC = -128


def _nonfinite_groups(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    return (~torch.isfinite(x)).amax(dim=dims, keepdim=True) if dims else ~torch.isfinite(x)


def _finish(x32, scale, zero_point, bad, qmin):
    """Shared tail: guard the scale, round, saturate, mark non-finite groups."""
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    scale = torch.where(bad, torch.full_like(scale, float("inf")), scale)
    zero_point = torch.where(bad, torch.zeros_like(zero_point), zero_point)
    q = torch.round(x32 / scale)  # torch.round rounds half to even
    q = torch.where(torch.isfinite(q), q, torch.zeros_like(q))
    q = (q + zero_point).clamp(qmin, QMAX)
    return q.to(torch.int8), scale, zero_point


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8, one scale per row of the last dimension.

    Returns ``(q, scale)``: ``q`` is int8 with ``x``'s shape, ``scale`` is fp32
    with shape ``x.shape[:-1] + (1,)``.
    """
    x32 = x.float()
    amax = x32.abs().amax(dim=-1, keepdim=True)
    bad = _nonfinite_groups(x32, [-1])
    scale = amax / 127.0
    zero = torch.zeros_like(scale, dtype=torch.int32)
    q, scale, _ = _finish(x32, scale, zero, bad, QMIN_SYMMETRIC)
    return q, scale


def _reduce_dims(x: torch.Tensor, axis: int) -> list[int]:
    axis = axis % x.dim()
    return [d for d in range(x.dim()) if d != axis]


def quantize_per_channel(
    x: torch.Tensor, axis: int, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 with one scale (and zero point) per slice along ``axis``.

    Symmetric: ``q`` in [-127, 127], ``zero_point = 0``.
    Asymmetric: the range ``[min(x, 0), max(x, 0)]`` maps onto [-128, 127];
    ``zero_point = clamp(-128 - rne(min(x, 0) / scale), -128, 127)`` so that 0.0
    is exactly representable.

    Returns ``(q, scale, zero_point)``; ``scale`` (fp32) and ``zero_point``
    (int32) have shape 1 everywhere except ``axis``.
    """
    dims = _reduce_dims(x, axis)
    x32 = x.float()
    bad = _nonfinite_groups(x32, dims)
    if symmetric:
        scale = x32.abs().amax(dim=dims, keepdim=True) / 127.0 if dims else x32.abs() / 127.0
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return _finish(x32, scale, zero_point, bad, QMIN_SYMMETRIC)
    lo = (x32.amin(dim=dims, keepdim=True) if dims else x32).clamp(max=0.0)
    hi = (x32.amax(dim=dims, keepdim=True) if dims else x32).clamp(min=0.0)
    scale = (hi - lo) / 255.0
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = torch.round(lo / safe)
    zp = torch.where(torch.isfinite(zp), zp, torch.zeros_like(zp))
    zero_point = (QMIN_ASYMMETRIC - zp).clamp(QMIN_ASYMMETRIC, QMAX).to(torch.int32)
    return _finish(x32, scale, zero_point, bad, QMIN_ASYMMETRIC)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``((q - zero_point) * scale)`` in fp32, then rounded once to ``out_dtype``."""
    v = q.to(torch.int32)
    if zero_point is not None:
        v = v - zero_point
    return (v.float() * scale).to(out_dtype)
