"""What the quantized and packed sparse linears share: ``weight`` as a description of the layer,
a storage format that module casts never change, and float64 inputs.

Model code reads a linear layer's ``weight`` for its metadata: T5 casts its hidden
states to ``wo.weight.dtype``, many Hugging Face models cast to ``fc.weight.dtype`` or
build tensors on ``proj.weight.device``, and PyTorch's ``TransformerEncoderLayer``
fast path passes ``linear1.weight`` to a fused kernel. A packed layer has no dense
float weight to give (its int8 / fp8 / 2:4 / block data live in other buffers), so
its ``weight`` is a :class:`WeightSpec`: the shape ``[out_features, in_features]``,
the dtype the layer computes in, and its device. Any computation with it raises a
clear error, and it makes ``torch.overrides.has_torch_function`` true, which is how
PyTorch's fused transformer paths know to call the layer instead of reading it.

The forward takes the path :mod:`slimops.nn.routing` names for the batch's rows and
device: the layer's own kernel, or a faster one where a committed measurement shows
the kernel losing to the layer it replaced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimops.nn import routing

# The float dtypes slimops kernels compute in.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class WeightSpec:
    """The ``weight`` of a packed slimops linear: its shape, compute dtype and device, no values.

    ``dtype`` is the float dtype the layer was converted from (changed by
    ``module.to(dtype)``, ``.half()``, ...): the dtype model code should give it
    inputs in. ``stored`` names the buffers that hold the weight, ``dense`` the module's method
    that gives it as a float tensor (``dequantize`` or ``to_dense``).
    """

    __slots__ = ("shape", "dtype", "device", "owner", "stored", "dense")
    requires_grad = False
    is_sparse = False
    layout = torch.strided

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        owner: str,
        stored: tuple[str, ...],
        dense: str,
    ):
        self.shape, self.dtype, self.device = torch.Size(shape), dtype, device
        self.owner, self.stored, self.dense = owner, stored, dense

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def dim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def _explain(self) -> str:
        return (
            f"{self.owner}.weight describes the layer (shape {list(self.shape)}, dtype {self.dtype}, "
            f"device {self.device}) and holds no values: the weights are stored in {' + '.join(self.stored)}. "
            f"Call the layer, or get a float weight with {self.owner}.{self.dense}()"
        )

    def __getattr__(self, name: str):
        # Only reached for names the spec does not have (.data, .float(), .t(), ...). Dunders and
        # unset slots (copy, pickle and torch.compile probe them on a half-built object) fail plainly.
        if name.startswith("__") or name in WeightSpec.__slots__:
            raise AttributeError(name)
        raise AttributeError(f"{name!r} is not available: {self._explain()}")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        spec = next((a for a in (*args, *(kwargs or {}).values()) if isinstance(a, WeightSpec)), None)
        what = getattr(func, "__name__", str(func))
        raise TypeError(f"{what}: cannot compute with a WeightSpec. {spec._explain() if spec else ''}")

    def __repr__(self) -> str:
        return f"WeightSpec(shape={list(self.shape)}, dtype={self.dtype}, device={self.device}, stored in {' + '.join(self.stored)})"


class PackedLinear(nn.Module):
    """Base of the modules whose weight is stored in a format other than a dense float tensor.

    Subclasses set ``_stored`` (the buffers that hold the weight; the first one's device is
    the layer's), ``_dense_method`` (the method that gives the float weight),
    ``_fixed_dtype_buffers`` (buffers whose dtype is the format: module casts move them
    across devices but never change their dtype) and ``_float_buffers`` (float weights
    that follow casts among the kernel dtypes, as ``nn.Linear``'s do), and implement
    :meth:`_linear`.

    ``module.to(dtype)`` (``.half()``, ``.double()``, ...) sets the compute dtype that
    ``weight.dtype`` reports. No slimops kernel computes in float64: a float64 input is
    computed in float32 (in the stored values' dtype for sparse layers) and returned in
    float64. For a quantized layer that loses nothing measurable: its quantization error
    is about 1e-2 relative, float32 rounding 1e-7.
    """

    _stored: tuple[str, ...] = ()
    _dense_method: str = "dequantize"  # the method that gives the float weight
    _fixed_dtype_buffers: tuple[str, ...] = ()
    _float_buffers: tuple[str, ...] = ()

    def __init__(self, in_features: int, out_features: int, compute_dtype: torch.dtype):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype

    @property
    def weight(self) -> WeightSpec:
        device = self._buffers[self._stored[0]].device
        return WeightSpec(
            (self.out_features, self.in_features),
            self.compute_dtype,
            device,
            type(self).__name__,
            self._stored,
            self._dense_method,
        )

    def _kernel_dtype(self) -> torch.dtype:
        """The dtype a float64 input is computed in."""
        return torch.float32

    @property
    def route_name(self) -> str:
        """The name :mod:`slimops.nn.routing`'s rules know this layer by."""
        return type(self).__name__

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input.to(self._kernel_dtype()) if input.dtype == torch.float64 else input
        # The path that is fastest for this many rows on this device (routing.RULES, from measurements).
        path = routing.path_for(self.route_name, x.device.type, x.shape[:-1].numel())
        out = self._linear(x) if path == "kernel" else getattr(self, f"_linear_{path}")(x)
        return out.to(torch.float64) if input.dtype == torch.float64 else out

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _linear_dequantize(self, input: torch.Tensor) -> torch.Tensor:
        """The dense GEMM on the weight dequantized into a temporary (freed after the call)."""
        w = getattr(self, self._dense_method)().to(input.dtype)
        bias = None if self.bias is None else self.bias[: self.out_features].to(input.dtype)
        return F.linear(input, w, bias)

    def _apply(self, fn, recurse=True):
        keep = {n: self._buffers[n] for n in self._fixed_dtype_buffers if self._buffers.get(n) is not None}
        floats = {n: self._buffers[n] for n in self._float_buffers if self._buffers.get(n) is not None}
        # What the cast does to a float tensor of the compute dtype (a device move leaves the dtype).
        probe = fn(torch.empty(0, dtype=self.compute_dtype))
        super()._apply(fn, recurse)
        for name, old in keep.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        for name, old in floats.items():
            new = self._buffers[name]
            if new.dtype not in KERNEL_DTYPES:  # float64: no kernel takes it; keep the values as they were
                self._buffers[name] = old.to(device=new.device)
        if isinstance(probe, torch.Tensor) and probe.is_floating_point():
            self.compute_dtype = probe.dtype
        return self
