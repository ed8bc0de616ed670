"""Triton kernels for ``slimops::masked_linear`` and its two gradients: a linear layer with a pruning mask.

The specifications are in :mod:`slimops.reference.sparse`::

    masked_linear:             y[m, n]  = to(x.dtype, sum_k x[m, k] * (w[n, k] if mask[n, k] else 0) + bias[n])
    masked_linear_grad_input:  gx[m, k] = to(g.dtype, sum_n g[m, n] * (w[n, k] if mask[n, k] else 0))
    masked_linear_grad_weight: gw[n, k] = to(x.dtype, sum_m g[m, n] * x[m, k]) if mask[n, k] else 0

with ``x [..., K]``, ``g [..., N]`` (the leading dims are flattened to M rows),
the weight ``w [N, K]`` in ``nn.Linear`` layout and the bool ``mask [N, K]``
(True = kept). This is the training-time form of unstructured pruning: the
dense weight and the mask both stay, and no pruned weight can come back to life.

Design, and why:

* ``W ⊙ M`` never reaches global memory. The masked linear in plain PyTorch
  (``x @ (w * mask).t()``) writes the masked weight and reads it again: for a
  decode-sized forward that is three weight-sized passes where this kernel
  makes one (plus the 1-byte mask). Each weight tile is loaded with its mask
  tile (the bool tensor viewed as uint8: a bool is stored in one byte) and
  ``tl.where(mask, w, 0)`` selects in registers before ``tl.dot``. A select,
  not a multiply: a pruned weight counts as an exact zero even when the
  stored value is inf or NaN.
* The forward and ``grad_input`` are the same kernel. ``grad_x = g (W ⊙ M)``
  is the forward with ``g`` as the activation and ``w^T`` / ``mask^T`` as
  the ``[K, N]`` "weight": both are transposed *views*, and every stride
  reaches the kernel, so nothing is copied. The autotune key holds the
  weight's K stride, so the two layouts are tuned apart.
* ``grad_weight`` is its own kernel: ``g^T x`` reduces over the M rows (all
  tokens of the batch), and the mask is applied in the epilogue, after the
  fp32 accumulation, so masked entries are stored as exact zeros (even when
  the products were inf or NaN).
* fp32 accumulation, one rounding to the output dtype; fp32 inputs take
  ``input_precision="ieee"`` (TF32 would drop the accuracy a fp32 caller
  asked for), with their own small-K tiles for the FMA dot. ``grad_weight``
  accepts a ``grad`` whose dtype differs from x's (e.g. fp32 gradients of a
  bf16 layer): then both operands are widened to fp32 in registers and take
  the same "ieee" path, rather than rounding one to the other's dtype.
* Decode (M <= 16) is memory bound on reading w and the mask once. As in
  :mod:`slimops.kernels.weight_int8`, the roles are swapped ("swap AB"): a
  program computes ``y^T[BLOCK_N, 16] = (w ⊙ mask)[BLOCK_N, BLOCK_K] @ x^T[BLOCK_K, 16]``
  so that the weight fills the MMA's M side and x, at most 16 rows, is the
  narrow N side. Narrow N tiles give at least a wave of programs at
  N = 4096; deep K tiles with 3-5 stages keep enough bytes in flight.
* M > 16 is a tiled GEMM, program ids swizzled in groups of ``GROUP_M`` row
  (or, for ``grad_weight``, N) tiles so that programs running together share
  tiles in L2 (the Triton matmul tutorial's grouped ordering).
* Masks on every tail (M, N, K); ``EVEN_K`` / ``EVEN_M`` drop the mask of the
  reduction dimension when the tile divides it. Offsets along the dimensions
  that are not walked are int64, so large or transposed views stay in range.
* Autotuning: short curated lists, pruned by an M bucket (M rounded up to a
  power of two, at most 4096) and keyed on it, N, K (and the dtypes, which
  Triton adds). ``M`` is not specialized (``do_not_specialize``): a new batch
  size neither recompiles nor retunes within its bucket. Shared memory per
  stage is noted beside each config (fp16/bf16: 2 bytes per x and w element,
  1 per mask element) and stays under about 200 KB. Under ``TRITON_INTERPRET=1``
  there is one small fixed tile per kernel and no autotuning;
  ``SLIMOPS_TRITON_AUTOTUNE=0`` takes the first candidate left after pruning.

NOTE: the first call per key benchmarks its candidates; warm up before
capturing a CUDA graph.

References: the Triton tutorial ``03-matrix-multiplication.py`` (grouped
ordering, autotune); Han et al., "Learning both Weights and Connections for
Efficient Neural Networks" (2015) and ``torch.nn.utils.prune`` for the
weight-times-mask training scheme.
"""

