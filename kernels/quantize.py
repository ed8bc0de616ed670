"""Triton kernels for int8 quantize / dequantize.

The specification, bit for bit, is :mod:`slimops.reference.quantize`. Every
step below is the fp32 operation the reference performs, in the same order:

* per-token (symmetric, one group per row of the last dim) and symmetric
  per-channel::

      amax  = max_group |x|                         (fp32; exact for fp16/bf16)
      scale = amax / 127                            (one correctly rounded division)
      q     = clamp(rne(x / scale), -127, 127)

* asymmetric per-channel (the range [min(x, 0), max(x, 0)] onto [-128, 127])::

      lo, hi     = min(min_group x, 0), max(max_group x, 0)
      scale      = (hi - lo) / 255
      zero_point = clamp(-128 - rne(lo / scale), -128, 127)
      q          = clamp(rne(x / scale) + zero_point, -128, 127)

* every group: a scale that comes out 0 becomes 1 (so q = 0 and dequantizing
  is exact); a group holding any inf or NaN gets scale = +inf, zero_point = 0
  and q = 0.

* dequantize::

      out = to(out_dtype, float(q - zero_point) * scale)   (fp32, rounded once)

Bit-exactness on GPU rests on three choices:

* Division is ``tl.math.div_rn`` (``div.rn.f32``): Triton's ``/`` on fp32 is
  the approximate ``div.full.f32`` and would move values across rounding ties.
* Round half to even is the magic-number trick: for |v| < 2**22 the fp32 sum
  ``v + 1.5 * 2**23`` rounds v half to even and holds the integer in its low
  mantissa bits, read back with a bitcast. It is applied after clamping v to the
  (integer) output range, which commutes with rounding, so v is always small.
  libdevice ``rint`` would round the same on GPU but has no implementation under
  ``TRITON_INTERPRET=1``.
* ``tl.max`` may drop NaN, so reductions see ``|x|`` with NaN mapped to +inf:
  a group is non-finite exactly when that maximum is +inf. Outside such groups
  ``x / scale`` is always finite, so the reference's "non-finite -> 0" is a
  select on the group's flag.

References: the Triton tutorial ``03-matrix-multiplication.py`` and Liger-Kernel
``ops/rms_norm.py`` for the kernel/launcher layout; PyTorch's
``torch.ao.quantization`` for the symmetric / affine int8 conventions.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from slimops.kernels._gemm import device_guard

# Rows up to this many elements are quantized in one pass with the row held in
# registers (x is read once); longer rows take a reduce pass and a quantize pass.
_MAX_ONE_PASS_K = 16384
# Elements per program that we aim for when a row (or a channel slice) is short.
_TILE = 4096
# Chunk of a long row per loop iteration in the two-pass path.
_TWO_PASS_BLOCK_K = 8192


# ----------------------------------------------------------------------------
# Shared element-wise pieces (inlined into the kernels).
# ----------------------------------------------------------------------------


@triton.jit
def _div_rn(x, y):
    """x / y correctly rounded (div.rn.f32), for fp32 tensors that broadcast together."""
    # NOTE: broadcast by hand: some Triton releases' div_rn does not broadcast its operands.
    x, y = tl.broadcast(x, y)
    return tl.math.div_rn(x, y)


@triton.jit
def _abs_nan_as_inf(x):
    # |x| with NaN -> +inf, so a max-reduction cannot drop a NaN (tl.max may).
    a = tl.abs(x)
    return tl.where(a < float("inf"), a, float("inf"))


@triton.jit
def _rne_clamped_int(v, lo, hi):
    """rne(clamp(v, lo, hi)) as int32, for non-NaN v and integer bounds below 2**22."""
    v = tl.minimum(tl.maximum(v, lo), hi)
    # NOTE: |v| <= 255, so 1.5 * 2**23 + v keeps no fraction bits: the fp32 add rounds
    # half to even and leaves the integer in the low mantissa bits (0x4B400000 is the
    # bit pattern of 1.5 * 2**23). A bitcast and an integer subtract replace cvt.
    return (v + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000


@triton.jit
def _quantize_symmetric(x, scale, bad):
    """clamp(rne(x / scale), -127, 127) as int32; 0 in bad groups (scale = inf there)."""
    # Outside bad groups x / scale is always finite (|x| <= amax), so selecting 0 for
    # bad groups is the reference's "non-finite -> 0" at one select per element.
    v = tl.where(bad, 0.0, _div_rn(x, scale))
    return _rne_clamped_int(v, -127.0, 127.0)


@triton.jit
def _guard_scale(scale, bad):
    scale = tl.where(scale == 0.0, 1.0, scale)
    return tl.where(bad, float("inf"), scale)


# ----------------------------------------------------------------------------
# quantize_per_token
# ----------------------------------------------------------------------------


@triton.jit
def _quantize_per_token_kernel(
    x_ptr,  # [n_rows, n_cols], last dim contiguous
    q_ptr,  # [n_rows, n_cols] int8, contiguous
    scale_ptr,  # [n_rows] fp32
    n_rows,
    n_cols,
    stride_x_row,
    stride_q_row,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ONE_PASS: tl.constexpr,
):
    pid = tl.program_id(0)
    # int64 row offsets: rows * stride can pass 2**31 on large activations.
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_rows
    x_rows = x_ptr + rows[:, None] * stride_x_row
    q_rows = q_ptr + rows[:, None] * stride_q_row
    cols = tl.arange(0, BLOCK_K)

    if ONE_PASS:
        # The whole row sits in registers: read x once.
        mask = row_mask[:, None] & (cols[None, :] < n_cols)
        x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(_abs_nan_as_inf(x), axis=1)
        bad = amax == float("inf")
        scale = _guard_scale(_div_rn(amax, tl.full(amax.shape, 127.0, tl.float32)), bad)
        q = _quantize_symmetric(x, scale[:, None], bad[:, None])
        tl.store(q_rows + cols[None, :], q.to(tl.int8), mask=mask)
    else:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k in range(0, n_cols, BLOCK_K):
            mask = row_mask[:, None] & ((k + cols)[None, :] < n_cols)
            x = tl.load(x_rows + (k + cols)[None, :], mask=mask, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(_abs_nan_as_inf(x), axis=1))
        bad = amax == float("inf")
        scale = _guard_scale(_div_rn(amax, tl.full(amax.shape, 127.0, tl.float32)), bad)
        for k in range(0, n_cols, BLOCK_K):
            mask = row_mask[:, None] & ((k + cols)[None, :] < n_cols)
            x = tl.load(x_rows + (k + cols)[None, :], mask=mask, other=0.0).to(tl.float32)
            q = _quantize_symmetric(x, scale[:, None], bad[:, None])
            tl.store(q_rows + (k + cols)[None, :], q.to(tl.int8), mask=mask)

    tl.store(scale_ptr + rows, scale, mask=row_mask)


# ----------------------------------------------------------------------------
# quantize_per_channel
# ----------------------------------------------------------------------------


@triton.jit
def _quantize_per_channel_kernel(
    x_ptr,  # [n_outer, n_channels, n_inner], contiguous
    q_ptr,  # [n_outer, n_channels, n_inner] int8, contiguous
    scale_ptr,  # [n_channels] fp32
    zp_ptr,  # [n_channels] int32
    n_outer,
    n_channels,
    n_inner,
    stride_outer,  # n_channels * n_inner (may pass 2**31)
    SYMMETRIC: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    pid = tl.program_id(0)
    ch = pid.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    ch_mask = ch < n_channels
    offs_o = tl.arange(0, BLOCK_O).to(tl.int64)
    offs_i = tl.arange(0, BLOCK_I).to(tl.int64)
    ch_base = (ch * n_inner)[None, :, None]

    # Pass 1: reduce each channel over (outer, inner) in [BLOCK_O, BLOCK_C, BLOCK_I] tiles.
    amax = tl.zeros([BLOCK_C], dtype=tl.float32)
    lo = tl.zeros([BLOCK_C], dtype=tl.float32)
    hi = tl.zeros([BLOCK_C], dtype=tl.float32)
    for o0 in range(0, n_outer, BLOCK_O):
        o = o0 + offs_o
        for i0 in range(0, n_inner, BLOCK_I):
            i = i0 + offs_i
            mask = (o < n_outer)[:, None, None] & ch_mask[None, :, None] & (i < n_inner)[None, None, :]
            offs = (o * stride_outer)[:, None, None] + ch_base + i[None, None, :]
            # Masked lanes read 0: neutral for max|x|, and lo/hi are clamped through 0 anyway.
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.max(_abs_nan_as_inf(x), axis=2), axis=0))
            if not SYMMETRIC:
                lo = tl.minimum(lo, tl.min(tl.min(x, axis=2), axis=0))
                hi = tl.maximum(hi, tl.max(tl.max(x, axis=2), axis=0))

    bad = amax == float("inf")
    if SYMMETRIC:
        scale = _guard_scale(_div_rn(amax, tl.full(amax.shape, 127.0, tl.float32)), bad)
        zp = tl.zeros([BLOCK_C], dtype=tl.int32)
    else:
        scale = _div_rn(hi - lo, tl.full(hi.shape, 255.0, tl.float32))
        safe = tl.where(scale == 0.0, 1.0, scale)
        # -128 - rne(lo / safe) clamped to [-128, 127] is -128 - (rne(lo / safe) clamped to
        # [-255, 0]). lo / safe is finite unless the channel is bad, and then zp is 0 anyway.
        w = tl.where(bad, 0.0, _div_rn(lo, safe))
        zp = tl.where(bad, 0, -128 - _rne_clamped_int(w, -255.0, 0.0))
        scale = _guard_scale(safe, bad)
    tl.store(scale_ptr + ch, scale, mask=ch_mask)
    tl.store(zp_ptr + ch, zp, mask=ch_mask)

    # Pass 2: clamp(rne(x / scale) + zp, qmin, 127) = rne(clamp(x / scale, qmin - zp, 127 - zp)) + zp.
    scale3 = scale[None, :, None]
    bad3 = bad[None, :, None]
    zp3 = zp[None, :, None]
    zpf3 = zp3.to(tl.float32)
    for o0 in range(0, n_outer, BLOCK_O):
        o = o0 + offs_o
        for i0 in range(0, n_inner, BLOCK_I):
            i = i0 + offs_i
            mask = (o < n_outer)[:, None, None] & ch_mask[None, :, None] & (i < n_inner)[None, None, :]
            offs = (o * stride_outer)[:, None, None] + ch_base + i[None, None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if SYMMETRIC:
                q = _quantize_symmetric(x, scale3, bad3)
            else:
                v = tl.where(bad3, 0.0, _div_rn(x, scale3))
                q = _rne_clamped_int(v, -128.0 - zpf3, 127.0 - zpf3) + zp3
            tl.store(q_ptr + offs, q.to(tl.int8), mask=mask)


# ----------------------------------------------------------------------------
# dequantize
# ----------------------------------------------------------------------------


@triton.jit
def _dequantize_kernel(
    q_ptr,  # [n_rows, n_inner] int8, contiguous; n_rows = outer * channels
    scale_ptr,  # [n_channels] fp32
    zp_ptr,  # [n_channels] int32 (unused unless HAS_ZP)
    out_ptr,  # [n_rows, n_inner] out_dtype, contiguous
    n_rows,
    n_channels,
    n_inner,
    n_inner_blocks,
    HAS_ZP: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    # One flat grid over [row tiles x inner tiles]: CUDA limits grid dims 1 and 2 to 65535.
    pid = tl.program_id(0)
    pid_r = pid // n_inner_blocks
    pid_i = pid % n_inner_blocks
    rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_i.to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols < n_inner)[None, :]
    offs = rows[:, None] * n_inner + cols[None, :]
    # The channel of a row: rows run over [outer, channels] with channels fastest.
    ch = rows % n_channels

    v = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.int32)
    if HAS_ZP:
        zp = tl.load(zp_ptr + ch, mask=row_mask, other=0)
        v = v - zp[:, None]
    scale = tl.load(scale_ptr + ch, mask=row_mask, other=1.0)
    # One fp32 multiply (nothing to contract into an FMA), then one rounding to out_dtype.
    out = v.to(tl.float32) * scale[:, None]
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------


def _num_warps(block: int) -> int:
    # About 32 elements per thread, between 4 and 16 warps.
    return min(16, max(4, block // 1024))


def _row_blocks(n_rows: int, n_cols: int) -> tuple[int, int, bool]:
    """``(BLOCK_M, BLOCK_K, ONE_PASS)`` of a per-row quantizer: whole rows in registers up to
    ``_MAX_ONE_PASS_K`` elements (several short rows per program), else one row per program
    in ``_TWO_PASS_BLOCK_K`` chunks."""
    if triton.next_power_of_2(n_cols) <= _MAX_ONE_PASS_K:
        block_k = triton.next_power_of_2(n_cols)
        return min(max(1, _TILE // block_k), triton.next_power_of_2(n_rows)), block_k, True
    return 1, _TWO_PASS_BLOCK_K, False


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric int8 quantization with one scale per row of the last dim.

    Args:
        x: float32/float16/bfloat16 tensor ``[..., K]``; any strides (rows of a
            sliced tensor are read in place, other layouts are made contiguous).

    Returns:
        ``(q, scale)``: int8 ``[..., K]`` (contiguous) and float32 ``[..., 1]``.

    NOTE: the arguments are trusted: ``torch.ops.slimops.quantize_per_token`` checks them (in C++) before calling this.
    """
    n_rows, n_cols = math.prod(x.shape[:-1]), x.shape[-1]
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return q, scale

    x2 = x.reshape(-1, n_cols)  # [n_rows, K]; a view whenever the rows allow one
    if x2.stride(1) != 1:
        x2 = x2.contiguous()

    block_m, block_k, one_pass = _row_blocks(n_rows, n_cols)
    grid = (triton.cdiv(n_rows, block_m),)
    with device_guard(x):
        _quantize_per_token_kernel[grid](
            x2,
            q,
            scale,
            n_rows,
            n_cols,
            x2.stride(0),
            n_cols,
            BLOCK_M=block_m,
            BLOCK_K=block_k,
            ONE_PASS=one_pass,
            num_warps=_num_warps(block_m * block_k),
        )
    return q, scale


