"""Pure-PyTorch references for the multi-tensor clip-norm family.

The specification every backend is tested against:

* :func:`multi_tensor_norm` treats every element of every tensor as one long
  vector: ``sum(|x|^p)`` over all of them (``max |x|`` for p = inf),
  accumulated in fp32 (the kernels) or fp64 (this reference), then the p-th
  root unless ``root=False``. NaN anywhere gives NaN; inf gives inf.
* :func:`multi_tensor_scale_` multiplies every tensor in place by
  ``coef = min(1, max_norm / (total_norm + 1e-6))``, computed in fp32 from the
  fp32 ``total_norm`` on the tensors' device, with NaN propagating (a NaN norm
  makes every gradient NaN, as torch's clamp does). The product is taken in
  fp32 and rounded once to each tensor's dtype.
* :func:`clip_grad_norm_fused_` is the norm then the scale. With ``inv_scale``
  (GradScaler's 1 / scale, fp32, one element) each gradient is first unscaled,
  ``g * inv_scale``, the norm is that of the unscaled gradients, ``found_inf``
  (fp32, one element) is set to 1.0 if any unscaled element is inf or NaN (it
  is never reset to 0), and each gradient ends as ``g * inv_scale * coef``
  (two fp32 products, in that order, rounded once).
"""

from __future__ import annotations

import math

import torch

CLIP_EPS = 1e-6


def multi_tensor_norm(tensors: list[torch.Tensor], norm_type: float, root: bool = True) -> torch.Tensor:
    """The p-norm (or, with ``root=False``, the p-th power sum / max) of all elements, fp32 0-d."""
    device = tensors[0].device if tensors else torch.device("cpu")
    if not tensors or all(t.numel() == 0 for t in tensors):
        return torch.zeros((), dtype=torch.float32, device=device)
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors]).abs()
    if math.isinf(norm_type):
        out = flat.max()
    elif root:
        out = flat.pow(norm_type).sum().pow(1.0 / norm_type)
    else:
        out = flat.pow(norm_type).sum()
    return out.float()


def clip_coefficient(total_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``min(1, max_norm / (total_norm + 1e-6))`` in fp32, NaN propagating."""
    coef = torch.tensor(max_norm, dtype=torch.float32) / (total_norm.float().cpu().reshape(()) + CLIP_EPS)
    return torch.where(torch.isnan(coef), coef, coef.clamp(max=1.0))


def multi_tensor_scale_(tensors: list[torch.Tensor], total_norm: torch.Tensor, max_norm: float) -> None:
    coef = clip_coefficient(total_norm, max_norm)
    for t in tensors:
        t.copy_((t.float() * coef.to(t.device)).to(t.dtype))


def clip_grad_norm_fused_(
    grads: list[torch.Tensor],
    max_norm: float,
    norm_type: float,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor:
    if inv_scale is not None:
        unscaled = [g.float() * inv_scale.float().reshape(()) for g in grads]
        if found_inf is not None and any((~torch.isfinite(u)).any() for u in unscaled):
            found_inf.fill_(1.0)
    else:
        unscaled = [g.float() for g in grads]
    total = multi_tensor_norm(unscaled, norm_type)
    coef = clip_coefficient(total, max_norm)
    for g, u in zip(grads, unscaled):
        g.copy_((u * coef.to(g.device)).to(g.dtype))
    return total
