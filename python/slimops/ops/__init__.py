"""Typed wrappers around ``torch.ops.slimops.*``, with the fake impls beside them.

Importing this module registers the fakes and hands the Triton launchers to the
op table (csrc/ops.cpp), so it is imported by ``import slimops``.
"""

from slimops.ops.clip import clip_grad_norm_fused_, multi_tensor_norm, multi_tensor_scale_
from slimops.ops.int4 import weight_int4_linear
from slimops.ops.codebook4 import weight_codebook4_linear
from slimops.ops.quant_mm import (
    fp8_dynamic_linear,
    int8_dynamic_linear,
    int8_mm,
    quantize_fp8_per_row,
    weight_int8_linear,
)
from slimops.ops.quantize import dequantize, quantize_per_channel, quantize_per_token
from slimops.ops.sparse import (
    block_sparse_linear,
    block_sparse_pack,
    block_sparse_to_dense,
    masked_linear,
    masked_linear_grad_input,
    masked_linear_grad_weight,
)
from slimops.ops.sparse24 import sparse24_compress, sparse24_linear, sparse24_to_dense
from slimops.ops.block_sparse_int8 import block_sparse_int8_linear
from slimops.ops.sparse24_int8 import sparse24_int8_linear
from slimops.ops._triton import register_triton

register_triton()

__all__ = [
    "block_sparse_linear",
    "block_sparse_pack",
    "block_sparse_to_dense",
    "clip_grad_norm_fused_",
    "dequantize",
    "fp8_dynamic_linear",
    "int8_dynamic_linear",
    "int8_mm",
    "masked_linear",
    "masked_linear_grad_input",
    "masked_linear_grad_weight",
    "multi_tensor_norm",
    "multi_tensor_scale_",
    "quantize_fp8_per_row",
    "quantize_per_channel",
    "quantize_per_token",
    "sparse24_compress",
    "sparse24_int8_linear",
    "sparse24_linear",
    "sparse24_to_dense",
    "weight_int4_linear",
    "weight_int8_linear",
    "weight_codebook4_linear",
    "block_sparse_int8_linear",
]
