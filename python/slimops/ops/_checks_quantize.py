"""What decides the output shapes of the int8 quantize / dequantize fakes (see :mod:`slimops.ops._checks`).

The full checks are csrc/quantize.cpp's, run by the op (and by the fakes on concrete sizes).
"""

from __future__ import annotations

import torch

from slimops.ops._checks import check, check_min_dim


def per_row_shapes(x: torch.Tensor, op: str) -> tuple[tuple, tuple]:
    """``(q shape, scale shape)`` of a per-row quantizer (``op`` names it): ``[..., K]`` and ``[..., 1]``."""
    check_min_dim(x, op, "x", "(rows of the last dimension)")
    return tuple(x.shape), (*x.shape[:-1], 1)


def channel_scale_shape(x: torch.Tensor, axis: int) -> list:
    """The keepdim scale of a per-channel quantization along ``axis``: 1 except at ``axis``."""
    op = "quantize_per_channel"
    check_min_dim(x, op, "x", "")
    check(-x.dim() <= axis < x.dim(), op, f"axis must be in [{-x.dim()}, {x.dim()}) for x of shape "
          f"{tuple(x.shape)}, got {axis}")  # fmt: skip
    a = axis % x.dim()
    return [x.shape[d] if d == a else 1 for d in range(x.dim())]
