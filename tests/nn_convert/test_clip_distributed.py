"""slimops.clip_grad_norm_ on DTensor-sharded gradients (FSDP2 style), gloo, 2 processes on CPU."""

from __future__ import annotations

import math

import pytest
import torch

import slimops
from tests.distributed.launch import spawn

WORLD = 2


NORM_TYPES = [2.0, 1.0, math.inf]


def _worker(rank: int, world: int) -> dict:
    # All the norm types in one pair of processes: starting them costs more than the checks.
    return {norm_type: _check(norm_type) for norm_type in NORM_TYPES}


def _check(norm_type: float):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    torch.manual_seed(0)  # every rank builds the same full gradients
    full = [torch.randn(6, 5), torch.randn(9), torch.randn(4, 3) * 10, torch.randn(7, 2)]
    placements = [[Shard(0)], [Shard(0)], [Shard(1)], [Replicate()]]
    params = []
    for g, pl in zip(full, placements):
        p = torch.nn.Parameter(distribute_tensor(torch.zeros_like(g), mesh, pl))
        p.grad = distribute_tensor(g.clone(), mesh, pl)
        params.append(p)
    total = slimops.clip_grad_norm_(params, 1.0, norm_type)

    ref_params = [torch.nn.Parameter(torch.zeros_like(g)) for g in full]
    for p, g in zip(ref_params, full):
        p.grad = g.clone()
    want = torch.nn.utils.clip_grad.clip_grad_norm_(ref_params, 1.0, norm_type)
    ok_norm = torch.allclose(total, want, rtol=1e-6, atol=0)
    ok_grads = all(
        torch.allclose(p.grad.full_tensor(), q.grad, rtol=1e-6, atol=1e-7) for p, q in zip(params, ref_params)
    )
    return ok_norm, ok_grads, float(total), float(want)


@pytest.fixture(scope="module")
def results():
    return spawn(_worker, WORLD)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_sharded_gradients_match_the_unsharded_norm(results, norm_type):
    for rank in range(WORLD):
        ok_norm, ok_grads, got, want = results[rank][norm_type]
        assert ok_norm, f"rank {rank}: norm {got} != {want}"
        assert ok_grads, f"rank {rank}: clipped shards differ from the unsharded clip"
