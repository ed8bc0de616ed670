"""Tensor parallel inference of converted models: :func:`tp_plan` and the two styles.

``torch.distributed.tensor.parallel.ColwiseParallel`` / ``RowwiseParallel`` shard the
*parameters* of an ``nn.Linear``. slimops' packed linears keep their weights in buffers
(``qweight`` + ``weight_scale``, or 2:4 ``values`` + ``meta``) and compute with kernels that take
plain tensors, so :class:`PackedColwiseParallel` / :class:`PackedRowwiseParallel` (the same
styles for ``nn.Linear``) turn those buffers into DTensors along the right dimension and run
the kernel on the local shards. ``state_dict()`` then holds the DTensors, so
``torch.distributed.checkpoint`` and ``slimops.save`` see the sharded model as torch does.
"""

from __future__ import annotations

import copy
import types

import torch
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

import slimops
from slimops.distributed import is_dtensor
from slimops.nn.quantized import Int8DynamicLinear, Int8WeightOnlyLinear
from slimops.nn.sparse import Sparse24Linear

# The packed linears the styles shard. Colwise splits every stored buffer along the outputs
# (dim 0 of each); rowwise splits these buffers along the inputs and keeps the others whole
# (per-channel scales; the bias, added once after the partial sums are reduced).
_ROWWISE_SPLIT = {
    Int8DynamicLinear: {"qweight": 1},
    Int8WeightOnlyLinear: {"qweight": 1},  # and a per-group weight_scale [N, K/g]: _rowwise_split
    Sparse24Linear: {"values": 1, "meta": 1},
}
# How many consecutive inputs a rowwise shard boundary must not cut: a 2:4 meta byte holds
# the positions of 8 inputs.
_ROWWISE_ALIGN = {Sparse24Linear: 8}


def _rowwise_split(module) -> dict[str, int]:
    """The buffers a rowwise shard splits, and along which dim."""
    split = dict(_ROWWISE_SPLIT[type(module)])
    if isinstance(module, Int8WeightOnlyLinear) and module.weight_scale.shape[1] > 1:
        split["weight_scale"] = 1  # per group: [N, K / group_size] splits with K
    return split


