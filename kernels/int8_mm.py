"""Triton kernel for ``slimops::int8_mm``: int8 x int8 GEMM with a fused dequant epilogue.

The specification is :func:`slimops.reference.quant_mm.int8_mm`::

    acc[m, n] = sum_k a[m, k] * b[n, k]                       (exact int32)
    out[m, n] = to(out_dtype, float(acc) * a_scale[m] * b_scale[n] + bias[n])   (fp32)

``a`` is the per-token quantized activation ``[M, K]`` and ``b`` the int8 weight
in ``nn.Linear`` layout ``[N, K]``, so ``out = a @ b^T`` dequantized.

Design, and why:

* One program computes one ``BLOCK_M x BLOCK_N`` output tile. It walks K in
  ``BLOCK_K`` steps and accumulates ``tl.dot(int8, int8) -> int32`` in
  registers, which is the int8 tensor-core path (``wgmma`` s8 on sm_90a,
  ``mma.sync`` m16n8k32 for the small decode tiles). int32 never overflows:
  ``|acc| <= 127 * 127 * K`` fits for K < 133,000.
* The dequantization is the epilogue: one int32 -> fp32 conversion, the two
  scales and the bias in fp32, one rounding to ``out_dtype`` and a masked
  store. No int32 tensor ever reaches global memory, which is where the
  unfused ``_int_mm`` + dequant spends its extra bandwidth.
* ``b`` is ``[N, K]`` with K contiguous, so each B tile is K-major in shared
  memory: the layout that 8-bit ``wgmma`` requires for both operands.
* Program ids are swizzled in groups of ``GROUP_M`` row tiles so that programs
  running at the same time share A and B tiles in L2 (the Triton matmul
  tutorial's grouped ordering).
* Rows of A and B past M / N are wrapped onto valid rows (``% M``, ``% N``)
  instead of masked: loads stay unpredicated along M and N and always in
  bounds; those rows are dropped by the masked store. Only a partial last
  K tile is masked (``EVEN_K`` removes the mask when BLOCK_K divides K).
* Any strides: both strides of ``a`` and of ``b`` reach the kernel, so
  transposed or sliced views are read in place. Row offsets are int64.
* Autotuning: a short curated list, pruned by an M bucket (M rounded up to a
  power of two, at least 16, at most 4096) so that decode and prefill get
  their own candidates, and keyed on (M bucket, N, K). Decode (M <= 16) is
  memory bound on reading the weight once: BLOCK_M = 16, narrow N tiles (many
  programs to fill the SMs) and deep K tiles (few, large loads in flight).
  Prefill is compute bound: 128 x 256 or 256 x 128 tiles with BLOCK_K = 128
  (four k32 int8 MMA steps per stage) and 3-4 pipeline stages.
* ``M`` is not specialized (``do_not_specialize``): a new batch size neither
  recompiles nor retunes unless it changes bucket.
* Under ``TRITON_INTERPRET=1`` (CPU tests) there is no autotuning: one small
  fixed tile keeps the interpreter fast and still exercises every mask.

NOTE: the first call per (M bucket, N, K, dtypes) benchmarks its candidates;
warm up before capturing a CUDA graph.

References: the Triton tutorial ``03-matrix-multiplication.py`` (grouped
ordering, autotune), and vLLM's ``benchmarks/kernels/bench_int8_gemm.py`` for
the W8A8 shapes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from slimops.kernels._gemm import (
    INTERPRET,
    MAX_M_BUCKET,
    NO_AUTOTUNE,
    BucketTable,
    config,
    device_guard,
    even_k,
    grouped_tile,
    launch_meta,
    m_bucket,
    store_tile,
    tile_grid,
)
from slimops.kernels._tiles import autotune


# Row tiles per swizzle group (L2 reuse of the B tiles across neighbouring programs).
_GROUP_M = 8
# M buckets start here: every decode batch shares the BLOCK_M = 16 tiles.
_MIN_M_BUCKET = 16

# (config, smallest M bucket, largest M bucket) it is a candidate for.
_CONFIG_TABLE = BucketTable([
    # Decode: memory bound on the weight. Narrow N tiles give >= 1 wave of
    # programs at N = 4096..11008; deep K tiles keep many bytes in flight.
    (config(16, 32, 256, stages=5, warps=4), 1, 32),
    (config(16, 64, 256, stages=4, warps=4), 1, 32),
    (config(16, 128, 128, stages=4, warps=4), 1, 32),
    # Medium M: one wgmma row block (m64).
    (config(64, 64, 128, stages=5, warps=4), 32, 512),
    (config(64, 128, 128, stages=4, warps=4), 32, 512),
    # Prefill: compute bound, large tiles; 48 KiB of A+B per stage at 128 x 256 x 128.
    (config(128, 128, 128, stages=4, warps=8), 128, MAX_M_BUCKET),
    (config(128, 256, 128, stages=3, warps=8), 128, MAX_M_BUCKET),
    (config(256, 128, 128, stages=3, warps=8), 1024, MAX_M_BUCKET),
])

# The interpreter's only tile: small, and smaller than the test shapes so that
# partial M, N and K tiles all occur.
_INTERPRET_META = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}


def _prune_configs(configs, named_args, **kwargs):
    return _CONFIG_TABLE.for_bucket(configs, named_args["M_BUCKET"])


@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _int8_mm_kernel(
    a_ptr,  # [M, K] int8
    b_ptr,  # [N, K] int8
    a_scale_ptr,  # [M] fp32, contiguous
    b_scale_ptr,  # [N] fp32, contiguous
    bias_ptr,  # [N] fp32/fp16/bf16, contiguous (unused unless HAS_BIAS)
    c_ptr,  # [M, N] out dtype, contiguous
    M,
    N,
    K,
    M_BUCKET,  # only the autotune key and config pruning read it
    stride_am,
    stride_ak,
    stride_bn,
    stride_bk,
    stride_cm,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Grouped ordering: GROUP_M row tiles run down one column of tiles before moving right.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past the end are wrapped, not masked: in-bounds, unpredicated loads whose
    # results the masked store drops.
    rows_a = (offs_m % M).to(tl.int64)
    rows_b = (offs_n % N).to(tl.int64)
    a_ptrs = a_ptr + rows_a[:, None] * stride_am + offs_k[None, :] * stride_ak  # [BLOCK_M, BLOCK_K]
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + rows_b[None, :] * stride_bn  # [BLOCK_K, BLOCK_N]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # Dequant epilogue in fp32, then one rounding to the output dtype.
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_scale = tl.load(a_scale_ptr + offs_m, mask=mask_m, other=0.0)
    b_scale = tl.load(b_scale_ptr + offs_n, mask=mask_n, other=0.0)
    out = acc.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        out = out + bias[None, :]
    store_tile(c_ptr, out, offs_m, offs_n, mask_m, mask_n, stride_cm, False)


if INTERPRET or NO_AUTOTUNE:
    _int8_mm = even_k(_int8_mm_kernel)
else:
    _int8_mm = autotune(
        configs=_CONFIG_TABLE.configs,
        key=["M_BUCKET", "N", "K"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )(even_k(_int8_mm_kernel))


def int8_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(a @ b^T) * a_scale[:, None] * b_scale[None, :] + bias``, accumulated exactly in int32.

    Args:
        a: int8 ``[M, K]`` (quantized activation); any strides.
        b: int8 ``[N, K]`` (weight, ``nn.Linear`` layout); any strides.
        a_scale: float32 ``[M]`` or ``[M, 1]``, one scale per row of ``a``.
        b_scale: float32 ``[N]`` or ``[N, 1]``, one scale per row of ``b``.
        bias: None, or float32/float16/bfloat16 ``[N]``, added in fp32.
        out_dtype: float32, float16 or bfloat16.

    Returns:
        A new contiguous ``[M, N]`` tensor of ``out_dtype``.

    NOTE: the arguments are trusted: ``torch.ops.slimops.int8_mm`` checks them (in C++) before calling this.
    """
    (m, k), n = a.shape, b.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out

    a_scale = a_scale.reshape(-1).contiguous()  # [M]
    b_scale = b_scale.reshape(-1).contiguous()  # [N]
    bias = bias.contiguous() if bias is not None else None  # [N]

    bucket = m_bucket(m, floor=_MIN_M_BUCKET)
    meta = launch_meta(_INTERPRET_META, lambda: _prune_configs(_CONFIG_TABLE.configs, {"M_BUCKET": bucket})[0])
    with device_guard(a):
        _int8_mm[tile_grid(m, n)](
            a,
            b,
            a_scale,
            b_scale,
            bias if bias is not None else b_scale,  # placeholder pointer when there is no bias
            out,
            m,
            n,
            k,
            bucket,
            a.stride(0),
            a.stride(1),
            b.stride(0),
            b.stride(1),
            out.stride(0),
            HAS_BIAS=bias is not None,
            GROUP_M=_GROUP_M,
            **meta,
        )
    return out
