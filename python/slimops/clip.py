"""Drop-ins for ``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_``.

:func:`clip_grad_norm_` keeps torch's contract (same arguments, same return
dtype and device, same errors, same non-finite behaviour) and replaces its
per-group launches with one fused norm-and-scale call per device
(``torch.ops.slimops.clip_grad_norm_fused_``: at most two kernel launches for
the whole list on a GPU, no host synchronisation). :func:`install` swaps it
into ``torch.nn.utils`` process-wide, so every call torch takes must work: what
the kernels do not take (float64 or complex gradients, non-dense strided views,
sparse layouts, tensor subclasses other than DTensor, ``norm_type <= 0`` or NaN,
``max_norm < 0`` or NaN) goes to torch's own implementation, whole call.
"""

from __future__ import annotations

import functools
import math
import types
import warnings
from collections.abc import Iterable

import torch

from slimops import ops
from slimops.ops._checks import FLOAT_DTYPES, is_dense

TensorOrTensors = torch.Tensor | Iterable[torch.Tensor]

NONFINITE_MESSAGE = (
    "The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
    "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
    "`error_if_nonfinite=False`"
)


def _as_list(parameters: TensorOrTensors, warn_empty_generator: bool) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    is_generator = isinstance(parameters, types.GeneratorType)
    params = list(parameters)
    if warn_empty_generator and is_generator and not params:
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    return params


_FUSED_DTYPES = frozenset(FLOAT_DTYPES)
_PLAIN = {torch.Tensor}

# torch's own, captured before install() can replace it: the path for every call the kernels do not take.
_torch_clip_grad_norm_ = torch.nn.utils.clip_grad.clip_grad_norm_


def _kernels_take(dtypes: set[torch.dtype], max_norm: float, norm_type: float) -> bool:
    """The dtypes and scalars the kernels take: float32/16/bf16, 0 < p <= inf, max_norm >= 0 (NaN fails both)."""
    return norm_type > 0 and max_norm >= 0 and _FUSED_DTYPES.issuperset(dtypes)


def _is_one_block(t: torch.Tensor) -> bool:
    """Non-overlapping and dense (contiguous, or a permutation of it, e.g. channels_last): what the kernels read."""
    if t.is_contiguous():
        return True
    if torch.compiler.is_compiling():
        # NOTE: Dynamo (torch 2.13) fails on some strides of a .grad ("Cannot construct
        # ConstantVariable for ... SymInt"), so is_dense cannot walk them: the usual
        # dense layouts are named instead, and any other permutation takes torch's path.
        return (
            (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
            or (t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d))
            or (t.dim() >= 2 and t.mT.is_contiguous())
        )
    return is_dense(t)


def _takes_plain(grads: list[torch.Tensor], dtypes: set[torch.dtype], max_norm: float, norm_type: float) -> bool:
    """Whether the kernels take these gradients (on any number of devices) and scalars.

    Plain tensors only (no DTensor or other subclass), each one block of memory.
    """
    # NOTE: with the dtype set, two C-level passes (~15 and ~50 ns a gradient);
    # the stride walk of is_dense runs only when some gradient is not contiguous.
    return (
        _kernels_take(dtypes, max_norm, norm_type)
        and set(map(type, grads)) <= _PLAIN
        and (all(map(torch.Tensor.is_contiguous, grads)) or all(_is_one_block(g) for g in grads))
    )