def _chunk_bounds(size: int, world: int, rank: int) -> tuple[int, int]:
    """[lo, hi) of ``rank``'s part of ``size`` elements, as DTensor's ``Shard`` cuts them (``torch.chunk``)."""
    step = -(-size // world)
    return min(rank * step, size), min((rank + 1) * step, size)


def why_not_shardable(module, style: str, world: int) -> str | None:
    """Why ``module`` cannot be sharded ``"colwise"`` or ``"rowwise"`` over ``world`` ranks, or None."""
    kind = type(module)
    if kind is torch.nn.Linear:
        return None
    if kind not in _ROWWISE_SPLIT:
        known = ", ".join(["nn.Linear", *(c.__name__ for c in _ROWWISE_SPLIT)])
        return f"{kind.__name__} has no tensor-parallel sharding in slimops (it shards {known})"
    n, k = module.out_features, module.in_features
    if style == "colwise":
        return None if n >= world else f"its {n} outputs cannot be split over {world} ranks"
    align = _ROWWISE_ALIGN.get(kind, 1)
    if kind is Int8WeightOnlyLinear and module.group_size is not None and module.group_size != k:
        align = module.group_size
    step = -(-k // world)
    if k < world or step % align:
        return (
            f"its {k} inputs split over {world} ranks in parts of {step}, which cut its groups of {align} "
            f"inputs ({'2:4 metadata bytes' if kind is Sparse24Linear else 'one weight scale each'})"
        )
    return None


def _shard_buffers(module, mesh, splits: dict[str, int], replicate_rest: bool) -> None:
    """Replace the module's stored buffers by DTensors: ``Shard(d)`` for ``splits``, else Replicate."""
    for name in [*module._stored, "bias"]:
        t = module._buffers.get(name)
        if t is None or is_dtensor(t):
            continue
        if name in splits:
            placement = Shard(splits[name])
        elif replicate_rest:
            placement = Replicate()
        else:
            placement = Shard(0)
        # src_data_rank=None: every rank holds the same converted model and keeps its own part.
        module._buffers[name] = distribute_tensor(t, mesh, [placement], src_data_rank=None)


def _local_twin(module, drop_bias: bool):
    """A shallow copy of ``module`` computing this rank's part: its buffers are the local shards
    (views of the DTensors, so a load into the module reaches them), its features the local ones."""
    twin = copy.copy(module)
    twin._buffers = {n: (t.to_local() if is_dtensor(t) else t) for n, t in module._buffers.items()}
    if drop_bias:
        twin._buffers["bias"] = None
    first = twin._buffers[module._stored[0]]
    twin.out_features = first.shape[0]
    if isinstance(module, Sparse24Linear):
        twin.in_features = first.shape[1] * 2
    else:
        twin.in_features = first.shape[1]
    return twin


def _as_local(x, placements, mesh):
    """A module input as the plain tensor this rank computes with (a DTensor is redistributed first)."""
    if is_dtensor(x):
        return x.redistribute(mesh, placements).to_local()
    return x


def _colwise_forward(module, input):
    twin = module.__dict__["_slimops_tp_local"]
    # twin.forward, not twin(): the twin shares the module's hook dicts, which ran for this call already.
    return twin.forward(_as_local(input, [Replicate()], module.__dict__["_slimops_tp_mesh"]))


def _rowwise_forward(module, input):
    """The partial products of this rank's inputs, summed over the ranks (DTensor Partial -> Replicate),
    then the bias, once."""
    mesh = module.__dict__["_slimops_tp_mesh"]
    twin = module.__dict__["_slimops_tp_local"]
    x = _as_local(input, [Shard(-1)], mesh)
    if isinstance(module, Int8DynamicLinear):
        # Per-token activation scales come from the whole row, as on one process: gather the row,
        # quantize it, and multiply this rank's columns of it.
        k = module.in_features
        # As PackedLinear.forward: no kernel computes in float64, a float64 input runs in float32.
        xk = x.float() if x.dtype == torch.float64 else x
        whole = DTensor.from_local(
            xk, mesh, [Shard(x.dim() - 1)], run_check=False, shape=(*x.shape[:-1], k),
            stride=_contiguous_stride((*x.shape[:-1], k)),
        ).full_tensor()
        lo, hi = _chunk_bounds(k, mesh.size(), mesh.get_local_rank())
        q, scale = slimops.ops.quantize_per_token(whole.reshape(-1, k))
        out = slimops.ops.int8_mm(
            q[:, lo:hi].contiguous(), twin.qweight, scale, twin.weight_scale, None, xk.dtype
        ).reshape(*x.shape[:-1], -1).to(x.dtype)
    else:
        out = twin.forward(x)
    out = DTensor.from_local(out, mesh, [Partial()], run_check=False).redistribute(mesh, [Replicate()]).to_local()
    bias = module._buffers.get("bias")
    return out if bias is None else out + bias.to_local().to(out.dtype)


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= s
    return tuple(reversed(stride))


def _parallelize_packed(module, mesh, style: str, fqn: str | None) -> None:
    where = f"{fqn!r} ({type(module).__name__})" if fqn else type(module).__name__
    if mesh.ndim != 1:
        raise ValueError(f"tensor parallelism of {where}: the mesh must be 1-D, got {mesh.ndim} dimensions")
    why = why_not_shardable(module, style, mesh.size())
    if why is not None:
        raise ValueError(f"cannot shard {where} {style}: {why}")
    if style == "colwise":
        _shard_buffers(module, mesh, {}, replicate_rest=False)
    else:
        _shard_buffers(module, mesh, _rowwise_split(module), replicate_rest=True)
    module.__dict__["_slimops_tp_mesh"] = mesh
    # Not a submodule (it would enter state_dict): a twin over the same storage.
    module.__dict__["_slimops_tp_local"] = _local_twin(module, drop_bias=style == "rowwise")
    forward = _colwise_forward if style == "colwise" else _rowwise_forward
    module.forward = types.MethodType(forward, module)


class PackedColwiseParallel(ColwiseParallel):
    """``ColwiseParallel`` that also shards slimops' packed linears (int8 weight-only, int8
    dynamic, 2:4) along their outputs: every stored buffer (``qweight``, ``weight_scale``,
    ``bias``; ``values``, ``meta``) becomes a DTensor ``Shard(0)``, and the forward runs the
    slimops kernel on the local shards. Input: replicated; output: this rank's outputs, a plain
    tensor (``ColwiseParallel``'s defaults, the only layouts it takes for packed layers).
    ``nn.Linear`` is ``ColwiseParallel``'s own.

    Args:
        fqn: the module's name, for error messages.
        **kwargs: ``ColwiseParallel``'s.
    """

    def __init__(self, *, fqn: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.fqn = fqn

    def _apply(self, module, device_mesh):
        if type(module) is torch.nn.Linear:
            return super()._apply(module, device_mesh)
        _check_default_layouts(self, (Replicate(),), (Shard(-1),), "PackedColwiseParallel")
        _parallelize_packed(module, device_mesh, "colwise", self.fqn)
        return module


class PackedRowwiseParallel(RowwiseParallel):
    """``RowwiseParallel`` that also shards slimops' packed linears along their inputs: ``qweight``
    (and a per-group ``weight_scale``; 2:4 ``values`` and ``meta``) become DTensors ``Shard(1)``,
    per-channel scales and the bias ``Replicate``. Each rank multiplies its part of the inputs;
    the partial outputs are summed over the ranks (DTensor ``Partial`` -> ``Replicate``: one
    all_reduce), then the bias is added once. ``Int8DynamicLinear`` first gathers the whole input
    row (one all_gather) so that its per-token activation scale is the one-process scale.
    Input: this rank's inputs; output: replicated, a plain tensor (the defaults).

    Args:
        fqn: the module's name, for error messages.
        **kwargs: ``RowwiseParallel``'s.
    """

    def __init__(self, *, fqn: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.fqn = fqn

    def _apply(self, module, device_mesh):
        if type(module) is torch.nn.Linear:
            return super()._apply(module, device_mesh)
        _check_default_layouts(self, (Shard(-1),), (Replicate(),), "PackedRowwiseParallel")
        _parallelize_packed(module, device_mesh, "rowwise", self.fqn)
        return module


def _check_default_layouts(style, inputs, outputs, who: str) -> None:
    if tuple(style.input_layouts) != inputs or tuple(style.output_layouts) != outputs or not style.use_local_output:
        raise ValueError(
            f"{who} on a slimops packed layer takes the default layouts only (input_layouts={inputs}, "
            f"output_layouts={outputs}, use_local_output=True)"
        )


# Llama-style projection names (Hugging Face LlamaDecoderLayer, Mistral, Qwen2, ...): the
# Megatron split, column-parallel into attention / MLP and row-parallel out of them.
LLAMA_COLWISE = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
LLAMA_ROWWISE = ("o_proj", "down_proj")


def tp_plan(model, tp_size: int | None = None, colwise=LLAMA_COLWISE, rowwise=LLAMA_ROWWISE) -> dict:
    """The ``parallelize_plan`` of a Llama-style model, plain or converted by ``slimops.convert``.

    Every module whose last name is in ``colwise`` gets :class:`PackedColwiseParallel`, in
    ``rowwise`` :class:`PackedRowwiseParallel` (both are torch's own styles for ``nn.Linear``).
    Use it with ``torch.distributed.tensor.parallel.parallelize_module(model, mesh, plan)``.
    Attention then runs ``num_heads / tp_size`` heads per rank (Hugging Face's attention reads
    the head count from the projections' shapes); the rest of the model is replicated.

    Args:
        model: the model (its modules are only read).
        tp_size: the tensor-parallel world size; when given, every planned module is checked
            now, and the first that cannot be sharded raises.
        colwise, rowwise: the last names of the modules to split along outputs / inputs.

    Raises:
        ValueError: a planned module cannot be sharded: the message names it and says why
            (its class has no sharding in slimops, or its shape does not split).
    """
    plan = {}
    for fqn, module in model.named_modules():
        last = fqn.rsplit(".", 1)[-1]
        style = "colwise" if last in colwise else "rowwise" if last in rowwise else None
        if style is None:
            continue
        if tp_size is not None:
            why = why_not_shardable(module, style, tp_size)
            if why is not None:
                raise ValueError(f"tp_plan: cannot shard {fqn!r} ({type(module).__name__}) {style}: {why}")
        plan[fqn] = PackedColwiseParallel(fqn=fqn) if style == "colwise" else PackedRowwiseParallel(fqn=fqn)
    return plan