def quantize_per_channel(
    x: torch.Tensor, axis: int, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 quantization with one scale (and zero point) per slice along ``axis``.

    Args:
        x: float32/float16/bfloat16 tensor; any strides (read contiguous).
        axis: the channel dimension (negative counts from the end).
        symmetric: q in [-127, 127] with zero_point 0, or the asymmetric
            [min(x, 0), max(x, 0)] -> [-128, 127] mapping.

    Returns:
        ``(q, scale, zero_point)``: int8 like ``x`` (contiguous); float32 and
        int32 with size 1 in every dim except ``axis``.

    NOTE: the arguments are trusted: ``torch.ops.slimops.quantize_per_channel`` checks them (in C++) before calling this.
    """
    a = axis % x.dim()
    outer, channels, inner = math.prod(x.shape[:a]), x.shape[a], math.prod(x.shape[a + 1 :])
    shape = [channels if d == a else 1 for d in range(x.dim())]  # keepdim: 1 except at axis
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty(shape, dtype=torch.float32, device=x.device)
    zero_point = torch.empty(shape, dtype=torch.int32, device=x.device)
    if x.numel() == 0:
        return q, scale, zero_point

    xc = x.contiguous()  # [outer, channels, inner]
    block_i = min(triton.next_power_of_2(inner), _TILE)
    # Short inner runs: take several channels per program so a tile spans contiguous memory.
    block_c = min(triton.next_power_of_2(channels), max(1, 64 // block_i))
    block_o = min(triton.next_power_of_2(outer), max(1, _TILE // (block_c * block_i)))

    grid = (triton.cdiv(channels, block_c),)
    with device_guard(x):
        _quantize_per_channel_kernel[grid](
            xc,
            q,
            scale,
            zero_point,
            outer,
            channels,
            inner,
            channels * inner,
            SYMMETRIC=symmetric,
            BLOCK_O=block_o,
            BLOCK_C=block_c,
            BLOCK_I=block_i,
            num_warps=_num_warps(block_o * block_c * block_i),
        )
    return q, scale, zero_point


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(q - zero_point) * scale`` in float32, rounded once to ``out_dtype``.

    Args:
        q: int8 tensor.
        scale: float32 with ``q``'s rank in keepdim layout (per-tensor,
            per-token or per-channel, as the quantizers return it).
        zero_point: optional int32 shaped like ``scale``.
        out_dtype: float32, float16 or bfloat16.

    Returns:
        ``out_dtype`` tensor shaped like ``q`` (contiguous).

    NOTE: the arguments are trusted: ``torch.ops.slimops.dequantize`` checks them (in C++) before calling this.
    """
    # The non-1 dims of scale are one contiguous run [first, last] of q's sizes (checked).
    varying = [d for d in range(q.dim()) if scale.shape[d] != 1]
    if varying:
        first, last = varying[0], varying[-1]
        outer, channels, inner = (
            math.prod(q.shape[:first]), math.prod(q.shape[first : last + 1]), math.prod(q.shape[last + 1 :])
        )
    else:
        outer, channels, inner = 1, 1, q.numel()
    out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    if q.numel() == 0:
        return out

    qc = q.contiguous()  # [outer * channels, inner]
    # The non-1 dims of scale are one contiguous run of q's sizes, so its
    # contiguous flattening is indexed by channel.
    sc = scale.contiguous()
    zc = zero_point.contiguous() if zero_point is not None else sc  # placeholder when absent
    n_rows = outer * channels

    block_i = min(triton.next_power_of_2(inner), _TILE)
    block_r = min(triton.next_power_of_2(n_rows), max(1, _TILE // block_i))
    n_inner_blocks = triton.cdiv(inner, block_i)
    grid = (triton.cdiv(n_rows, block_r) * n_inner_blocks,)
    with device_guard(q):
        _dequantize_kernel[grid](
            qc,
            sc,
            zc,
            out,
            n_rows,
            channels,
            inner,
            n_inner_blocks,
            HAS_ZP=zero_point is not None,
            BLOCK_R=block_r,
            BLOCK_I=block_i,
            num_warps=_num_warps(block_r * block_i),
        )
    return out
