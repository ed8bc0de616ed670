"""GradScaler's unscale, inf check and gradient clipping in one fused pass.

Instead of::

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)                               # pass 1 over the grads
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # passes 2-3
    scaler.step(optimizer)
    scaler.update()

write::

    scaler.scale(loss).backward()
    slimops.amp.unscale_clip_grad_norm_(scaler, optimizer, max_norm=1.0)  # 2 passes
    scaler.step(optimizer)
    scaler.update()

The gradients end unscaled and clipped, the norm is that of the unscaled
gradients, and ``scaler.step`` skips the step when a gradient was inf or NaN,
exactly as after ``scaler.unscale_``.
"""

from __future__ import annotations

import torch
from torch.amp.grad_scaler import OptState

from slimops.clip import _clip_fused, _takes_plain, clip_grad_norm_


@torch.no_grad()
def unscale_clip_grad_norm_(
    scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0
) -> torch.Tensor:
    """``scaler.unscale_(optimizer)`` then ``clip_grad_norm_`` over its parameters, fused.

    Gradients the kernels do not take (float64, non-dense strided, more than
    one device, a norm type or max norm outside theirs: see
    :func:`slimops.clip_grad_norm_`) get ``scaler.unscale_`` and then the clip,
    unfused, with the same result.

    Args:
        scaler: an enabled or disabled ``torch.amp.GradScaler``. Enabled, it must
            have scaled a loss this iteration (as for ``scaler.unscale_``).
        optimizer: the optimizer whose parameters' gradients are unscaled and clipped.
        max_norm: the largest allowed norm of the unscaled gradients.
        norm_type: any p ``torch.nn.utils.clip_grad_norm_`` takes.

    Returns:
        The total norm of the unscaled gradients.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not scaler.is_enabled():  # scaler.unscale_ is a no-op: plain clipping
        return clip_grad_norm_(params, max_norm, norm_type)
    # NOTE: this drives GradScaler's bookkeeping the way its own unscale_ does
    # (torch/amp/grad_scaler.py), in its order; keep it in step with torch.
    # First, torch's AssertionError for a scaler that has not scaled a loss (_scale is None).
    scale, _ = scaler._check_scale_growth_tracker("unscale_")
    grads = [g for g in [p.grad for p in params] if g is not None]
    dtypes = {g.dtype for g in grads}
    max_norm_f, norm_type_f = float(max_norm), float(norm_type)
    if not (
        _takes_plain(grads, dtypes, max_norm_f, norm_type_f)
        and set(map(torch.Tensor.get_device, grads)) <= {scale.get_device()}
    ):
        scaler.unscale_(optimizer)
        return clip_grad_norm_(params, max_norm, norm_type)
    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.UNSCALED:
        raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
    if state["stage"] is OptState.STEPPED:
        raise RuntimeError("unscale_() is being called after step().")
    if torch.float16 in dtypes:
        raise ValueError("Attempting to unscale FP16 gradients.")
    inv_scale = scale.double().reciprocal().float()  # fp64 reciprocal, as GradScaler does
    found_inf = torch.zeros((), dtype=torch.float32, device=scale.device)
    total = _clip_fused(grads, dtypes, max_norm_f, norm_type_f, inv_scale, found_inf) if grads else torch.tensor(0.0)
    state["found_inf_per_device"] = {scale.device: found_inf}
    state["stage"] = OptState.UNSCALED
    return total
