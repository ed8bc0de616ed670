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

from slimops.clip import clip_grad_norm_


@torch.no_grad()
def unscale_clip_grad_norm_(
    scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0
) -> torch.Tensor:
    """``scaler.unscale_(optimizer)`` then ``clip_grad_norm_`` over its parameters, fused.

    Args:
        scaler: an enabled or disabled ``torch.amp.GradScaler``.
        optimizer: the optimizer whose parameters' gradients are unscaled and clipped.
        max_norm: the largest allowed norm of the unscaled gradients.
        norm_type: p > 0, or ``inf``.

    Returns:
        The total norm of the unscaled gradients.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not scaler.is_enabled():
        return clip_grad_norm_(params, max_norm, norm_type)
    # NOTE: this drives GradScaler's bookkeeping the way its own unscale_ does
    # (torch/amp/grad_scaler.py); keep it in step with torch.
    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.UNSCALED:
        raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
    if state["stage"] is OptState.STEPPED:
        raise RuntimeError("unscale_() is being called after step().")
    grads = [p.grad for p in params if p.grad is not None]
    if any(g.dtype == torch.float16 for g in grads):
        raise ValueError("Attempting to unscale FP16 gradients.")
    scale = scaler._scale
    inv_scale = scale.double().reciprocal().float()  # fp64 reciprocal, as GradScaler does
    found_inf = torch.zeros((), dtype=torch.float32, device=scale.device)
    devices = {g.device for g in grads}
    if len(devices) > 1 or (devices and devices != {scale.device}):
        raise ValueError(
            "slimops.amp.unscale_clip_grad_norm_: gradients must all be on the scaler's device "
            f"({scale.device}); got {sorted(map(str, devices))}. Use scaler.unscale_ for multi-device models."
        )
    total = clip_grad_norm_(params, max_norm, norm_type, inv_scale=inv_scale, found_inf=found_inf)
    state["found_inf_per_device"] = {scale.device: found_inf}
    state["stage"] = OptState.UNSCALED
    return total
