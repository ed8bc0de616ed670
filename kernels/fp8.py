"""Triton kernel for ``slimops::quantize_fp8_per_row``: dynamic float8_e4m3fn quantization.

The specification, bit for bit, is
:func:`slimops.reference.quant_mm.quantize_fp8_per_row`. Per row of the last
dim, in fp32 and in the reference's order::

    amax  = max_row |x|                      (fp32; exact for fp16/bf16 inputs)
    scale = amax / 448                       (one correctly rounded division)
    scale = 1    if scale == 0               (zero rows, or amax / 448 underflowing)
    scale = +inf if the row holds inf/NaN    (and then q = 0)
    q     = e4m3(clamp(x / scale, -448, 448))    (correctly rounded division, RNE cast)

The output feeds ``torch._scaled_mm`` (fp8_dynamic_linear), so q is stored as
contiguous float8_e4m3fn ``[..., K]`` and scale as fp32 ``[..., 1]``.

Bit-exactness rests on these choices:

* Division is ``tl.math.div_rn`` (``div.rn.f32``); Triton's ``/`` on fp32 is
  the approximate ``div.full.f32``.
* The fp32 -> e4m3 rounding is done here by hand, not by ``.to(tl.float8e4nv)``.
  The hardware cast (``cvt.rn.satfinite.e4m3x2.f32`` on sm_89+) would round
  the same, but the interpreter's software cast that the CPU tests run is wrong
  (it rounds ties away from zero and drops the carry from mantissa into
  exponent: -124.0 becomes -64.0). Rounding by hand gives one code path on both.
  For ``|v| <= 448`` the e4m3 quantum is ``2**(max(e, -6) - 3)`` where
  ``e = floor(log2 |v|)`` (below ``2**-6`` the format is subnormal with quantum
  ``2**-9``). The fp32 sum ``|v| + 1.5 * 2**(s + 23)`` rounds ``|v|`` to a
  multiple of ``2**s`` half to even (the same magic-number trick as the int8
  quantizers, with a per-element quantum), and the rounded value is exactly
  representable in e4m3, so its bits are re-packed with integer operations:
  the fp32 exponent re-biased (127 -> 7) above ``2**-6``, ``r * 512`` below.
  The sign is copied from ``v`` (so ``-0.0`` and negative values that round to
  zero give ``0x80``, as torch's cast does).
* ``tl.max`` may drop NaN, so the amax reduction sees ``|x|`` with NaN mapped to
  +inf; a row is non-finite exactly when that maximum is +inf. Elsewhere
  ``|x / scale| <= 448 * (1 + 2**-23)`` is finite and the clamp keeps it in range.

Layout: one program per row, or several rows per program when rows are short
(about 4096 elements per program). Rows up to 16384 elements are held in
registers (x is read once); longer rows take an amax pass and a quantize pass
(the second read mostly hits L2). Both strides of x reach the kernel, so
sliced or transposed views are read in place.

References: the Triton tutorial ``03-matrix-multiplication.py`` and Liger-Kernel
``ops/rms_norm.py`` for the kernel/launcher layout; the OCP 8-bit floating point
specification (OFP8) for e4m3fn (no infinities, max 448, subnormals 2**-9).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from slimops.kernels._gemm import device_guard
from slimops.kernels.quantize import _abs_nan_as_inf, _div_rn, _num_warps, _row_blocks

_FP8_MAX = 448.0


@triton.jit
def _e4m3_bits_rne(v):
    """float8_e4m3fn bit pattern (int32, 0..255) of fp32 ``v``, rounded to nearest even.

    ``v`` must not be NaN and must satisfy ``|v| <= 448``.
    """
    bits = v.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = tl.abs(v)
    # Quantum exponent s = max(e, -6) - 3, with e the unbiased fp32 exponent of |v|
    # (fp32 subnormals and zero have e = -127, i.e. quantum 2**-9 as well).
    e = ((bits >> 23) & 0xFF) - 127
    s = tl.maximum(e, -6) - 3
    # 1.5 * 2**(s + 23): biased exponent s + 150, top mantissa bit set. |v| < 2**(s + 4),
    # far below 2**(s + 22), so the sum has no fraction bits left and the fp32 add
    # rounds |v| to a multiple of 2**s, half to even.
    magic = (((s + 150) << 23) | 0x400000).to(tl.float32, bitcast=True)
    r = (a + magic) - magic
    rbits = r.to(tl.int32, bitcast=True)
    # Normal e4m3 (r >= 2**-6): exponent re-biased from 127 to 7, top 3 mantissa bits.
    normal = (rbits >> 20) - (120 << 3)
    # Subnormal e4m3: r is a multiple of 2**-9 below 2**-6 (the product is exact).
    sub = (r * 512.0).to(tl.int32)
    mag = tl.where(r >= 0.015625, normal, sub)
    return sign | mag


@triton.jit
def _quantize_fp8(x, scale, bad):
    """e4m3 bits (int32) of clamp(x / scale, -448, 448); 0 in bad rows (scale = inf there)."""
    v = tl.where(bad, 0.0, _div_rn(x, scale))
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    return _e4m3_bits_rne(v)


@triton.jit
def _row_scale(amax):
    bad = amax == float("inf")
    scale = _div_rn(amax, tl.full(amax.shape, 448.0, tl.float32))
    scale = tl.where(scale == 0.0, 1.0, scale)
    return tl.where(bad, float("inf"), scale), bad


@triton.jit
def _quantize_fp8_per_row_kernel(
    x_ptr,  # [n_rows, n_cols], any strides
    q_ptr,  # [n_rows, n_cols] uint8 view of float8_e4m3fn, contiguous
    scale_ptr,  # [n_rows] fp32
    n_rows,
    n_cols,
    stride_x_row,
    stride_x_col,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ONE_PASS: tl.constexpr,
):
    pid = tl.program_id(0)
    # int64 row offsets: rows * stride can pass 2**31 on large activations.
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_rows
    x_rows = x_ptr + rows[:, None] * stride_x_row
    q_rows = q_ptr + rows[:, None] * n_cols
    cols = tl.arange(0, BLOCK_K)

    if ONE_PASS:
        # The whole row sits in registers: read x once.
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        x = tl.load(x_rows + cols[None, :] * stride_x_col, mask=mask, other=0.0).to(tl.float32)
        scale, bad = _row_scale(tl.max(_abs_nan_as_inf(x), axis=1))
        q = _quantize_fp8(x, scale[:, None], bad[:, None])
        tl.store(q_rows + cols[None, :], q.to(tl.uint8), mask=mask)
    else:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k in range(0, n_cols, BLOCK_K):
            mask = row_mask[:, None] & ((k + cols)[None, :] < n_cols)
            x = tl.load(x_rows + (k + cols)[None, :] * stride_x_col, mask=mask, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(_abs_nan_as_inf(x), axis=1))
        scale, bad = _row_scale(amax)
        for k in range(0, n_cols, BLOCK_K):
            mask = row_mask[:, None] & ((k + cols)[None, :] < n_cols)
            x = tl.load(x_rows + (k + cols)[None, :] * stride_x_col, mask=mask, other=0.0).to(tl.float32)
            q = _quantize_fp8(x, scale[:, None], bad[:, None])
            tl.store(q_rows + (k + cols)[None, :], q.to(tl.uint8), mask=mask)

    tl.store(scale_ptr + rows, scale, mask=row_mask)


def quantize_fp8_per_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic float8_e4m3fn quantization with one fp32 scale per row of the last dim.

    Args:
        x: float32/float16/bfloat16 tensor ``[..., K]``; any strides (read in place).

    Returns:
        ``(q, scale)``: float8_e4m3fn ``[..., K]`` (contiguous) and float32 ``[..., 1]``,
        with ``x ~= q * scale``; bit-identical to
        :func:`slimops.reference.quant_mm.quantize_fp8_per_row`.

    NOTE: the arguments are trusted: ``torch.ops.slimops.quantize_fp8_per_row`` checks them (in C++) before calling this.
    """
    n_rows, n_cols = math.prod(x.shape[:-1]), x.shape[-1]
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return q, scale

    x2 = x.reshape(-1, n_cols)  # [n_rows, K]; a view whenever the leading dims allow one

    # Rows in registers up to 16384 elements, else an amax pass and a quantize pass (as int8 per-token).
    block_m, block_k, one_pass = _row_blocks(n_rows, n_cols)
    grid = (triton.cdiv(n_rows, block_m),)
    with device_guard(x):
        _quantize_fp8_per_row_kernel[grid](
            x2,
            q.view(torch.uint8),  # bits are computed by hand (see the module docstring)
            scale,
            n_rows,
            n_cols,
            x2.stride(0),
            x2.stride(1),
            BLOCK_M=block_m,
            BLOCK_K=block_k,
            ONE_PASS=one_pass,
            num_warps=_num_warps(block_m * block_k),
        )
    return q, scale
