"""Modules that ``slimops.convert`` swaps into models."""

from slimops.nn.half_linear import HalfLinear

__all__ = ["HalfLinear"]
