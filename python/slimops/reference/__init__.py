"""Pure-PyTorch references: the specification every kernel is tested against."""

from slimops.reference.clip import clip_grad_norm_fused_, multi_tensor_norm, multi_tensor_scale_
from slimops.reference.quantize import dequantize, quantize_per_channel, quantize_per_token

__all__ = [
    "clip_grad_norm_fused_",
    "dequantize",
    "multi_tensor_norm",
    "multi_tensor_scale_",
    "quantize_per_channel",
    "quantize_per_token",
]
