"""Triton kernel for ``slimops::weight_codebook4_linear``: codebook (NF4 / k-means) 4-bit weight-only linear.

The specification is :func:`slimops.reference.codebook4.weight_codebook4_linear`::

    out[m, n] = to(x.dtype, sum_k x[m, k] * T[c, q[n, k]] * s[n, g] + bias[n]),  g = k // group_size

with ``q`` 4-bit indices in int4's nibble layout (byte ``16c + i`` holds input ``32c + i`` low and
``32c + 16 + i`` high; :mod:`slimops.reference.int4`), ``T`` the ``[C, 16]`` codebook and
``c = 0`` (C = 1) or ``n`` (C = N).

Design: int4's tiled GEMM (kernels/int4.py) with the dequantize step replaced by a table lookup:
the K tile (``BLOCK_K``, 32..128) divides ``group_size``, so each tile lies in one block; the
indices gather their row's codebook entries (``tl.load`` at ``T + c * 16 + q``: 64 bytes per row,
cached after the first touch), the values go into ``tl.dot`` in x's dtype, and the block's scale
is applied to the tile's fp32 result. NOTE: the entries are rounded to x's dtype before the dot
(fp16 / bf16 x), as every fp16 NF4 kernel does; fp32 x takes the "ieee" dot (no TF32). No
autotuning yet; GPU speed is unmeasured (no GPU in the session that wrote it).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from slimops.kernels._gemm import INTERPRET, device_guard
from slimops.kernels.int4 import _block_k


@triton.jit
def _weight_codebook4_linear_kernel(
    x_ptr, q_ptr, t_ptr, s_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_qn, stride_tn, stride_sn,
    GROUP_SIZE: tl.constexpr,
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
        # stride_tn is 0 for a layer-wide table: every row reads row 0
        w = tl.load(t_ptr + rows_n[:, None] * stride_tn + q, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        w = w.to(x.dtype)
        if IEEE_DOT:
            part = tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            part = tl.dot(x, tl.trans(w))
        s = tl.load(s_ptr + rows_n * stride_sn + k0 // GROUP_SIZE, mask=n_mask, other=0.0).to(tl.float32)
        acc += s[None, :] * part
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows_m[:, None] * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def weight_codebook4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    codebook: torch.Tensor,
    scale: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W4A16 linear with a 16-entry codebook looked up per weight.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``, any strides.
        qweight: uint8 ``[N, ceil(K / 32) * 16]`` (:func:`slimops.reference.int4.pack_int4`).
        codebook: float ``[1, 16]`` or ``[N, 16]``.
        scale: float ``[N, ceil(K / group_size)]``.
        group_size: a positive multiple of 32.
        bias: optional float ``[N]``.

    Returns:
        ``[..., N]`` in ``x.dtype`` (contiguous): fp32 accumulation, rounded once.

    NOTE: the arguments are trusted: ``torch.ops.slimops.weight_codebook4_linear`` checks them (in C++) first.
    """
    k, n = x.shape[-1], qweight.shape[0]
    m = math.prod(x.shape[:-1])
    out = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    x2 = x.reshape(m, k)
    q = qweight.contiguous()  # the byte gather assumes unit stride along a row
    t = codebook.contiguous()
    s = scale.contiguous()
    bias = bias.contiguous() if bias is not None else None
    if INTERPRET:
        block_m, block_n, block_k, warps = 16, 16, 32, 4
    else:
        block_m, block_n, block_k, warps = (16, 64, _block_k(group_size), 4) if m <= 16 else (64, 64, 32, 4)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    with device_guard(x):
        _weight_codebook4_linear_kernel[grid](
            x2, q, t, s, bias if bias is not None else s, out,
            m, n, k,
            x2.stride(0), x2.stride(1), q.stride(0), 0 if t.shape[0] == 1 else t.stride(0), s.stride(0),
            GROUP_SIZE=group_size,
            HAS_BIAS=bias is not None,
            IEEE_DOT=x.dtype == torch.float32,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            num_warps=warps,
        )
    return out
