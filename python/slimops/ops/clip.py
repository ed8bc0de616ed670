"""Multi-tensor clip-norm: typed wrappers and fake impls.

The schemas and the op table live in csrc/ops.cpp, the checks in csrc/clip.cpp,
the CPU kernels in csrc/cpu/clip.cpp, the CUDA ones in csrc/cuda/clip.cu and the
Triton ones in kernels/clip.py. The
semantics are those of :mod:`slimops.reference.clip`. Most users want
:func:`slimops.clip_grad_norm_`, the drop-in for torch's.
"""

from __future__ import annotations

import torch

from slimops import _build
from slimops.ops._checks import cpp_checks
from slimops.ops._checks_clip import norm_device


def multi_tensor_norm(tensors: list[torch.Tensor], norm_type: float = 2.0, root: bool = True) -> torch.Tensor:
    """The p-norm of all elements of ``tensors`` seen as one vector, accumulated in fp32.

    Args:
        tensors: float32/float16/bfloat16 tensors of any shapes, on one device.
        norm_type: p > 0, or ``inf`` for the max norm.
        root: ``False`` returns ``sum(|x|^p)`` (``max|x|`` for inf) without the
            p-th root, to be combined across devices or ranks first.

    Returns:
        A 0-d float32 tensor on the tensors' device.
    """
    return torch.ops.slimops.multi_tensor_norm.default(tensors, norm_type, root)


def multi_tensor_scale_(tensors: list[torch.Tensor], total_norm: torch.Tensor, max_norm: float) -> None:
    """In place: ``t *= min(1, max_norm / (total_norm + 1e-6))``, computed on the device (no sync).

    Args:
        tensors: float32/float16/bfloat16 tensors on one device.
        total_norm: one-element float32 tensor on that device.
        max_norm: >= 0.
    """
    torch.ops.slimops.multi_tensor_scale_.default(tensors, total_norm, max_norm)


def clip_grad_norm_fused_(
    grads: list[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Norm then in-place scale of ``grads``, in at most two launches, with no host sync.

    Args:
        grads: gradients on one device (mixed shapes and dtypes).
        max_norm: >= 0.
        norm_type: p > 0 or ``inf``.
        inv_scale: optional GradScaler ``1 / scale`` (one-element float32): grads
            are unscaled in the same passes.
        found_inf: optional one-element float32, set to 1 when an unscaled
            element is inf or NaN (never reset).

    Returns:
        The total norm of the (unscaled) gradients, a 0-d float32 tensor.
    """
    return torch.ops.slimops.clip_grad_norm_fused_.default(grads, max_norm, norm_type, inv_scale, found_inf)


if _build.HAS_C:

    @torch.library.register_fake("slimops::multi_tensor_norm")
    def _multi_tensor_norm_fake(tensors, norm_type, root=True):
        cpp_checks("multi_tensor_norm", tensors, norm_type, root)
        return torch.empty((), dtype=torch.float32, device=norm_device(tensors))

    @torch.library.register_fake("slimops::multi_tensor_scale_")
    def _multi_tensor_scale_fake(tensors, total_norm, max_norm):
        cpp_checks("multi_tensor_scale_", tensors, total_norm, max_norm)

    @torch.library.register_fake("slimops::clip_grad_norm_fused_")
    def _clip_grad_norm_fused_fake(grads, max_norm, norm_type, inv_scale=None, found_inf=None):
        cpp_checks("clip_grad_norm_fused_", grads, max_norm, norm_type, inv_scale, found_inf)
        return torch.empty((), dtype=torch.float32, device=norm_device(grads))
