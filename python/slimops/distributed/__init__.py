"""slimops under ``torch.distributed``: DDP, FSDP2 (``fully_shard``) and tensor parallelism.

Everything here goes through ``torch.distributed`` itself (its collectives, DTensor and
``torch.distributed.tensor.parallel``); slimops adds no process group or communication layer.

* **Pruning scores** (:func:`reduce_scores`): the :class:`~slimops.prune.Pruner` makes the
  scores of every criterion the same on every rank before it selects masks, so every rank
  holds the same masks. Plain scores (DDP, or no wrapper) are averaged over the ranks with
  one ``all_reduce`` for all layers; DTensor scores (FSDP2's sharded weights and gradients)
  are gathered whole (``full_tensor``).
* **Masks under FSDP2** (:func:`local_part`): a ``MaskedLinear`` / ``MaskedConv2d`` mask is a
  buffer, which ``fully_shard`` does not shard: it stays whole (and the same) on every rank,
  the forward reads it whole against the unsharded weight, and zeroing the pruned weights
  applies each rank's part of it to that rank's shard. Masks are rebuilt whole from the
  gathered scores at every update.
* **Tensor parallel inference** (:func:`tp_plan`, :class:`PackedColwiseParallel`,
  :class:`PackedRowwiseParallel`): the ``parallelize_plan`` of a Llama-style model converted
  by ``slimops.convert``, for ``torch.distributed.tensor.parallel.parallelize_module``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed(group=None) -> bool:
    """Whether a process group is up with more than one rank (``group``: None for the default one)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def is_dtensor(t) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (FSDP2 and tensor-parallel shards)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


@torch.no_grad()
def reduce_scores(scores: list[torch.Tensor], group=None) -> list[torch.Tensor]:
    """The same pruning scores on every rank: DTensor scores gathered whole, plain ones averaged.

    Plain scores are averaged over ``group`` (None: the default group) with one ``all_reduce``
    for all of them, in fp32: ranks whose scores are already equal (DDP's averaged gradients)
    keep them, and ranks that saw different data agree on their mean. Outside a process group
    (or with one rank) the scores come back as they are.

    Args:
        scores: one fp32 score tensor per layer, plain or DTensor (a sharded weight's).
        group: the process group of the plain scores (the data-parallel ranks).

    Returns:
        Plain tensors, shaped as the (global) scores, equal on every rank.
    """
    whole = [s.full_tensor() if is_dtensor(s) else s for s in scores]
    plain = [i for i, s in enumerate(scores) if not is_dtensor(s)]
    if not plain or not is_distributed(group):
        return whole
    flat = torch.cat([whole[i].reshape(-1).float() for i in plain])
    # NOTE: SUM then divide, not ReduceOp.AVG: gloo has no AVG.
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat.div_(dist.get_world_size(group))
    out = list(whole)
    for i, part in zip(plain, flat.split([whole[i].numel() for i in plain])):
        out[i] = part.reshape(whole[i].shape)
    return out


@torch.no_grad()
def all_finite(grads: list[torch.Tensor]) -> bool:
    """Whether every gradient is finite, with one host sync; DTensor gradients are judged whole
    (a shard's inf is seen by every rank of its mesh), so all ranks decide alike."""
    flags = [torch.isfinite(g.to_local() if is_dtensor(g) else g).all() for g in grads]
    finite = torch.stack([f.to(flags[0].device) for f in flags]).all()
    meshes = {g.device_mesh for g in grads if is_dtensor(g)}
    if meshes:
        bad = (~finite).to(torch.int32)
        for mesh in meshes:
            for dim in range(mesh.ndim):
                dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=mesh.get_group(dim))
        return not bool(bad)
    return bool(finite)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: writing it writes the DTensor), or ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def local_part(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of the whole tensor ``t`` (the same on every rank) that this rank holds of the
    DTensor ``like`` (same global shape), as a plain tensor; ``t`` itself when ``like`` is plain."""
    if not is_dtensor(like):
        return t
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every rank cuts its own part of its own (equal) copy, no communication.
    return distribute_tensor(t, like.device_mesh, like.placements, src_data_rank=None).to_local()



def __getattr__(name: str):
    # The tensor-parallel half imports torch.distributed.tensor.parallel (seconds): only when used.
    if name in ("tp_plan", "PackedColwiseParallel", "PackedRowwiseParallel", "why_not_shardable"):
        from slimops.distributed import tensor_parallel

        return getattr(tensor_parallel, name)
    raise AttributeError(f"module 'slimops.distributed' has no attribute {name!r}")


def is_sharded(model) -> bool:
    """Whether any parameter or buffer of ``model`` is a DTensor (``fully_shard``, ``parallelize_module``)."""
    return any(is_dtensor(t) for t in model.state_dict().values())


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole ``state_dict`` of a sharded model, on CPU, on rank 0 (``{}`` on the other ranks).

    A collective: every rank calls it. ``torch.distributed.checkpoint.state_dict.get_model_state_dict``
    gathers each DTensor in turn, so only rank 0 ever holds the whole model (in CPU memory).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model, state: dict[str, torch.Tensor]) -> None:
    """Load a whole ``state_dict`` (the same on every rank) into a sharded ``model``: each rank keeps
    its shards of it (``set_model_state_dict``, strict). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))