from __future__ import annotations

import math

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
    dot,
    even_k,
    grouped_tile,
    launch_meta,
    m_bucket,
    tile_grid,
)
from slimops.kernels._tiles import autotune


# M at or below this takes the swap-AB (decode) path; BLOCK_M there is this value
# (tl.dot needs every dimension >= 16).
_SMALL_M = 16
# Row tiles per swizzle group (L2 reuse of weight tiles across neighbouring programs).
_GROUP_M = 8


# Decode (M <= 16), fp16/bf16. Per stage: 3 * BLOCK_N * BLOCK_K (w + mask) + 32 * BLOCK_K (x).
# BLOCK_N 16..64 gives 256..64 programs at N = 4096 (688..172 at N = 11008).
# Every tile here and below compiles for sm_90a without register spills (triton 3.9):
# 16 x 512 K tiles and fp32 32 x 64 x 32 on 4 warps spilled, so they are not listed.
_DECODE_CONFIGS = [
    config(16, 32, 256, warps=4, stages=4),  # 32 KB/stage
    config(16, 16, 256, warps=4, stages=4),  # 20 KB/stage
    config(16, 64, 128, warps=4, stages=4),  # 28 KB/stage
    config(16, 32, 128, warps=8, stages=5),  # 16 KB/stage
    config(16, 64, 256, warps=4, stages=3),  # 56 KB/stage
    config(16, 128, 128, warps=8, stages=3),  # 52 KB/stage
]

# Decode with fp32 x (FMA dot). Per stage: 5 * BLOCK_N * BLOCK_K + 64 * BLOCK_K.
_DECODE_IEEE_CONFIGS = [
    config(16, 32, 64, warps=4, stages=3),  # 14 KB/stage
    config(16, 64, 64, warps=4, stages=3),  # 24 KB/stage
    config(16, 32, 128, warps=4, stages=3),  # 28 KB/stage
]

# M > 16, fp16/bf16: (config, smallest M bucket, largest M bucket) it is a candidate for.
# Per stage: 2 * BLOCK_M * BLOCK_K (x) + 3 * BLOCK_N * BLOCK_K (w + mask).
_GEMM_CONFIG_TABLE = BucketTable([
    (config(32, 64, 128, warps=4, stages=4), 32, 64),  # 32 KB/stage
    (config(32, 128, 64, warps=4, stages=4), 32, 64),  # 28 KB/stage
    (config(64, 64, 128, warps=4, stages=4), 64, 512),  # 40 KB/stage
    (config(64, 128, 64, warps=4, stages=4), 64, MAX_M_BUCKET),  # 32 KB/stage
    (config(128, 128, 64, warps=8, stages=4), 128, MAX_M_BUCKET),  # 40 KB/stage
    (config(128, 256, 64, warps=8, stages=3), 256, MAX_M_BUCKET),  # 64 KB/stage
])

# M > 16 with fp32 x: the "ieee" dot runs on FMA units and holds a BLOCK_K slab of both
# operands per thread, so only small K tiles stay out of local-memory spills.
_GEMM_IEEE_CONFIGS = [
    config(32, 64, 16, warps=4, stages=3),
    config(64, 64, 16, warps=4, stages=3),
    config(32, 64, 32, warps=8, stages=3),
]


