"""Drop-ins for ``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_``.

:func:`clip_grad_norm_` keeps torch's contract (same arguments, same return
dtype and device, same errors, same non-finite behaviour) and replaces its
per-group launches with one fused norm-and-scale call per device
(``torch.ops.slimops.clip_grad_norm_fused_``: at most two kernel launches for
the whole list on a GPU, no host synchronisation). :func:`install` swaps it
into ``torch.nn.utils`` process-wide.
"""

from __future__ import annotations

import functools
import math
import types
import warnings
from collections.abc import Iterable

import torch

from slimops import ops

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


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def _check_scalars(max_norm: float, norm_type: float) -> tuple[float, float]:
    max_norm, norm_type = float(max_norm), float(norm_type)
    if math.isnan(max_norm) or max_norm < 0:
        raise ValueError(f"slimops.clip_grad_norm_: max_norm must be >= 0, got {max_norm}")
    if math.isnan(norm_type) or norm_type <= 0:
        raise ValueError(f"slimops.clip_grad_norm_: norm_type must be > 0 (or inf), got {norm_type}")
    return max_norm, norm_type


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


def _dtensor_power(grads: list, norm_type: float, device: torch.device) -> torch.Tensor:
    """Power sum of DTensor gradients: sharded ones all-reduced over their mesh, replicated ones once."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not all(isinstance(g, DTensor) for g in grads):
        raise TypeError("slimops.clip_grad_norm_: gradients mix DTensors and plain tensors")
    meshes = {g.device_mesh for g in grads}
    if len(meshes) != 1:
        raise NotImplementedError("slimops.clip_grad_norm_: DTensor gradients must share one device mesh")
    mesh = meshes.pop()
    sharded, replicated = [], []
    for g in grads:
        if all(isinstance(p, Shard) for p in g.placements):
            sharded.append(g.to_local())
        elif all(isinstance(p, Replicate) for p in g.placements):
            replicated.append(g.to_local())
        else:
            raise NotImplementedError(
                f"slimops.clip_grad_norm_: DTensor placements {g.placements} are not supported "
                "(all Shard or all Replicate)"
            )
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

    The norm is accumulated in fp32 over all gradients at once, by one fused
    call per device. Gradients spread over several devices, and DTensor
    gradients (FSDP2: sharded ones are all-reduced once), are supported.

    Args:
        parameters: a tensor or an iterable of tensors whose ``.grad`` is clipped.
        max_norm: the largest allowed norm, >= 0.
        norm_type: p > 0, or ``inf``.
        error_if_nonfinite: raise if the total norm is inf or NaN.
        foreach: accepted for compatibility; slimops always fuses.
        inv_scale: GradScaler's ``1 / scale`` (one-element float32): gradients
            are unscaled in the same pass (see :func:`slimops.amp.unscale_clip_grad_norm_`).
        found_inf: one-element float32 set to 1 if an unscaled gradient is not finite.

    Returns:
        The total norm of the gradients (viewed as one vector).
    """
    params = _as_list(parameters, warn_empty_generator=True)
    max_norm, norm_type = _check_scalars(max_norm, norm_type)
    # NOTE: these per-gradient passes are the host cost of a 4000-tensor model;
    # each uses the cheapest accessor (get_device() returns an int, .device
    # builds an object) and the C++ op re-validates everything anyway.
    grads = [g for p in params if (g := p.grad) is not None]
    if not grads:
        return torch.tensor(0.0)
    out_dtype = functools.reduce(torch.promote_types, {g.dtype for g in grads})
    plain = all(type(g) is torch.Tensor for g in grads)  # DTensors and other subclasses: general path
    single_device = plain and len({g.get_device() for g in grads}) == 1
    if (inv_scale is not None or found_inf is not None) and (not single_device or error_if_nonfinite):
        raise ValueError(
            "slimops.clip_grad_norm_: inv_scale/found_inf need plain gradients on one device and "
            "error_if_nonfinite=False"
        )
    if single_device and not error_if_nonfinite:
        # The fast path: norm and scale fused, no host synchronisation.
        return ops.clip_grad_norm_fused_(grads, max_norm, norm_type, inv_scale, found_inf).to(out_dtype)

    device = grads[0].device
    distributed = any(_is_dtensor(g) for g in grads)
    if distributed:
        power = _dtensor_power(grads, norm_type, device)
        local = [g.to_local() for g in grads]
    else:
        power = _combine_power(_local_power_sums(grads, norm_type, device), norm_type)
        local = grads
    total = _root(power, norm_type)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(NONFINITE_MESSAGE.format(norm_type=norm_type))
    for dev, gs in _by_device(local).items():
        ops.multi_tensor_scale_(gs, total.to(dev), max_norm)
    return total.to(out_dtype)


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