def _clip_fused(
    grads: list[torch.Tensor],
    dtypes: set[torch.dtype],
    max_norm: float,
    norm_type: float,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fast path, for gradients on one device: norm and scale fused, no host synchronisation."""
    out_dtype = functools.reduce(torch.promote_types, dtypes)  # what torch returns
    return ops.clip_grad_norm_fused_(grads, max_norm, norm_type, inv_scale, found_inf).to(out_dtype)


def _combine_power(parts: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    """Power sums (max |x| for inf) from several devices or ranks, combined; NaN survives."""
    stacked = torch.stack(parts)
    return stacked.amax() if math.isinf(norm_type) else stacked.sum()


def _root(power: torch.Tensor, norm_type: float) -> torch.Tensor:
    return power if math.isinf(norm_type) else power.pow(1.0 / norm_type)


def _by_device(tensors: list[torch.Tensor]) -> dict[torch.device, list[torch.Tensor]]:
    groups: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.device, []).append(t)
    return groups


def _local_power_sums(grads: list[torch.Tensor], norm_type: float, device: torch.device) -> list[torch.Tensor]:
    return [ops.multi_tensor_norm(gs, norm_type, root=False).to(device) for gs in _by_device(grads).values()]


def _scale_(tensors: list[torch.Tensor], total_norm: torch.Tensor, max_norm: float) -> None:
    """In place, on one device: the dense tensors by the kernel, any others (DTensor shards) by ``mul_``."""
    dense = [t for t in tensors if _is_one_block(t)]
    ops.multi_tensor_scale_(dense, total_norm, max_norm)
    if len(dense) < len(tensors):
        # torch's coefficient, in fp32 on the device; clamp keeps a NaN norm's NaN.
        coef = (max_norm / (total_norm.reshape(()) + 1e-6)).clamp(max=1.0)
        for t in tensors:
            if not _is_one_block(t):
                t.mul_(coef)


def _dtensor_layout_ok(grads: list) -> bool:
    """DTensor gradients the power-sum path takes: one mesh; each all Shard or all Replicate.

    Global metadata only, the same on every rank, so every rank routes alike.
    """
    from torch.distributed.tensor import Replicate, Shard

    if len({g.device_mesh for g in grads}) != 1:
        return False
    return all(
        all(isinstance(p, Shard) for p in g.placements) or all(isinstance(p, Replicate) for p in g.placements)
        for g in grads
    )


def _dtensor_power(grads: list, norm_type: float, device: torch.device) -> torch.Tensor:
    """Power sum of DTensor gradients: sharded ones all-reduced over their mesh, replicated ones once."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard

    mesh = grads[0].device_mesh  # one mesh, all Shard or all Replicate: _dtensor_layout_ok
    sharded, replicated = [], []
    for g in grads:
        local = g.to_local()
        # A shard the kernels cannot read as one block is copied for the (read-only) norm.
        local = local if _is_one_block(local) else local.contiguous()
        (sharded if all(isinstance(p, Shard) for p in g.placements) else replicated).append(local)
    power = torch.zeros((), dtype=torch.float32, device=device)
    if sharded:
        power = _combine_power(_local_power_sums(sharded, norm_type, device), norm_type)
    reduce_op = dist.ReduceOp.MAX if math.isinf(norm_type) else dist.ReduceOp.SUM
    for dim in range(mesh.ndim):  # a single all_reduce on the 1-D meshes FSDP2 uses
        dist.all_reduce(power, op=reduce_op, group=mesh.get_group(dim))
    return _combine_power([power, *_local_power_sums(replicated, norm_type, device)], norm_type)


@torch.no_grad()
def clip_grad_norm_(
    parameters: TensorOrTensors,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Clip the gradient norm of ``parameters`` in place; a drop-in for torch's.

    Same contract as ``torch.nn.utils.clip_grad_norm_``: ``.grad is None`` is
    skipped, an empty list returns ``tensor(0.)``, the norm comes back with the
    dtype torch returns (the promoted gradient dtype) on the first gradient's
    device, and a non-finite norm either raises (``error_if_nonfinite=True``,
    the only mode that synchronises, and then nothing is scaled) or scales the
    gradients by it as torch does (NaN norm: NaN gradients).

    float32/float16/bfloat16 dense gradients (contiguous or a permutation of
    it) with ``0 < norm_type <= inf`` and ``max_norm >= 0`` take the kernels:
    the norm is accumulated in fp32 over all gradients at once, by one fused
    call per device. Gradients spread over several devices, and DTensor
    gradients (FSDP2: sharded ones are all-reduced once), are supported. Every
    other call torch accepts (float64 or complex gradients, non-dense strided
    views, ``norm_type`` 0, negative or ``-inf``, ...) is torch's own, with its
    result exactly.

    Args:
        parameters: a tensor or an iterable of tensors whose ``.grad`` is clipped.
        max_norm: the largest allowed norm (a float or a one-element tensor).
        norm_type: any p torch takes (``inf`` and ``-inf`` included).
        error_if_nonfinite: raise if the total norm is inf or NaN.
        foreach: passed to torch's implementation when it runs; the kernels always fuse.
        inv_scale: GradScaler's ``1 / scale`` (one-element float32): gradients
            are unscaled in the same pass (see :func:`slimops.amp.unscale_clip_grad_norm_`).
            Needs gradients the kernels take, on one device.
        found_inf: one-element float32 set to 1 if an unscaled gradient is not finite.

    Returns:
        The total norm of the gradients (viewed as one vector).
    """
    params = _as_list(parameters, warn_empty_generator=True)
    # NOTE: these per-gradient passes are the host cost of a 4000-tensor model;
    # each uses the cheapest accessor (get_device() returns an int, .device
    # builds an object) and the C++ op re-validates everything anyway. No
    # walrus in the comprehension: torch.compile cannot trace it ("Read
    # uninitialized cell").
    grads = [g for g in [p.grad for p in params] if g is not None]
    if not grads:
        return torch.tensor(0.0)
    max_norm_f, norm_type_f = float(max_norm), float(norm_type)
    dtypes = {g.dtype for g in grads}
    # The routing: plain dense tensors, or DTensors (their local shards are handled
    # below whatever their strides, so that every rank decides alike), with the
    # kernels' dtypes and scalars. Anything else is torch's call, whole: its result
    # and its errors exactly.
    if _takes_plain(grads, dtypes, max_norm_f, norm_type_f):
        distributed = False
    elif (
        _kernels_take(dtypes, max_norm_f, norm_type_f)
        and all(type(g).__name__ == "DTensor" for g in grads)
        and _dtensor_layout_ok(grads)
    ):
        distributed = True
    elif inv_scale is not None or found_inf is not None:
        raise ValueError(
            "slimops.clip_grad_norm_: inv_scale/found_inf need plain float32/float16/bfloat16 dense gradients, "
            "0 < norm_type <= inf and max_norm >= 0"
        )
    else:
        return _torch_clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)

    single_device = not distributed and len(set(map(torch.Tensor.get_device, grads))) == 1
    if (inv_scale is not None or found_inf is not None) and (not single_device or error_if_nonfinite):
        raise ValueError(
            "slimops.clip_grad_norm_: inv_scale/found_inf need plain gradients on one device and "
            "error_if_nonfinite=False"
        )
    if single_device and not error_if_nonfinite:
        return _clip_fused(grads, dtypes, max_norm_f, norm_type_f, inv_scale, found_inf)

    device = grads[0].device
    if distributed:
        power = _dtensor_power(grads, norm_type_f, device)
        local = [g.to_local() for g in grads]
    else:
        power = _combine_power(_local_power_sums(grads, norm_type_f, device), norm_type_f)
        local = grads
    total = _root(power, norm_type_f)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(NONFINITE_MESSAGE.format(norm_type=norm_type_f))
    for dev, gs in _by_device(local).items():
        if distributed:
            _scale_(gs, total.to(dev), max_norm_f)
        else:
            ops.multi_tensor_scale_(gs, total.to(dev), max_norm_f)
    return total.to(functools.reduce(torch.promote_types, dtypes))


# torch's own, captured before install() can replace it.
_torch_clip_grad_value_ = torch.nn.utils.clip_grad.clip_grad_value_


def clip_grad_value_(parameters: TensorOrTensors, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient to ``[-clip_value, clip_value]`` in place.

    NOTE: this is torch's implementation (its foreach clamps are already two
    launches per device and dtype); it is here so that :func:`install` swaps
    both functions consistently.
    """
    _torch_clip_grad_value_(parameters, clip_value, foreach=foreach)


_PATCH_TARGETS = (torch.nn.utils, torch.nn.utils.clip_grad)
_installed: dict[tuple[int, str], object] = {}


def install() -> None:
    """Make ``torch.nn.utils.clip_grad_norm_`` (and ``clip_grad_value_``) slimops', process-wide.

    Code that calls ``torch.nn.utils.clip_grad_norm_(...)`` at run time
    (Hugging Face Trainer, Lightning, most training loops) picks it up. A module
    that did ``from torch.nn.utils import clip_grad_norm_`` before this call
    keeps its own reference to torch's function.
    """
    for module in _PATCH_TARGETS:
        for name, fn in (("clip_grad_norm_", clip_grad_norm_), ("clip_grad_value_", clip_grad_value_)):
            _installed.setdefault((id(module), name), getattr(module, name))
            setattr(module, name, fn)


def uninstall() -> None:
    """Undo :func:`install`."""
    for module in _PATCH_TARGETS:
        for name in ("clip_grad_norm_", "clip_grad_value_"):
            original = _installed.pop((id(module), name), None)
            if original is not None:
                setattr(module, name, original)