def _gw_cfg(block_n: int, block_k: int, block_m: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(
        {"BLOCK_N": block_n, "BLOCK_K": block_k, "BLOCK_M": block_m}, num_warps=warps, num_stages=stages
    )


# grad_weight, fp16/bf16: the output [N, K] is a weight, so it is large and the tiles are too;
# BLOCK_M is the reduction step. Per stage: 2 * (BLOCK_N + BLOCK_K) * BLOCK_M.
_GW_CONFIGS = [
    _gw_cfg(128, 128, 64, warps=8, stages=4),  # 32 KB/stage
    _gw_cfg(128, 256, 64, warps=8, stages=3),  # 48 KB/stage
    _gw_cfg(256, 128, 64, warps=8, stages=3),  # 48 KB/stage
    _gw_cfg(64, 128, 64, warps=4, stages=4),  # 24 KB/stage
    _gw_cfg(64, 64, 64, warps=4, stages=4),  # small layers: more programs
]

# grad_weight with fp32 (FMA dot): small reduction steps, as for the forward.
_GW_IEEE_CONFIGS = [
    _gw_cfg(64, 64, 16, warps=4, stages=3),
    _gw_cfg(32, 64, 32, warps=4, stages=3),
]

# Interpreter tiles: small, and smaller than the test shapes so that partial M, N
# and K tiles all occur (BLOCK_M must stay 16 on the swap-AB path).
_INTERPRET_META = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}
_INTERPRET_GW_META = {"BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_M": 32, "num_warps": 4, "num_stages": 1}


def _prune_decode_configs(configs, named_args, **kwargs):
    return _DECODE_IEEE_CONFIGS if kwargs["IEEE_DOT"] else list(configs)


def _prune_gemm_configs(configs, named_args, **kwargs):
    if kwargs["IEEE_DOT"]:
        return _GEMM_IEEE_CONFIGS
    return _GEMM_CONFIG_TABLE.for_bucket(configs, named_args["M_BUCKET"])


def _prune_gw_configs(configs, named_args, **kwargs):
    return _GW_IEEE_CONFIGS if kwargs["IEEE_DOT"] else list(configs)


