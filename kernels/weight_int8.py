"""Triton kernel for ``slimops::weight_int8_linear``: int8 weight-only (W8A16) linear.

The specification is :func:`slimops.reference.quant_mm.weight_int8_linear`::

    out[m, n] = to(x.dtype, sum_k x[m, k] * w[n, k] * scale[n, k // group_size] + bias[n])

with ``x`` float32/float16/bfloat16 ``[..., K]``, ``w`` int8 ``[N, K]`` (``nn.Linear``
layout), ``scale`` ``[N]`` (per output channel) or ``[N, G]`` (per group of
``group_size = K / G`` consecutive inputs), fp32 accumulation and one rounding.

Design, and why:

* The weight is dequantized in registers: each int8 tile is loaded, converted
  and fed to ``tl.dot``; no dequantized weight ever reaches global memory (the
  "dequantize then matmul" baseline reads and writes it twice more). How the
  scale enters depends on the scale layout (all choices are static):

  - per channel: int8 -> x.dtype is exact (|w| <= 128 needs 8 bits of
    significand), so the dot sees the raw integers and ``scale[n]`` multiplies
    the fp32 accumulator once, in the epilogue;
  - per group, ``BLOCK_K`` divides ``group_size`` (e.g. 128-groups with
    ``BLOCK_K <= 128``): a K tile lies inside one group, so each tile's dot
    (exact integers again) is multiplied by a ``[BLOCK_N]`` scale vector in fp32
    and added to the accumulator;
  - per group, ``group_size`` divides ``BLOCK_K`` (power-of-two groups smaller
    than the tile): the tile's ``BLOCK_K / group_size`` scales per channel are
    loaded and broadcast over their groups in registers, ``w * scale`` is formed
    in fp32 and rounded to x.dtype for the dot. That rounding (one per weight)
    is what a dequantized fp16/bf16 weight carries anyway;
  - any other group size (any divisor of K is allowed, e.g. 24 or 96 with
    ``BLOCK_K = 64``): as above, but each weight's scale is gathered. This is
    correct for every group size and slow (a scale load per weight; its
    pipeline buffers are a scale per weight, so such tiles keep 2 stages).

  fp32 x takes ``input_precision="ieee"``: TF32 would cost the accuracy that a
  fp32 caller asked for. NOTE: with fp16 x, ``|w * scale| > 65504`` overflows
  in the last two modes and not in the first two; and which mode runs depends
  on the tile the autotuner picks, so results may differ by that rounding.
* Decode (M <= 16) is memory bound on reading the weight once (11008 x 4096
  int8 is 45 MB, about 10.6 us on an H200). A tile with M rows would waste the
  MMA's 64/16-row side on padding, so the roles are swapped ("swap AB"): a
  program computes ``out^T[BLOCK_N, 16] = deq(w)[BLOCK_N, BLOCK_K] @ x^T[BLOCK_K, 16]``
  so that the weight fills the MMA's M side and x, at most 16 rows, is the
  narrow N side. Narrow N tiles (16..128) give at least one wave of
  programs on 132 SMs at N = 4096..11008 without split-K, and deep K tiles with
  4-5 stages keep enough weight bytes in flight. Rows of x past M are masked,
  so M = 1 reads one row.
* M > 16 is a plain tiled GEMM with the weight tile loaded as ``w^T`` and
  program ids swizzled in groups of ``GROUP_M`` row tiles (L2 reuse of the
  weight tiles), as in the Triton matmul tutorial.
* Masks everywhere (M, N, K tails); ``EVEN_K`` drops the K mask when the tile
  divides K. Every stride of x, w and scale reaches the kernel, so sliced or
  transposed views are read in place; row offsets are int64.
* Autotuning: a short curated list per path (fp32 x has its own small-K
  tiles for the FMA dot), keyed on (M bucket, N, K, grouped, group size) and
  the dtypes; the M bucket is M rounded up to a power of two (at
  most 4096) and prunes the candidates. ``M`` itself is not specialized
  (``do_not_specialize``), so a new batch size neither recompiles nor retunes
  within its bucket. Under ``TRITON_INTERPRET=1`` (CPU tests) there is one
  small fixed tile per path and no autotuning.

NOTE: the first call per key benchmarks its candidates; warm up before
capturing a CUDA graph.

References: the Triton tutorial ``03-matrix-multiplication.py`` (grouped
ordering, autotune); the "swap AB" arrangement for skinny GEMMs as used by
TensorRT-LLM/CUTLASS weight-only GEMMs; gpt-fast ``quantize.py`` for the int8
weight-only scheme (per-channel scales in nn.Linear layout).
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
    along_n,
    config,
    device_guard,
    dot,
    even_k,
    launch_meta,
    m_bucket,
    store_tile,
    tile_grid,
)
from slimops.kernels._tiles import autotune


# M at or below this takes the swap-AB (decode) path; BLOCK_M there is this value
# (tl.dot needs every dimension >= 16).
_SMALL_M = 16
# Row tiles per swizzle group (L2 reuse of weight tiles across neighbouring programs).
_GROUP_M = 8

# Decode (M <= 16): (BLOCK_N, BLOCK_K, num_warps, num_stages). BLOCK_M is 16.
# BLOCK_N 16/32 give 256/128 programs at N = 4096 and 688/344 at N = 11008;
# BLOCK_K 128..512 with 3-5 stages keep 16-64 KB of weight in flight per program.
_DECODE_CONFIGS = [
    config(16, 16, 512, warps=4, stages=4),
    config(16, 32, 256, warps=4, stages=5),
    config(16, 32, 512, warps=4, stages=4),
    config(16, 64, 128, warps=4, stages=5),
    config(16, 64, 256, warps=4, stages=4),
    config(16, 128, 128, warps=4, stages=4),
    config(16, 64, 512, warps=8, stages=3),
]

# M > 16: (config, smallest M bucket, largest M bucket) it is a candidate for.
_GEMM_CONFIG_TABLE = BucketTable([
    (config(32, 64, 128, warps=4, stages=4), 32, 64),
    (config(32, 128, 128, warps=4, stages=4), 32, 64),
    (config(64, 64, 128, warps=4, stages=4), 64, 512),
    (config(64, 128, 64, warps=4, stages=4), 64, MAX_M_BUCKET),
    (config(128, 128, 64, warps=8, stages=4), 128, MAX_M_BUCKET),
    (config(128, 256, 64, warps=8, stages=3), 256, MAX_M_BUCKET),
])

# M > 16 with fp32 x: the "ieee" dot runs on FMA units and holds a BLOCK_K slab of both
# operands per thread, so only small K tiles stay out of local-memory spills.
_GEMM_IEEE_CONFIGS = [
    config(32, 64, 32, warps=4, stages=3),
    config(64, 64, 16, warps=4, stages=3),
]

# Interpreter tiles: small; BLOCK_K = 32 exercises every grouped mode with small test
# shapes (group 32, 64, 96 -> one scale per tile; 8, 16 -> broadcast; 24, 48 -> gather).
_INTERPRET_META = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}


def _gathers_scales(config: triton.Config, grouped: bool, group_size: int) -> bool:
    """Whether the kernel takes the per-element scale gather for this tile (see the docstring)."""
    bk = config.kwargs["BLOCK_K"]
    return grouped and group_size % bk != 0 and bk % group_size != 0


def _cap_gather_stages(configs, kwargs):
    # The gathered scales are a [BLOCK_N, BLOCK_K] tile per stage (4 bytes per weight
    # for fp32 scales): more than two stages overflow shared memory.
    out = []
    for c in configs:
        if _gathers_scales(c, kwargs["GROUPED"], kwargs["GROUP_SIZE"]) and c.num_stages > 2:
            c = triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=2)
        out.append(c)
    return out


def _prune_decode_configs(configs, named_args, **kwargs):
    return _cap_gather_stages(configs, kwargs)


def _prune_gemm_configs(configs, named_args, **kwargs):
    if kwargs["IEEE_DOT"]:
        return _cap_gather_stages(_GEMM_IEEE_CONFIGS, kwargs)
    return _cap_gather_stages(_GEMM_CONFIG_TABLE.for_bucket(configs, named_args["M_BUCKET"]), kwargs)


@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _weight_int8_linear_kernel(
    x_ptr,  # [M, K] float, any strides
    w_ptr,  # [N, K] int8, any strides
    s_ptr,  # [N, G] float scales (G = 1 per channel), any strides
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
    stride_sn,
    stride_sg,
    HAS_BIAS: tl.constexpr,
    GROUPED: tl.constexpr,  # scale is [N, G] with G > 1
    GROUP_SIZE: tl.constexpr,  # K // G when GROUPED, else 1
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
        # Grouped ordering: GROUP_M row tiles share each weight column tile in L2.
        # NOTE: _gemm.grouped_tile written out: calling it leaves the PTX the same but its
        # inlined-scope line info changes ptxas's schedule (the gather-mode tiles).
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_pid_in_group = GROUP_M * num_pid_n
        first_pid_m = (pid // num_pid_in_group) * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
        pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = offs_m.to(tl.int64) * stride_xm
    w_rows = offs_n.to(tl.int64) * stride_wn
    s_rows = offs_n.to(tl.int64) * stride_sn

    if SWAP_AB:
        # w [BLOCK_N, BLOCK_K] and x^T [BLOCK_K, BLOCK_M]; acc is out^T.
        w_ptrs = w_ptr + w_rows[:, None] + offs_k[None, :] * stride_wk
        x_ptrs = x_ptr + offs_k[:, None] * stride_xk + x_rows[None, :]
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        # x [BLOCK_M, BLOCK_K] and w^T [BLOCK_K, BLOCK_N].
        x_ptrs = x_ptr + x_rows[:, None] + offs_k[None, :] * stride_xk
        w_ptrs = w_ptr + offs_k[:, None] * stride_wk + w_rows[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)

    for k0 in range(0, K, BLOCK_K):
        # Loads are masked along M and N; along K only when BLOCK_K does not divide K.
        if EVEN_K:
            k_mask = offs_k < BLOCK_K  # all true; only the gather-mode scale load reads it
            if SWAP_AB:
                w = tl.load(w_ptrs, mask=n_mask[:, None], other=0)
                x = tl.load(x_ptrs, mask=m_mask[None, :], other=0.0)
            else:
                x = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
                w = tl.load(w_ptrs, mask=n_mask[None, :], other=0)
        else:
            k_mask = offs_k < K - k0
            if SWAP_AB:
                w = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0)
                x = tl.load(x_ptrs, mask=k_mask[:, None] & m_mask[None, :], other=0.0)
            else:
                x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
                w = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0)

        if not GROUPED:
            # Exact integers in the dot; scale[n] multiplies the accumulator in the epilogue.
            if SWAP_AB:
                acc = dot(w.to(dot_ty), x, acc, IEEE_DOT)
            else:
                acc = dot(x, w.to(dot_ty), acc, IEEE_DOT)
        elif GROUP_SIZE % BLOCK_K == 0:
            # The whole K tile lies in group k0 // GROUP_SIZE: one scale per output channel.
            s = tl.load(s_ptr + s_rows + (k0 // GROUP_SIZE) * stride_sg, mask=n_mask, other=0.0).to(tl.float32)
            if SWAP_AB:
                part = dot(w.to(dot_ty), x, tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), IEEE_DOT)
            else:
                part = dot(x, w.to(dot_ty), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE_DOT)
            acc += part * along_n(s, SWAP_AB)
        elif BLOCK_K % GROUP_SIZE == 0:
            # BLOCK_K // GROUP_SIZE whole groups per K tile (power-of-two group sizes below
            # BLOCK_K): load those few scales and broadcast each over its group in registers.
            g = k0 // GROUP_SIZE + tl.arange(0, BLOCK_K // GROUP_SIZE)
            g_mask = g * GROUP_SIZE < K
            if SWAP_AB:
                s_mask = n_mask[:, None] & g_mask[None, :]
                s = tl.load(s_ptr + s_rows[:, None] + g[None, :] * stride_sg, mask=s_mask, other=0.0)
                s = tl.broadcast_to(s.to(tl.float32)[:, :, None], (BLOCK_N, BLOCK_K // GROUP_SIZE, GROUP_SIZE))
                s = tl.reshape(s, (BLOCK_N, BLOCK_K))
                acc = dot((w.to(tl.float32) * s).to(dot_ty), x, acc, IEEE_DOT)
            else:
                s_mask = g_mask[:, None] & n_mask[None, :]
                s = tl.load(s_ptr + g[:, None] * stride_sg + s_rows[None, :], mask=s_mask, other=0.0)
                s = tl.broadcast_to(s.to(tl.float32)[:, None, :], (BLOCK_K // GROUP_SIZE, GROUP_SIZE, BLOCK_N))
                s = tl.reshape(s, (BLOCK_K, BLOCK_N))
                acc = dot(x, (w.to(tl.float32) * s).to(dot_ty), acc, IEEE_DOT)
        else:
            # Any other group size (not a power of two): gather each weight's scale.
            g = ((k0 + offs_k) // GROUP_SIZE) * stride_sg
            if SWAP_AB:
                s = tl.load(s_ptr + s_rows[:, None] + g[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
                acc = dot((w.to(tl.float32) * s.to(tl.float32)).to(dot_ty), x, acc, IEEE_DOT)
            else:
                s = tl.load(s_ptr + g[:, None] + s_rows[None, :], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
                acc = dot(x, (w.to(tl.float32) * s.to(tl.float32)).to(dot_ty), acc, IEEE_DOT)

        w_ptrs += BLOCK_K * stride_wk
        x_ptrs += BLOCK_K * stride_xk

    # Epilogue in fp32: per-channel scale, bias, then one rounding to x.dtype.
    if not GROUPED:
        acc = acc * along_n(tl.load(s_ptr + s_rows, mask=n_mask, other=0.0).to(tl.float32), SWAP_AB)
    if HAS_BIAS:
        acc += along_n(tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32), SWAP_AB)
    store_tile(out_ptr, acc, offs_m, offs_n, m_mask, n_mask, N, SWAP_AB)


_kernel = even_k(_weight_int8_linear_kernel)

if INTERPRET or NO_AUTOTUNE:
    _decode_kernel = _gemm_kernel = _kernel
else:
    # Triton adds the tensor dtypes to the key.
    _AUTOTUNE_KEY = ["M_BUCKET", "N", "K", "GROUPED", "GROUP_SIZE"]
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


def _first_config(swap: bool, bucket: int, grouped: bool, group_size: int, ieee: bool) -> triton.Config:
    """The config the autotuner would try first."""
    kw = {"GROUPED": grouped, "GROUP_SIZE": group_size, "IEEE_DOT": ieee}
    if swap:
        return _prune_decode_configs(_DECODE_CONFIGS, {}, **kw)[0]
    return _prune_gemm_configs(_GEMM_CONFIG_TABLE.configs, {"M_BUCKET": bucket}, **kw)[0]


def weight_int8_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """W8A16 linear: ``x @ (weight * scale)^T + bias`` with the weight dequantized in registers.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``; any strides (the leading dims
            are flattened to rows, as a view whenever the strides allow one).
        weight: int8 ``[N, K]`` (``nn.Linear`` layout); any strides.
        scale: float ``[N]`` / ``[N, 1]`` (per output channel) or ``[N, G]`` (per
            group of ``K / G`` consecutive inputs; any G that divides K).
        bias: optional float ``[N]``.

    Returns:
        ``[..., N]`` in ``x.dtype`` (contiguous): fp32 accumulation, rounded once.

    NOTE: the arguments are trusted: ``torch.ops.slimops.weight_int8_linear`` checks them (in C++) before calling this.
    """
    k, n = x.shape[-1], weight.shape[0]
    m = math.prod(x.shape[:-1])
    groups = scale.shape[1] if scale.dim() == 2 else 1
    out = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out

    x2 = x.reshape(m, k)  # [M, K]; a view whenever the leading dims allow one
    s2 = scale.reshape(n, -1)  # [N, G]; a view
    bias = bias.contiguous() if bias is not None else None  # the kernel reads bias[n] at stride 1
    # K == 0 has no weights to scale: every group size is moot, take the per-channel path.
    grouped = groups > 1 and k > 0
    swap = m <= _SMALL_M
    bucket = m_bucket(m)
    kernel = _decode_kernel if swap else _gemm_kernel
    group_size = k // groups if grouped else 1
    ieee = x.dtype == torch.float32
    meta = launch_meta(_INTERPRET_META, lambda: _first_config(swap, bucket, grouped, group_size, ieee))
    with device_guard(x):
        kernel[tile_grid(m, n)](
            x2,
            weight,
            s2,
            bias if bias is not None else s2,  # placeholder pointer when absent
            out,
            m,
            n,
            k,
            bucket,
            x2.stride(0),
            x2.stride(1),
            weight.stride(0),
            weight.stride(1),
            s2.stride(0),
            s2.stride(1),
            HAS_BIAS=bias is not None,
            GROUPED=grouped,
            GROUP_SIZE=group_size,
            IEEE_DOT=ieee,
            SWAP_AB=swap,
            GROUP_M=_GROUP_M,
            **meta,
        )
    return out
