"""``HalfLinear``: an ``nn.Linear`` whose weights are stored in fp16 or bf16.

Where the device multiplies in that dtype natively (CUDA; a CPU with AVX512-BF16 or AMX for
bf16, AMX-FP16 for fp16) the matmul runs in it. Elsewhere half arithmetic is emulated and
several times slower than fp32 (a BERT forward in bf16 took 6x the fp32 time on an AVX2 CPU,
issue #13), so the layer keeps the half weight in memory and computes in fp32: half the
weight memory at about the fp32 speed (bench/results/conv-half-cpu-*.json).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimops.nn._convertible import check_convertible_linear

# What HalfConfig(compute=...) takes: "auto" picks per device, the others force a path.
COMPUTE_MODES = ("auto", "half", "float32")


# Read once, at import: torch.compile cannot trace torch.cpu's probes inside a forward.
_CPU_NATIVE = {
    torch.bfloat16: torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported(),
    torch.float16: torch.cpu._is_amx_fp16_supported(),
}


def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU has matmul instructions for ``dtype`` (fp16 / bf16), as oneDNN uses them."""
    return _CPU_NATIVE.get(dtype, False)


# fp32 bytes of weight widened per matmul call: the block stays in L2 (1 MB here of 2 MB) while
# x streams past it. NOTE: widening the whole weight at once cost 1.10x fp32 on a BERT forward
# (a fresh fp32 weight per call, written to and read back from DRAM); blocks: 0.96x.
WIDEN_BLOCK_BYTES = 1 << 20


def linear_widened(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` in fp32 for a half ``weight`` [N, K], widened one block of rows at a time.

    Args:
        x: fp32 ``[..., K]``.
        weight: fp16 / bf16 ``[N, K]``.
        bias: ``[N]`` in any float dtype, or None.
    """
    n, k = weight.shape
    rows = max(16, WIDEN_BLOCK_BYTES // (4 * k))
    b = None if bias is None else bias.float()
    if n <= rows or (torch.is_grad_enabled() and x.requires_grad):  # one block; or mm(out=) has no autograd
        return F.linear(x, weight.float(), b)
    x2 = x.reshape(-1, k)
    out_t = x2.new_empty(n, x2.shape[0])  # out^T: each block of weight rows fills whole rows of it
    for n0 in range(0, n, rows):
        w = weight[n0 : n0 + rows].float()
        if b is None:
            torch.mm(w, x2.t(), out=out_t[n0 : n0 + rows])
        else:
            torch.addmm(b[n0 : n0 + rows, None], w, x2.t(), out=out_t[n0 : n0 + rows])
    # Contiguous, as F.linear returns it (model code views the output).
    return out_t.t().contiguous().reshape(*x.shape[:-1], n)


class HalfLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` (and ``b``) stored in ``dtype`` (fp16/bf16), returned in the input's dtype.

    Halves the weight memory of an fp32 layer. ``compute`` says where the matmul runs:
    ``"half"`` in the stored dtype (tensor cores on GPUs), ``"float32"`` in fp32 with the
    weight widened on the fly, ``"auto"`` (default) in half where the device has native
    instructions for it (see :func:`cpu_has_native`) and in fp32 elsewhere.
    :attr:`compute_dtype` and the conversion report say which. Build it with :meth:`from_float`.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, compute: str = "auto"):
        super().__init__()
        if compute not in COMPUTE_MODES:
            raise ValueError(f"HalfLinear: compute must be one of {COMPUTE_MODES}, got {compute!r}")
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out_features, in_features]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.compute = compute

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the matmul runs in on the weight's current device."""
        half = self.weight.dtype
        if self.compute == "half" or self.weight.device.type != "cpu":
            return half if self.compute != "float32" else torch.float32
        if self.compute == "float32" or not cpu_has_native(half):
            return torch.float32
        return half

    @property
    def slimops_note(self) -> str:
        """What the conversion report says about this layer: where its matmul runs, and why."""
        half, dt = self.weight.dtype, self.compute_dtype
        if dt == half:
            why = "forced" if self.compute == "half" else f"native on {self.weight.device.type}"
            return f"computes in {str(half)[6:]} ({why})"
        why = "forced" if self.compute == "float32" else f"no native {str(half)[6:]} on this CPU"
        return f"{str(half)[6:]} weights, computes in float32 ({why})"

    @classmethod
    def from_float(cls, linear: nn.Linear, dtype: torch.dtype, compute: str = "auto") -> HalfLinear:
        check_convertible_linear(linear)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        return cls(linear.weight.detach().to(dtype), bias, compute)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype == torch.float32:
            return linear_widened(input.float(), self.weight, self.bias).to(input.dtype)
        return F.linear(input.to(self.weight.dtype), self.weight, self.bias).to(input.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.weight.dtype}, {self.slimops_note}"