@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _masked_linear_kernel(
    x_ptr,  # [M, K] float, any strides
    w_ptr,  # [N, K] x's dtype, any strides (grad_input: the transposed weight)
    mask_ptr,  # [N, K] uint8 view of the bool mask, any strides
    b_ptr,  # [N] float bias (read only when HAS_BIAS)
    out_ptr,  # [M, N] x.dtype, contiguous
    M,
    N,
    K,
    M_BUCKET,  # only the autotune key and config pruning read it
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_mn,
    stride_mk,
    stride_b,
    HAS_BIAS: tl.constexpr,
    IEEE_DOT: tl.constexpr,  # x is fp32
    SWAP_AB: tl.constexpr,  # decode: the program's tile is out^T [BLOCK_N, BLOCK_M]
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    dot_ty = x_ptr.dtype.element_ty
    if SWAP_AB:
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
    else:
        # Grouped ordering: GROUP_M row tiles run down one column of weight tiles.
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = offs_m.to(tl.int64) * stride_xm
    w_rows = offs_n.to(tl.int64) * stride_wn
    k_rows = offs_n.to(tl.int64) * stride_mn

    if SWAP_AB:
        # (w ⊙ mask) [BLOCK_N, BLOCK_K] and x^T [BLOCK_K, BLOCK_M]; acc is out^T.
        w_ptrs = w_ptr + w_rows[:, None] + offs_k[None, :] * stride_wk
        k_ptrs = mask_ptr + k_rows[:, None] + offs_k[None, :] * stride_mk
        x_ptrs = x_ptr + offs_k[:, None] * stride_xk + x_rows[None, :]
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        # x [BLOCK_M, BLOCK_K] and (w ⊙ mask)^T [BLOCK_K, BLOCK_N].
        x_ptrs = x_ptr + x_rows[:, None] + offs_k[None, :] * stride_xk
        w_ptrs = w_ptr + offs_k[:, None] * stride_wk + w_rows[None, :]
        k_ptrs = mask_ptr + offs_k[:, None] * stride_mk + k_rows[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)

    for k0 in range(0, K, BLOCK_K):
        # Loads are masked along M and N; along K only when BLOCK_K does not divide K.
        if SWAP_AB:
            if EVEN_K:
                w_in = n_mask[:, None]
                x_in = m_mask[None, :]
            else:
                k_in = offs_k < K - k0
                w_in = n_mask[:, None] & k_in[None, :]
                x_in = k_in[:, None] & m_mask[None, :]
            w = tl.load(w_ptrs, mask=w_in, other=0.0)
            keep = tl.load(k_ptrs, mask=w_in, other=0)
            x = tl.load(x_ptrs, mask=x_in, other=0.0)
            # A select, not a multiply: a pruned inf/NaN weight is still an exact zero.
            w = tl.where(keep != 0, w, 0.0).to(dot_ty)
            acc = dot(w, x, acc, IEEE_DOT)
        else:
            if EVEN_K:
                x_in = m_mask[:, None]
                w_in = n_mask[None, :]
            else:
                k_in = offs_k < K - k0
                x_in = m_mask[:, None] & k_in[None, :]
                w_in = k_in[:, None] & n_mask[None, :]
            x = tl.load(x_ptrs, mask=x_in, other=0.0)
            w = tl.load(w_ptrs, mask=w_in, other=0.0)
            keep = tl.load(k_ptrs, mask=w_in, other=0)
            w = tl.where(keep != 0, w, 0.0).to(dot_ty)
            acc = dot(x, w, acc, IEEE_DOT)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
        k_ptrs += BLOCK_K * stride_mk

    # Epilogue in fp32: bias, then one rounding to x.dtype.
    # NOTE: written out rather than _gemm.store_tile: the PTX would be the same, but the helper's
    # inlined-scope line info changes ptxas's schedule for some tiles (so does _gemm.program_tile).
    if SWAP_AB:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n * stride_b, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        out_ptrs = out_ptr + offs_m.to(tl.int64)[None, :] * N + offs_n[:, None]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & m_mask[None, :])
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n * stride_b, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _masked_grad_weight_kernel(
    g_ptr,  # [M, N] gradient of the output, any strides
    x_ptr,  # [M, K] input, any strides
    mask_ptr,  # [N, K] uint8 view of the bool mask, any strides
    out_ptr,  # [N, K] x.dtype, contiguous
    M,
    N,
    K,
    M_BUCKET,  # only the autotune key reads it
    stride_gm,
    stride_gn,
    stride_xm,
    stride_xk,
    stride_mn,
    stride_mk,
    IEEE_DOT: tl.constexpr,  # x or grad is fp32, or their dtypes differ
    EVEN_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,  # the reduction step
    GROUP_M: tl.constexpr,  # N tiles per swizzle group
):
    # Same dtypes: the dot runs in that dtype. fp32 or mixed dtypes (the validator lets
    # grad and x differ): both operands go to fp32 and the dot is "ieee", so nothing is
    # rounded before the fp32 sum.
    dot_ty = tl.float32 if IEEE_DOT else x_ptr.dtype.element_ty
    # Grouped ordering over the [N, K] output tiles: GROUP_M N tiles share each x column tile.
    # NOTE: _gemm.grouped_tile written out, for the reason given at the epilogue above.
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_k = tl.cdiv(K, BLOCK_K)
    pids_per_group = GROUP_M * num_pid_k
    first_pid_n = (pid // pids_per_group) * GROUP_M
    group_rows = min(num_pid_n - first_pid_n, GROUP_M)
    pid_n = first_pid_n + (pid % pids_per_group) % group_rows
    pid_k = (pid % pids_per_group) // group_rows

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    k_mask = offs_k < K
    # g^T [BLOCK_N, BLOCK_M] and x [BLOCK_M, BLOCK_K].
    g_ptrs = g_ptr + offs_n.to(tl.int64)[:, None] * stride_gn + offs_m[None, :] * stride_gm
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k.to(tl.int64)[None, :] * stride_xk

    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        # Masked along N and K; along M only when BLOCK_M does not divide M.
        if EVEN_M:
            g = tl.load(g_ptrs, mask=n_mask[:, None], other=0.0)
            x = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
        else:
            m_in = offs_m < M - m0
            g = tl.load(g_ptrs, mask=n_mask[:, None] & m_in[None, :], other=0.0)
            x = tl.load(x_ptrs, mask=m_in[:, None] & k_mask[None, :], other=0.0)
        acc = dot(g.to(dot_ty), x.to(dot_ty), acc, IEEE_DOT)
        g_ptrs += BLOCK_M * stride_gm
        x_ptrs += BLOCK_M * stride_xm

    # Epilogue: the mask selects after the fp32 sum, so pruned entries are exact zeros.
    out_mask = n_mask[:, None] & k_mask[None, :]
    keep_ptrs = mask_ptr + offs_n.to(tl.int64)[:, None] * stride_mn + offs_k.to(tl.int64)[None, :] * stride_mk
    keep = tl.load(keep_ptrs, mask=out_mask, other=0)
    acc = tl.where(keep != 0, acc, 0.0)
    out_ptrs = out_ptr + offs_n.to(tl.int64)[:, None] * K + offs_k[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


_kernel = even_k(_masked_linear_kernel)
_gw_kernel = triton.heuristics({"EVEN_M": lambda args: args["M"] % args["BLOCK_M"] == 0})(_masked_grad_weight_kernel)

if INTERPRET or NO_AUTOTUNE:
    _decode_kernel = _gemm_kernel = _kernel
    _grad_weight_kernel = _gw_kernel
else:
    # Triton adds the tensor dtypes to the key; stride_wk tells the forward's weight
    # (K-contiguous) from grad_input's transposed one.
    _AUTOTUNE_KEY = ["M_BUCKET", "N", "K", "stride_wk"]
    _decode_kernel = autotune(
        configs=_DECODE_CONFIGS,
        key=_AUTOTUNE_KEY,
        prune_configs_by={"early_config_prune": _prune_decode_configs},
    )(_kernel)
    _gemm_kernel = autotune(
        configs=_GEMM_CONFIG_TABLE.configs,
        key=_AUTOTUNE_KEY,
        prune_configs_by={"early_config_prune": _prune_gemm_configs},
    )(_kernel)
    _grad_weight_kernel = autotune(
        configs=_GW_CONFIGS,
        key=["M_BUCKET", "N", "K"],
        prune_configs_by={"early_config_prune": _prune_gw_configs},
    )(_gw_kernel)


def _rows(t: torch.Tensor) -> int:
    # The product of the leading dims of t [..., K].
    return math.prod(t.shape[:-1])


def _launch_linear(
    x2: torch.Tensor,  # [M, K] activation (grad_input: the output gradient)
    w: torch.Tensor,  # [N, K] weight (grad_input: its transpose), a view
    keep: torch.Tensor,  # [N, K] uint8 view of the mask (grad_input: its transpose)
    bias: torch.Tensor | None,  # [N]
    out2: torch.Tensor,  # [M, N] contiguous
) -> None:
    m, k = x2.shape
    n = w.shape[0]
    swap = m <= _SMALL_M
    bucket = m_bucket(m)
    ieee = x2.dtype == torch.float32
    kernel = _decode_kernel if swap else _gemm_kernel

    def first():
        if swap:
            return _prune_decode_configs(_DECODE_CONFIGS, {}, IEEE_DOT=ieee)[0]
        return _prune_gemm_configs(_GEMM_CONFIG_TABLE.configs, {"M_BUCKET": bucket}, IEEE_DOT=ieee)[0]

    meta = launch_meta(_INTERPRET_META, first)
    with device_guard(x2):
        kernel[tile_grid(m, n)](
            x2,
            w,
            keep,
            bias if bias is not None else w,  # placeholder pointer when absent
            out2,
            m,
            n,
            k,
            bucket,
            x2.stride(0),
            x2.stride(1),
            w.stride(0),
            w.stride(1),
            keep.stride(0),
            keep.stride(1),
            bias.stride(0) if bias is not None else 0,
            HAS_BIAS=bias is not None,
            IEEE_DOT=ieee,
            SWAP_AB=swap,
            GROUP_M=_GROUP_M,
            **meta,
        )


def masked_linear(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x (weight ⊙ mask)^T + bias`` with the mask applied in registers.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``; any strides (the leading dims
            are flattened to rows, as a view whenever the strides allow one).
        weight: ``[N, K]`` in x's dtype (``nn.Linear`` layout); any strides.
        mask: bool ``[N, K]``, True where the weight is kept; any strides.
        bias: optional float ``[N]``, added in fp32.

    Returns:
        ``[..., N]`` in ``x.dtype`` (contiguous): fp32 accumulation, rounded once.

    NOTE: the arguments are trusted: ``torch.ops.slimops.masked_linear`` checks them (in C++) before calling this.
    """
    m, n, k = _rows(x), weight.shape[0], x.shape[-1]
    out = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if k == 0:  # nothing to reduce (and the empty operands need not have storage)
        return out.copy_(bias.expand_as(out)) if bias is not None else out.zero_()
    # NOTE: a bool tensor stores one byte per element, so the uint8 view is free
    # (any strides) and Triton loads it as bytes.
    _launch_linear(x.reshape(m, k), weight, mask.view(torch.uint8), bias, out.view(m, n))
    return out


def masked_linear_grad_input(grad: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``grad_x = grad (weight ⊙ mask)``: the forward kernel on the transposed weight and mask views.

    Args:
        grad: float ``[..., N]``, gradient of the output; any strides.
        weight: ``[N, K]`` in grad's dtype; any strides.
        mask: bool ``[N, K]``; any strides.

    Returns:
        ``[..., K]`` in ``grad.dtype`` (contiguous).

    NOTE: the arguments are trusted (checked in C++ by ``torch.ops.slimops.masked_linear_grad_input``).
    """
    m, (n, k) = _rows(grad), weight.shape
    out = torch.empty((*grad.shape[:-1], k), dtype=grad.dtype, device=grad.device)
    if m == 0 or k == 0:
        return out
    if n == 0:  # nothing to reduce
        return out.zero_()
    # The forward computes out[m, j] = sum_i a[m, i] * wt[j, i]; with wt = weight^T
    # ([K, N], a view) that is grad (W ⊙ M).
    _launch_linear(grad.reshape(m, n), weight.t(), mask.view(torch.uint8).t(), None, out.view(m, k))
    return out


def masked_linear_grad_weight(grad: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``grad_W = (grad^T x) ⊙ mask``, summed over every leading row; pruned entries are exact zeros.

    Args:
        grad: float ``[..., N]``, gradient of the output; any strides. Its dtype
            may differ from x's (both are then multiplied in fp32).
        x: float ``[..., K]``, the forward's input (same leading dims); any strides.
        mask: bool ``[N, K]``; any strides.

    Returns:
        A new contiguous ``[N, K]`` tensor in ``x.dtype``: fp32 accumulation over
        all ``M`` rows, rounded once.

    NOTE: the arguments are trusted (checked in C++ by ``torch.ops.slimops.masked_linear_grad_weight``).
    """
    m, n, k = _rows(x), grad.shape[-1], x.shape[-1]
    if m == 0:
        return torch.zeros((n, k), dtype=x.dtype, device=x.device)
    out = torch.empty((n, k), dtype=x.dtype, device=x.device)
    if n == 0 or k == 0:
        return out
    g2 = grad.reshape(m, n)  # [M, N]; a view whenever the leading dims allow one
    x2 = x.reshape(m, k)  # [M, K]
    keep = mask.view(torch.uint8)  # [N, K]
    ieee = x.dtype == torch.float32 or grad.dtype != x.dtype
    bucket = m_bucket(m)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(k, meta["BLOCK_K"]),)

    meta = launch_meta(_INTERPRET_GW_META, lambda: _prune_gw_configs(_GW_CONFIGS, {}, IEEE_DOT=ieee)[0])
    with device_guard(x):
        _grad_weight_kernel[grid](
            g2,
            x2,
            keep,
            out,
            m,
            n,
            k,
            bucket,
            g2.stride(0),
            g2.stride(1),
            x2.stride(0),
            x2.stride(1),
            keep.stride(0),
            keep.stride(1),
            IEEE_DOT=ieee,
            GROUP_M=_GROUP_M,
            **meta,
        )
    return out
