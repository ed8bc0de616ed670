"""Run a function on N CPU processes joined by a gloo process group: how every distributed test starts.

The group meets through a file in a temporary folder (``file://`` init), so no TCP port is
picked and none can be taken by a test running beside it. Each rank's return value comes back
to the test through ``torch.save`` in that folder.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, world: int, folder: str, fn, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(folder, f"rank{rank}.pt"))


def spawn(fn, world: int, *args) -> list:
    """``fn(rank, world, *args)`` on ``world`` spawned processes; returns each rank's result, by rank.

    ``fn`` must be a module-level function (spawn pickles it by name). A rank that raises
    fails the test with its traceback.
    """
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_rank_main, args=(world, folder, fn, args), nprocs=world, start_method="spawn")
        return [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False) for r in range(world)]
