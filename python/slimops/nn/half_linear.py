"""``HalfLinear``: an ``nn.Linear`` whose weights live and compute in fp16 or bf16."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimops.nn._convertible import check_convertible_linear


class HalfLinear(nn.Module):
    """``y = x W^T + b`` computed in ``dtype`` (fp16/bf16), returned in the input's dtype.

    Halves the weight memory of an fp32 layer; on GPUs the matmul runs on the
    tensor cores. Build it with :meth:`from_float`.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out_features, in_features]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_float(cls, linear: nn.Linear, dtype: torch.dtype) -> HalfLinear:
        check_convertible_linear(linear)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        return cls(linear.weight.detach().to(dtype), bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input.to(self.weight.dtype), self.weight, self.bias).to(input.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.weight.dtype}"
