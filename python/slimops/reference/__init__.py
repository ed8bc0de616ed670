"""Pure-PyTorch references: the specification every kernel is tested against."""

from slimops.reference.quantize import dequantize, quantize_per_channel, quantize_per_token

__all__ = ["dequantize", "quantize_per_channel", "quantize_per_token"]
