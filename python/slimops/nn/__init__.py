"""Modules that ``slimops.convert`` swaps into models."""

from slimops.nn.half_linear import HalfLinear
from slimops.nn.quantized import (
    Fp8DynamicLinear,
    Int8DynamicLinear,
    Int8StaticLinear,
    Int8WeightOnlyLinear,
    ObservedLinear,
)

__all__ = [
    "Fp8DynamicLinear",
    "HalfLinear",
    "Int8DynamicLinear",
    "Int8StaticLinear",
    "Int8WeightOnlyLinear",
    "ObservedLinear",
]
