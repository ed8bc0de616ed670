"""What the GEMM-like Triton kernels in this folder share, on the host and in the kernels.

Host side (used by the launchers and the autotuners):

* the environment switches (``TRITON_INTERPRET``, ``SLIMOPS_TRITON_AUTOTUNE``) and
  :func:`launch_meta`, the meta-parameters a launch passes under each of them;
* :func:`m_bucket`, the M bucket that keys autotuning and prunes the candidates;
* :func:`config`, :func:`config_id` and :class:`BucketTable`, the config tables
  and their pruning by M bucket;
* :func:`tile_grid`, the launch grid (swap-AB or grouped), and the
  :data:`even_k` heuristic;
* :func:`device_guard`: Triton launches on the current CUDA device.

Kernel side (``@triton.jit`` helpers, inlined into the kernels that call them):

* :func:`grouped_tile`, the Triton matmul tutorial's grouped program ordering;
* :func:`dot`: ``tl.dot`` with ``input_precision="ieee"`` for fp32 operands;
* the epilogue: :func:`along_n` (a per-output-channel vector over the tile),
  :func:`out_mask` and :func:`store_tile`.

NOTE: a call to one of these helpers in place of the same lines written out
gives the same PTX, but not always the same SASS: the helper's inlined scope
carries its own line info, and ptxas schedules around it. The kernels call a
helper only where their SASS on sm_90 stayed the same; where it did not, the
lines stay written out (each such place says so).

"Swap AB" (decode, small M): the program computes ``out^T [BLOCK_N, BLOCK_M] =
w [BLOCK_N, BLOCK_K] @ x^T [BLOCK_K, BLOCK_M]`` so that the weight fills the
MMA's M side and the few rows of x its narrow N side; every helper that
depends on the orientation takes ``SWAP_AB``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch
import triton
import triton.language as tl

# ----------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# SLIMOPS_TRITON_AUTOTUNE=0 takes the first candidate left after pruning instead
# of timing them all: GPU tests set it, so they compile one config per shape class.
NO_AUTOTUNE = os.environ.get("SLIMOPS_TRITON_AUTOTUNE") == "0"

# M buckets stop here: beyond it the best tile no longer depends on M.
MAX_M_BUCKET = 4096


def m_bucket(m: int, floor: int = 1, cap: int = MAX_M_BUCKET) -> int:
    """M rounded up to a power of two in [floor, cap]: the autotune key, so that every
    batch size in a bucket shares one tuned config and no new M recompiles."""
    return min(max(floor, triton.next_power_of_2(max(m, 1))), cap)


def config(block_m: int, block_n: int, block_k: int, *, warps: int, stages: int) -> triton.Config:
    """A GEMM tile: ``BLOCK_M x BLOCK_N``, walking K in ``BLOCK_K`` steps."""
    return triton.Config(
        {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}, num_warps=warps, num_stages=stages
    )


def config_id(c: triton.Config) -> tuple:
    """A hashable identity of a config (``triton.Config`` compares, but pruning rebuilds configs)."""
    return (tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages)


def as_meta(c: triton.Config) -> dict:
    """A config as launch meta-parameters."""
    return dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)


class BucketTable:
    """Configs, each a candidate for a range of M buckets.

    Args:
        rows: ``(config, smallest M bucket, largest M bucket)`` triples.
    """

    def __init__(self, rows: list[tuple[triton.Config, int, int]]):
        self.configs = [c for c, _, _ in rows]
        self._range = {config_id(c): (lo, hi) for c, lo, hi in rows}

    def for_bucket(self, configs: list[triton.Config], bucket: int) -> list[triton.Config]:
        """The configs (of this table) whose range holds ``bucket``; all of them if none does."""
        kept = [c for c in configs if self._range[config_id(c)][0] <= bucket <= self._range[config_id(c)][1]]
        return kept or list(configs)


def launch_meta(interpret_meta: dict, first: Callable[[], triton.Config]) -> dict:
    """Meta-parameters for a launch: the interpreter's fixed tile under ``TRITON_INTERPRET=1``,
    the first candidate left after pruning (``first()``) under ``SLIMOPS_TRITON_AUTOTUNE=0``,
    otherwise none (the autotuner picks)."""
    if INTERPRET:
        return interpret_meta
    if NO_AUTOTUNE:
        return as_meta(first())
    return {}


# EVEN_K: the K tile divides K, so the kernel's K loads need no mask.
even_k = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})


def tile_grid(m: int, n: int):
    """The launch grid over an ``[m, n]`` output: ``(N tiles, M tiles)`` when the launch sets
    ``SWAP_AB`` (program ids ``(pid_n, pid_m)``), otherwise one axis of ``M tiles * N tiles``
    programs in :func:`grouped_tile` order."""

    def grid(meta):
        num_m = triton.cdiv(m, meta["BLOCK_M"])
        num_n = triton.cdiv(n, meta["BLOCK_N"])
        return (num_n, num_m) if meta.get("SWAP_AB", False) else (num_m * num_n,)

    return grid


def device_guard(where: torch.Tensor | torch.device):
    """Makes ``where``'s device current: Triton launches on the current CUDA device."""
    device = where.device if isinstance(where, torch.Tensor) else where
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# ----------------------------------------------------------------------------
# Kernel side: program order and the dot
# ----------------------------------------------------------------------------


@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """``(pid_m, pid_n)`` of program ``pid`` in grouped order: GROUP_M row tiles run down one
    column of tiles before moving right, so programs running together share their B tiles in
    L2 (the ordering of Triton's matmul tutorial)."""
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_rows = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def dot(a, b, acc, IEEE_DOT: tl.constexpr):
    """``acc + a @ b``; fp32 operands take ``input_precision="ieee"`` (TF32 would cost the
    accuracy a fp32 caller asked for)."""
    if IEEE_DOT:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


# ----------------------------------------------------------------------------
# Kernel side: epilogue
# ----------------------------------------------------------------------------


@triton.jit
def along_n(v, SWAP_AB: tl.constexpr):
    """A per-output-channel vector ``[BLOCK_N]`` laid along the tile's N axis."""
    if SWAP_AB:
        return v[:, None]
    else:
        return v[None, :]


@triton.jit
def out_mask(m_mask, n_mask, SWAP_AB: tl.constexpr):
    """The mask of an output tile in the tile's orientation; ``n_mask`` None: every column is in range."""
    if n_mask is None:
        if SWAP_AB:
            return m_mask[None, :]
        else:
            return m_mask[:, None]
    else:
        if SWAP_AB:
            return n_mask[:, None] & m_mask[None, :]
        else:
            return m_mask[:, None] & n_mask[None, :]


@triton.jit
def store_tile(out_ptr, acc, offs_m, offs_n, m_mask, n_mask, stride_om, SWAP_AB: tl.constexpr):
    """Stores the fp32 tile ``acc`` (out^T with ``SWAP_AB``) into ``out [M, N]`` (unit column
    stride, row stride ``stride_om``), rounded once to the output dtype, under
    :func:`out_mask`. Row offsets are int64."""
    if SWAP_AB:
        out_ptrs = out_ptr + offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None]
    else:
        out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask(m_mask, n_mask, SWAP_AB))
