"""2:4 sparsity and int8 weight-only in one layer: :class:`Sparse24Int8Linear`.

A pruned-then-quantized layer keeps both savings: the 2:4 pattern of :class:`Sparse24Linear`
(``meta``, 2-bit positions) with its kept values stored as int8 and one fp32 scale per output
row, run by ``sparse24_int8_linear`` (the values are dequantized in registers, never in memory).
Per weight: 0.5 byte of value + 0.125 byte of metadata, against 2 bytes in bf16.
"""

from __future__ import annotations

import torch
from torch import nn

import slimops
from slimops.conversion import Unsupported
from slimops.nn.packed import PackedLinear
from slimops.nn.sparse import Sparse24Linear
from slimops.ops.sparse24_int8 import sparse24_int8_dense_weight


class Sparse24Int8Linear(PackedLinear):
    """``y = x W^T + b`` for a 2:4 weight whose kept values are int8 with one scale per output row.

    Buffers: ``values int8 [N, K / 2]`` (the kept weights, in the order of
    :func:`slimops.ops.sparse24_compress`), ``meta uint8 [N, K / 8]`` (their positions),
    ``scale fp32 [N]`` and ``bias fp32 [N]`` or None. ``W[n] = values[n] * scale[n]`` at the
    positions ``meta`` gives. The values are quantized symmetrically per row (absmax / 127,
    round half to even), exactly as :class:`Int8WeightOnlyLinear` quantizes the dense weight:
    the zeros of the pattern change neither the row's absmax nor the kept values' codes.
    ``weight`` is a :class:`~slimops.nn.packed.WeightSpec`; :meth:`dequantize` gives the float weight.
    """

    _stored = ("values", "meta", "scale")
    _dense_method = "dequantize"
    # The format: module casts move these across devices but never change their dtype.
    _fixed_dtype_buffers = ("values", "meta", "scale", "bias")

    def __init__(
        self,
        values: torch.Tensor,
        meta: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(values.shape[1] * 2, values.shape[0], compute_dtype)
        self.register_buffer("values", values)  # int8 [N, K / 2]
        self.register_buffer("meta", meta)  # uint8 [N, K / 8]
        self.register_buffer("scale", scale)  # fp32 [N]
        self.register_buffer("bias", bias)  # fp32 [N] or None

    @classmethod
    def from_sparse24(cls, layer: Sparse24Linear) -> Sparse24Int8Linear:
        """Quantize a :class:`Sparse24Linear`'s kept values to int8 (its metadata is kept as it is).

        Raises:
            Unsupported: if the values hold inf or NaN, or a row's scale overflows fp32.
        """
        if not isinstance(layer, Sparse24Linear):
            raise TypeError(f"Sparse24Int8Linear.from_sparse24: expected a Sparse24Linear, got {type(layer).__name__}")
        values = layer.values.detach()
        if not torch.isfinite(values).all():
            raise Unsupported("weight holds inf or NaN values")
        q, scale, _ = slimops.ops.quantize_per_channel(values, 0, True)
        if not torch.isfinite(scale).all():
            raise Unsupported(f"weight scales are not finite (the weight's range overflows {scale.dtype})")
        bias = None if layer.bias is None else layer.bias.detach().float().clone()
        return cls(q, layer.meta.clone(), scale.reshape(-1), bias, layer.compute_dtype)

    @classmethod
    def from_float(cls, linear: nn.Module, mask: torch.Tensor | None = None) -> Sparse24Int8Linear:
        """Compress a 2:4 ``nn.Linear`` (``⊙ mask`` when given) and quantize its kept values."""
        return cls.from_sparse24(Sparse24Linear.from_dense(linear, mask))

    def dequantize(self) -> torch.Tensor:
        """The float ``[out_features, in_features]`` weight the layer multiplies by, in its compute dtype."""
        return sparse24_int8_dense_weight(self.in_features, self.values, self.meta, self.scale).to(self.compute_dtype)

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        return slimops.ops.sparse24_int8_linear(input, self.values, self.meta, self.scale, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            "2:4, int8 per row"
        )


__all__ = ["Sparse24Int8Linear"]
