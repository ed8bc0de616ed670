"""What decides the output shapes of the quantized matmul fakes (see :mod:`slimops.ops._checks`).

The full checks are csrc/quant_mm.cpp's and csrc/quant_linear.cpp's, run by the op (and by the fakes on
concrete sizes).
"""

from __future__ import annotations

import torch

from slimops.ops._checks import MatmulGeometry, check_2d, check_min_dim


def int8_mm_geometry(a: torch.Tensor, b: torch.Tensor) -> MatmulGeometry:
    op = "int8_mm"
    check_2d(a, op, "a", "[M, K]")
    check_2d(b, op, "b", "[N, K]")
    return MatmulGeometry(a.shape[0], b.shape[0], a.shape[1])


def linear_out_features(op: str, x: torch.Tensor, weight: torch.Tensor) -> int:
    """N for a linear op on x ``[..., K]`` and a weight ``[N, K]``."""
    check_min_dim(x, op, "x")
    check_2d(weight, op, "weight", "[out_features, in_features]")
    return weight.shape[0]
