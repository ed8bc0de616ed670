"""Modules that ``slimops.convert`` swaps into models.

Each ``forward`` takes ``input``, the name ``nn.Linear`` and ``nn.Conv2d`` use, so
model code that calls a layer by keyword (``self.proj(input=h)``) keeps working.
The quantized and packed sparse modules answer ``weight`` with a :class:`WeightSpec`
(shape, compute dtype, device), so model code that reads it keeps working too.
"""

from slimops.nn.half_linear import HalfLinear
from slimops.nn.int4 import Int4WeightOnlyLinear
from slimops.nn.codebook import CodebookWeightOnlyLinear
from slimops.nn.packed import WeightSpec
from slimops.nn.quantized import (
    Fp8DynamicLinear,
    Int8DynamicLinear,
    Int8StaticLinear,
    Int8WeightOnlyLinear,
    ObservedLinear,
)
from slimops.nn.quantized_conv import Int8DynamicConv2d, Int8StaticConv2d, ObservedConv2d
from slimops.nn.sparse import BlockSparseLinear, MaskedConv2d, MaskedLinear, Sparse24Linear
from slimops.nn.block_sparse_int8 import BlockSparseInt8Linear
from slimops.nn.sparse24_int8 import Sparse24Int8Linear

__all__ = [
    "BlockSparseLinear",
    "Fp8DynamicLinear",
    "HalfLinear",
    "Int4WeightOnlyLinear",
    "CodebookWeightOnlyLinear",
    "Int8DynamicConv2d",
    "Int8DynamicLinear",
    "Int8StaticConv2d",
    "Int8StaticLinear",
    "Int8WeightOnlyLinear",
    "MaskedConv2d",
    "MaskedLinear",
    "ObservedConv2d",
    "ObservedLinear",
    "Sparse24Int8Linear",
    "Sparse24Linear",
    "WeightSpec",
    "BlockSparseInt8Linear",
]
