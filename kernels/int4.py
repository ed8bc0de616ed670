"""Triton kernel for ``slimops::weight_int4_linear``: int4 weight-only (W4A16) linear.

The specification is :func:`slimops.reference.int4.weight_int4_linear`::

    out[m, n] = to(x.dtype, sum_k x[m, k] * (q[n, k] - z[n, g]) * s[n, g] + bias[n]),  g = k // group_size

with ``q`` unsigned nibbles packed two per byte in chunks of 32 inputs (byte ``16c + i`` holds
input ``32c + i`` low and ``32c + 16 + i`` high; see :mod:`slimops.reference.int4`) and ``z = 8``
when there is no zero point.

Design: a tiled GEMM whose K tile (``BLOCK_K``, 32..128) divides ``group_size``, so each tile lies
in one group. The nibbles go into ``tl.dot`` as they are (0..15 is exact in fp16 and fp32), and the
group's scale and zero point are applied to the tile's fp32 result:
``acc += s[n] * (dot(x, q^T) - z[n] * sum_k x[m, k])`` (the row sums of the x tile, in fp32). So
no weight is rounded before the dot and the dequantized weight never exists. fp32 x takes the
"ieee" dot (no TF32). Each K offset's byte is gathered (``16 * (k // 32) + k % 16``) and shifted by
``4 * ((k // 16) % 2)``. No autotuning yet: one tile per M regime (decode M <= 16 or larger);
GPU speed is unmeasured (no GPU in the session that wrote it).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from slimops.kernels._gemm import INTERPRET, device_guard


@triton.jit
def _nibble_linear_kernel(
    x_ptr, q_ptr, s_ptr, aux_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_qn, stride_sn, stride_auxn,
    GROUP_SIZE: tl.constexpr,
    CODEBOOK: tl.constexpr,  # aux is a [C, 16] table (kernels/codebook4.py), else int4's zero point
    HAS_ZERO: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    rows_m = offs_m.to(tl.int64)
    rows_n = offs_n.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_ptr + rows_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        byte = (offs_k // 32) * 16 + offs_k % 16
        shift = ((offs_k // 16) % 2) * 4
        b = tl.load(q_ptr + rows_n[:, None] * stride_qn + byte[None, :],
                    mask=n_mask[:, None] & k_mask[None, :], other=0)  # [BLOCK_N, BLOCK_K] uint8
        q = (b.to(tl.int32) >> shift[None, :]) & 0x0F
        if CODEBOOK:
            # stride_auxn is 0 for a layer-wide table: every row reads row 0
            w = tl.load(aux_ptr + rows_n[:, None] * stride_auxn + q, mask=n_mask[:, None] & k_mask[None, :],
                        other=0.0).to(x.dtype)
        else:
            w = q.to(x.dtype)
        if IEEE_DOT:
            part = tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            part = tl.dot(x, tl.trans(w))
        g = k0 // GROUP_SIZE
        s = tl.load(s_ptr + rows_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
        if CODEBOOK:
            acc += s[None, :] * part
        else:
            if HAS_ZERO:
                z = tl.load(aux_ptr + rows_n * stride_auxn + g, mask=n_mask, other=0.0).to(tl.float32)
            else:
                z = tl.full((BLOCK_N,), 8.0, tl.float32)
            xsum = tl.sum(x.to(tl.float32), axis=1)  # [BLOCK_M]
            acc += s[None, :] * (part - z[None, :] * xsum[:, None])
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows_m[:, None] * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _block_k(group_size: int) -> int:
    # the largest of 128, 64, 32 dividing group_size (a multiple of 32): a K tile never straddles groups
    return next(b for b in (128, 64, 32) if group_size % b == 0)


def weight_int4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W4A16 linear with the int4 weight unpacked in registers.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``, any strides.
        qweight: uint8 ``[N, ceil(K / 32) * 16]`` (:func:`slimops.reference.int4.pack_int4`).
        scale: float ``[N, ceil(K / group_size)]``.
        zero_point: float like ``scale``, or None (symmetric: 8).
        group_size: a positive multiple of 32.
        bias: optional float ``[N]``.

    Returns:
        ``[..., N]`` in ``x.dtype`` (contiguous): fp32 accumulation, rounded once.

    NOTE: the arguments are trusted: ``torch.ops.slimops.weight_int4_linear`` checks them (in C++) first.
    """
    z = zero_point.contiguous() if zero_point is not None else None
    return nibble_linear(x, qweight, scale, z, 0 if z is None else z.stride(0), group_size, bias,
                         codebook=False)


def nibble_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, aux: torch.Tensor | None,
                  stride_aux: int, group_size: int, bias: torch.Tensor | None, *, codebook: bool) -> torch.Tensor:
    """Launches the 4-bit kernel: ``aux`` is int4's zero point (or None) or, with ``codebook``, the table."""
    k, n = x.shape[-1], qweight.shape[0]
    m = math.prod(x.shape[:-1])
    out = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    x2 = x.reshape(m, k)
    q = qweight.contiguous()  # the byte gather assumes unit stride along a row
    s = scale.contiguous()
    bias = bias.contiguous() if bias is not None else None
    if INTERPRET:
        block_m, block_n, block_k, warps = 16, 16, 32, 4
    else:
        block_m, block_n, block_k, warps = (16, 64, _block_k(group_size), 4) if m <= 16 else (64, 64, 32, 4)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    with device_guard(x):
        _nibble_linear_kernel[grid](
            x2, q, s, aux if aux is not None else s, bias if bias is not None else s, out,
            m, n, k,
            x2.stride(0), x2.stride(1), q.stride(0), s.stride(0), stride_aux,
            GROUP_SIZE=group_size,
            CODEBOOK=codebook,
            HAS_ZERO=aux is not None and not codebook,
            HAS_BIAS=bias is not None,
            IEEE_DOT=x.dtype == torch.float32,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            num_warps=warps,
        )
    return out
