"""Typed wrappers around ``torch.ops.slimops.*``, with the fake impls beside them.

Importing this module registers the fakes and the CUDA-key implementations, so
it is imported by ``import slimops``.
"""

from slimops.ops.clip import clip_grad_norm_fused_, multi_tensor_norm, multi_tensor_scale_
from slimops.ops.quantize import dequantize, quantize_per_channel, quantize_per_token

__all__ = [
    "clip_grad_norm_fused_",
    "dequantize",
    "multi_tensor_norm",
    "multi_tensor_scale_",
    "quantize_per_channel",
    "quantize_per_token",
]
