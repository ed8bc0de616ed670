"""Tile bookkeeping shared by the Triton GEMMs in this folder."""

from __future__ import annotations

import triton
import triton.language as tl


def m_bucket(m: int, cap: int, floor: int = 1) -> int:
    """M rounded up to a power of two in [floor, cap]: the autotune key, so that every
    batch size in a bucket shares one tuned config and no new M recompiles."""
    return min(max(floor, triton.next_power_of_2(max(m, 1))), cap)


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
