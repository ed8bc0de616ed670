"""Pure-PyTorch references: the specification every kernel is tested against."""

from slimops.reference.block_sparse_int8 import block_sparse_int8_linear
from slimops.reference.clip import clip_grad_norm_fused_, multi_tensor_norm, multi_tensor_scale_
from slimops.reference.codebook4 import weight_codebook4_linear
from slimops.reference.int4 import weight_int4_linear
from slimops.reference.quant_mm import (
    fp8_dynamic_linear,
    int8_dynamic_linear,
    int8_mm,
    quantize_fp8_per_row,
    weight_int8_linear,
)
from slimops.reference.quantize import dequantize, quantize_per_channel, quantize_per_token
from slimops.reference.sparse24_int8 import sparse24_int8_linear

__all__ = [
    "clip_grad_norm_fused_",
    "dequantize",
    "fp8_dynamic_linear",
    "int8_dynamic_linear",
    "int8_mm",
    "multi_tensor_norm",
    "multi_tensor_scale_",
    "quantize_fp8_per_row",
    "quantize_per_channel",
    "quantize_per_token",
    "sparse24_int8_linear",
    "weight_int4_linear",
    "weight_int8_linear",
    "weight_codebook4_linear",
    "block_sparse_int8_linear",
]
