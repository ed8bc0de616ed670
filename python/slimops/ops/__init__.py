"""Typed wrappers around ``torch.ops.slimops.*``, with the fake impls beside them.

Importing this module registers the fakes and the CUDA-key implementations, so
it is imported by ``import slimops``.
"""

from slimops.ops.quantize import dequantize, quantize_per_channel, quantize_per_token

__all__ = ["dequantize", "quantize_per_channel", "quantize_per_token"]
