"""Triton kernel for ``slimops::block_sparse_linear``: a linear layer whose weight is stored as BSR tiles.

The specification is :func:`slimops.reference.sparse.block_sparse_linear`::

    out[m, r*BN + i] = to(x.dtype, sum_{t in row_ptr[r] .. row_ptr[r+1]-1} sum_j
                          x[m, col_idx[t]*BK + j] * values[t, i, j]  + bias[r*BN + i])

with ``x [..., K]`` float (leading dims flattened to M rows), ``values [nnz, BN, BK]``
(the kept ``BN x BK`` tiles of the ``[N, K]`` weight in row-major tile order,
x's dtype; contiguous as packed, though any strides are read),
``row_ptr int32 [N/BN + 1]`` and ``col_idx int32 [nnz]``, as built by
:func:`slimops.reference.sparse.block_sparse_pack`. fp32 accumulation and one
rounding.

Design, and why:

* Only stored tiles are read and multiplied. One program owns one block row
  ``r`` (``BN`` outputs) for one tile of M rows and walks that row's tiles
  ``row_ptr[r] .. row_ptr[r+1]``: for each, it loads the ``BN x BK`` values
  tile (``BN * BK`` contiguous elements as packed) and the ``x`` columns
  ``col_idx[t] * BK ..`` it multiplies, and accumulates with ``tl.dot``. Bytes
  and FLOPs both scale with the number of stored tiles, so time falls with
  density. A block row with no tiles stores the bias (or zeros).
* ``BN`` and ``BK`` are the tile shape of the format (16, 32, 64 or 128 each)
  and are compile-time constants; every tile is whole, so no load is masked
  along N or K, only along M.
* Decode (M <= 16) is memory bound on the stored tiles. The roles are swapped
  as in :mod:`slimops.kernels.weight_int8`: a program computes
  ``out^T[BN, 16] = values[t] [BN, BK] @ x^T[BK, 16]`` so that the weight
  tile sits on the MMA's M side; ``BLOCK_M = 16`` and one program per block
  row (``N / BN`` programs: 64 at N = 4096 with BN = 64, 172 at N = 11008),
  each keeping 2-4 tiles in flight through the software pipeline.
* M > 16 is compute bound at high density: ``BLOCK_M`` 32..256 rows of x per
  program and one block row; program ids are swizzled in groups of
  ``GROUP_M`` M tiles so that programs running together read the same block
  row's tiles from L2. A plain ``[BLOCK_M, BN]`` tile puts only ``BN`` (64
  for the usual 64 x 64 blocks) on the MMA's N side, so the autotuner also
  gets swapped candidates (``out^T[BN, BLOCK_M]``: wgmma m64n128 / m64n256)
  when ``BN >= 64``; which one wins is for the GPU to say.
* The loop walks pointers (values advance by one tile, the column index by
  one), so the trip count is data-dependent but the addresses are plain
  increments and the ``col_idx`` load is one scalar per tile: Triton's
  pipeliner issues it a stage ahead of the ``x`` load it feeds (hence the
  extra stages in the config lists).
* Malformed indices cannot make the kernel read out of bounds: ``row_ptr``
  is clamped to ``[0, nnz]`` and an ``x`` tile whose ``col_idx`` is outside
  ``[0, K / BK)`` reads as zeros. Checking the index contents on the host
  would need a device sync on every call; :func:`block_sparse_pack` builds
  them right.
* fp32 x takes ``input_precision="ieee"`` (FMA units), with each tile's dot
  split into K steps of 32 (``SUB_K``): a whole 128-wide tile per FMA dot
  spills registers. Offsets along M and into the tiles are int64.
* Autotuning: a short list per path, pruned by the M bucket (M rounded up to a
  power of two, at most 4096) and by shared memory (stages are cut until
  ``(stages - 1) * (BLOCK_M + BN) * BK * bytes`` fits 200 KB), keyed on the M
  bucket, N, K, BN, BK and the dtypes. ``M`` is not specialized, so a new
  batch size neither recompiles nor retunes within its bucket. Under
  ``TRITON_INTERPRET=1`` there is one fixed tile per path and no autotuning;
  ``SLIMOPS_TRITON_AUTOTUNE=0`` takes the first candidate left after pruning.

NOTE: the first call per key benchmarks its candidates; warm up before
capturing a CUDA graph.

References: the Triton tutorial ``03-matrix-multiplication.py`` (grouped
ordering, autotune); Gray, Radford and Kingma, "GPU Kernels for Block-Sparse
Weights" (OpenAI, 2017) and ``torch.sparse_bsr_tensor`` for the BSR layout.
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
    config_id,
    device_guard,
    dot,
    grouped_tile,
    launch_meta,
    m_bucket,
    store_tile,
    tile_grid,
)
from slimops.kernels._tiles import autotune


# M at or below this takes the swap-AB (decode) path with BLOCK_M = 16
# (tl.dot needs every dimension >= 16).
_SMALL_M = 16
# M tiles per swizzle group (L2 reuse of a block row's tiles across neighbouring programs).
_GROUP_M = 8
# Shared memory the pipeline buffers may take (H100/H200 allow 227 KB per block).
_SMEM_BUDGET = 200 * 1024


def _cfg(block_m: int, swap: bool, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "SWAP_AB": swap}, num_warps=warps, num_stages=stages)


# NOTE on stages: the x load depends on a loaded column index, so Triton's pipeliner
# puts that index load one stage ahead and keeps num_stages - 2 tile buffers (3 at most
# in the sm_90a TTGIR of triton 3.9): these lists ask for more stages than a plain GEMM.
# Every config here compiles for sm_90a without register spills at every BN x BK.

# Decode (M <= 16): BLOCK_M is 16 and one program per block row, so only the
# pipeline depth and the warps vary. A 64 x 64 bf16 tile is 8 KB.
_DECODE_CONFIGS = [
    _cfg(16, True, warps=4, stages=5),
    _cfg(16, True, warps=4, stages=4),
    _cfg(16, True, warps=8, stages=5),
    _cfg(16, True, warps=8, stages=4),
]

# M > 16, fp16/bf16: (config, smallest M bucket, largest M bucket) it is a candidate for.
# At 64 x 64 tiles a stage is (BLOCK_M + 64) * 64 * 2 bytes: 24 KB at BLOCK_M = 128.
# The SWAP_AB candidates put the values tile on the MMA's M side and x^T on its wide
# N side (wgmma m64n128 / m64n256 for BN = 64 instead of m64n64); they need BN >= 64.
_GEMM_CONFIG_TABLE = BucketTable([
    (_cfg(32, False, warps=4, stages=5), 32, 64),
    (_cfg(64, False, warps=4, stages=5), 32, 512),
    (_cfg(128, False, warps=8, stages=5), 128, MAX_M_BUCKET),
    (_cfg(128, False, warps=4, stages=5), 128, MAX_M_BUCKET),
    (_cfg(128, True, warps=4, stages=5), 128, MAX_M_BUCKET),
    (_cfg(256, False, warps=8, stages=4), 512, MAX_M_BUCKET),
    (_cfg(256, True, warps=8, stages=4), 512, MAX_M_BUCKET),
])

# M > 16 with fp32 x (FMA dot, K split in _IEEE_SUB_K steps): few rows per program,
# 8 warps (4 spill at BN = 128).
_GEMM_IEEE_CONFIGS = [
    _cfg(32, False, warps=8, stages=4),
    _cfg(64, False, warps=8, stages=4),
]

# fp32 dots are split into K steps of this size: the FMA dot holds a K slab of both
# operands per thread, and a whole 128-wide tile spills.
_IEEE_SUB_K = 32

# Interpreter tiles: BLOCK_M 16 on the decode path (as on a GPU), 32 on the GEMM
# path so that M = 17..123 leaves partial M tiles.
_INTERPRET_DECODE_META = {"BLOCK_M": 16, "SWAP_AB": True, "num_warps": 4, "num_stages": 1}
_INTERPRET_GEMM_META = {"BLOCK_M": 32, "SWAP_AB": False, "num_warps": 4, "num_stages": 1}


def _fit_smem(configs, kwargs, elem_bytes: int):
    """Keep the configs whose pipeline fits the budget, cutting stages (to 3 at least) where needed.

    Modelled as ``stages - 1`` buffers of ``(BLOCK_M + BN) * BK`` elements: one more
    than the pipeliner allocates, which leaves room for the dot's operand copies.
    """
    bn, bk = kwargs["BLOCK_N"], kwargs["BLOCK_K"]
    out = []
    for c in configs:
        if c.kwargs["SWAP_AB"] and c.kwargs["BLOCK_M"] > _SMALL_M and bn < 64:
            continue  # a values tile under 64 rows cannot fill a wgmma's M side
        per_stage = (c.kwargs["BLOCK_M"] + bn) * bk * elem_bytes
        stages = c.num_stages
        while stages > 3 and (stages - 1) * per_stage > _SMEM_BUDGET:
            stages -= 1
        if (stages - 1) * per_stage > _SMEM_BUDGET:
            continue  # even the shallowest pipeline does not fit: drop the tile
        cfg = triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=stages)
        if config_id(cfg) not in {config_id(o) for o in out}:
            out.append(cfg)
    return out


def _elem_bytes(named_args) -> int:
    return named_args["x_ptr"].element_size() if "x_ptr" in named_args else 2


def _prune_decode_configs(configs, named_args, **kwargs):
    return _fit_smem(configs, kwargs, _elem_bytes(named_args))


def _prune_gemm_configs(configs, named_args, **kwargs):
    if kwargs["IEEE_DOT"]:
        return _fit_smem(_GEMM_IEEE_CONFIGS, kwargs, 4)
    kept = _GEMM_CONFIG_TABLE.for_bucket(configs, named_args["M_BUCKET"])
    return _fit_smem(kept, kwargs, _elem_bytes(named_args))


@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _block_sparse_linear_kernel(
    x_ptr,  # [M, K] float, any strides
    v_ptr,  # [nnz, BLOCK_N, BLOCK_K] x's dtype, any strides (contiguous from the packer)
    row_ptr_ptr,  # [N / BLOCK_N + 1] int32
    col_ptr,  # [nnz] int32
    b_ptr,  # [N] float bias (read only when HAS_BIAS)
    s_ptr,  # [N] fp32 per-row scale of int8 values (read only when HAS_SCALE)
    out_ptr,  # [M, N] x.dtype, contiguous
    M,
    N,
    K,
    NNZ,
    M_BUCKET,  # only the autotune key and config pruning read it
    stride_xm,
    stride_xk,
    stride_vt,
    stride_vn,
    stride_vk,
    stride_rp,
    stride_ci,
    stride_b,
    stride_s,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr,  # int8 values (block_sparse_int8_linear): converted in registers, scaled per row
    IEEE_DOT: tl.constexpr,  # x is fp32
    SWAP_AB: tl.constexpr,  # the program's tile is out^T [BLOCK_N, BLOCK_M] (always at decode)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  # the format's tile height (BN)
    BLOCK_K: tl.constexpr,  # the format's tile width (BK)
    SUB_K: tl.constexpr,  # K step of one dot: BLOCK_K, or less for the fp32 FMA dot
    GROUP_M: tl.constexpr,
):
    num_rows = N // BLOCK_N
    if SWAP_AB:
        pid_r = tl.program_id(0)
        pid_m = tl.program_id(1)
    else:
        # Grouped ordering: GROUP_M M tiles run down one block row before moving on.
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        pid_m, pid_r = grouped_tile(pid, num_pid_m, num_rows, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)  # within the block row
    offs_k = tl.arange(0, SUB_K)  # within a tile
    m_mask = offs_m < M
    x_rows = offs_m.to(tl.int64) * stride_xm

    # Clamped, so that a malformed row_ptr cannot send the loop past the stored tiles.
    start = tl.minimum(tl.maximum(tl.load(row_ptr_ptr + pid_r * stride_rp), 0), NNZ)
    end = tl.minimum(tl.maximum(tl.load(row_ptr_ptr + (pid_r + 1) * stride_rp), start), NNZ)
    num_col_tiles = K // BLOCK_K
    v_first = v_ptr + start.to(tl.int64) * stride_vt
    v_rows = offs_n.to(tl.int64) * stride_vn
    v_cols = offs_k.to(tl.int64) * stride_vk
    c_ptrs = col_ptr + start.to(tl.int64) * stride_ci

    if SWAP_AB:
        # values[t] [BLOCK_N, SUB_K] and x^T [SUB_K, BLOCK_M]; acc is out^T.
        v_ptrs = v_first + v_rows[:, None] + v_cols[None, :]
        x_ptrs = x_ptr + offs_k.to(tl.int64)[:, None] * stride_xk + x_rows[None, :]
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        # x [BLOCK_M, SUB_K] and values[t]^T [SUB_K, BLOCK_N].
        x_ptrs = x_ptr + x_rows[:, None] + offs_k.to(tl.int64)[None, :] * stride_xk
        v_ptrs = v_first + v_cols[:, None] + v_rows[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)

    for _ in range(start, end):
        col = tl.load(c_ptrs)
        # An out-of-range tile column reads as zeros instead of out of bounds.
        # NOTE: the check is made on an M vector: the interpreter cannot load under a
        # mask built from a loaded scalar bool.
        cols_m = col + tl.zeros_like(offs_m)
        x_in = m_mask & (cols_m >= 0) & (cols_m < num_col_tiles)
        x_off = col.to(tl.int64) * (BLOCK_K * stride_xk)
        for kk in tl.static_range(0, BLOCK_K, SUB_K):
            # int8 tiles become x's dtype here, in registers (exact: |q| <= 127); a no-op for float tiles
            v = tl.load(v_ptrs + kk * stride_vk).to(x_ptr.dtype.element_ty)
            if SWAP_AB:
                xt = tl.load(x_ptrs + (x_off + kk * stride_xk), mask=x_in[None, :], other=0.0)
                acc = dot(v, xt, acc, IEEE_DOT)
            else:
                xt = tl.load(x_ptrs + (x_off + kk * stride_xk), mask=x_in[:, None], other=0.0)
                acc = dot(xt, v, acc, IEEE_DOT)
        v_ptrs += stride_vt
        c_ptrs += stride_ci

    # Epilogue in fp32: bias, then one rounding to x.dtype. N is whole block rows: no N mask.
    cols = pid_r * BLOCK_N + offs_n
    if HAS_SCALE:
        acc *= along_n(tl.load(s_ptr + cols * stride_s), SWAP_AB)
    if HAS_BIAS:
        acc += along_n(tl.load(b_ptr + cols * stride_b).to(tl.float32), SWAP_AB)
    store_tile(out_ptr, acc, offs_m, cols, m_mask, None, N, SWAP_AB)


if INTERPRET or NO_AUTOTUNE:
    _decode_kernel = _gemm_kernel = _block_sparse_linear_kernel
else:
    # Triton adds the tensor dtypes to the key.
    _AUTOTUNE_KEY = ["M_BUCKET", "N", "K", "BLOCK_N", "BLOCK_K", "SUB_K"]
    _decode_kernel = autotune(
        configs=_DECODE_CONFIGS,
        key=_AUTOTUNE_KEY,
        prune_configs_by={"early_config_prune": _prune_decode_configs},
    )(_block_sparse_linear_kernel)
    _gemm_kernel = autotune(
        configs=_GEMM_CONFIG_TABLE.configs,
        key=_AUTOTUNE_KEY,
        prune_configs_by={"early_config_prune": _prune_gemm_configs},
    )(_block_sparse_linear_kernel)


def block_sparse_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x W^T + bias`` for a weight stored as BSR tiles, reading only the stored tiles.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``; any strides (the leading dims
            are flattened to rows, as a view whenever the strides allow one).
        values: ``[nnz, BN, BK]`` in x's dtype: the stored tiles in row-major
            tile order; BN and BK each 16, 32, 64 or 128, BK dividing K. Any
            strides; contiguous (as packed) is the fast layout.
        row_ptr: int32 ``[N / BN + 1]``: block row ``r`` owns tiles
            ``row_ptr[r] .. row_ptr[r+1] - 1``.
        col_idx: int32 ``[nnz]``: the tile column of each stored tile (input
            columns ``col_idx[t] * BK ..``).
        bias: optional float ``[N]``, added in fp32.

    Returns:
        ``[..., N]`` in ``x.dtype`` (contiguous), ``N = (row_ptr.numel() - 1) * BN``:
        fp32 accumulation, rounded once.

    NOTE: the arguments are trusted: ``torch.ops.slimops.block_sparse_linear`` checks them (in C++) before calling this.
    """
    return launch(x, values, row_ptr, col_idx, None, bias)


def launch(
    x: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """The one launcher of the BSR kernel: float tiles (``scale`` None) or int8 tiles with fp32 ``scale [N]``
    (:mod:`slimops.kernels.block_sparse_int8`). Arguments trusted, as above."""
    k, n = x.shape[-1], (row_ptr.shape[0] - 1) * values.shape[1]
    m = math.prod(x.shape[:-1])
    out = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out

    nnz, bn, bk = values.shape
    if nnz == 0:  # no stored tile: every block row is empty (and the empty arrays need not have storage)
        if scale is not None:
            # as the kernel's epilogue: 0 * scale (NaN for a non-finite scale, as in the reference), then the bias
            fill = torch.zeros(n, dtype=torch.float32, device=x.device) * scale
            return out.copy_((fill if bias is None else fill + bias.float()).expand_as(out))
        return out.copy_(bias.expand_as(out)) if bias is not None else out.zero_()
    x2 = x.reshape(m, k)  # [M, K]; a view whenever the leading dims allow one
    decode = m <= _SMALL_M
    bucket = m_bucket(m)
    ieee = x.dtype == torch.float32
    consts = {"BLOCK_N": bn, "BLOCK_K": bk, "IEEE_DOT": ieee, "SUB_K": min(bk, _IEEE_SUB_K) if ieee else bk}
    kernel = _decode_kernel if decode else _gemm_kernel

    def first():
        named = {"x_ptr": x2, "M_BUCKET": bucket}
        if decode:
            return _prune_decode_configs(_DECODE_CONFIGS, named, **consts)[0]
        return _prune_gemm_configs(_GEMM_CONFIG_TABLE.configs, named, **consts)[0]

    meta = launch_meta(_INTERPRET_DECODE_META if decode else _INTERPRET_GEMM_META, first)
    with device_guard(x):
        # BLOCK_N is the format's BN: one program row per block row, swapped or not as the config says.
        kernel[tile_grid(m, n)](
            x2,
            values,
            row_ptr,
            col_idx,
            bias if bias is not None else values,  # placeholder pointer when absent
            scale if scale is not None else values,
            out,
            m,
            n,
            k,
            nnz,
            bucket,
            x2.stride(0),
            x2.stride(1),
            values.stride(0),
            values.stride(1),
            values.stride(2),
            row_ptr.stride(0),
            col_idx.stride(0),
            bias.stride(0) if bias is not None else 0,
            scale.stride(0) if scale is not None else 0,
            HAS_BIAS=bias is not None,
            HAS_SCALE=scale is not None,
            GROUP_M=_GROUP_M,
            **consts,
            **meta,
        )
    return out
