"""``BlockSparseInt8Linear``: a block-sparse weight whose stored tiles are int8, one fp32 scale per output row.

It is what ``convert(model, [SparseConfig(pattern="block", ...), Int8WeightOnlyConfig()])`` makes of each
linear layer, keeping both savings: the zero tiles are not stored (nor read), and the stored ones take one
byte per weight. The layout is :class:`~slimops.nn.BlockSparseLinear`'s BSR (``values [nnz, block_n,
block_k]``, ``row_ptr``, ``col_idx``) with int8 ``values`` and ``weight_scale`` fp32 ``[N]``;
:func:`slimops.ops.block_sparse_int8_linear` runs it. The quantization is dense int8 weight-only's,
per output channel (symmetric, absmax / 127, round half to even): on the same pruned weight the stored
int8 values and scales are exactly :class:`~slimops.nn.Int8WeightOnlyLinear`'s.
"""

from __future__ import annotations

import torch
from torch import nn

import slimops
from slimops.nn.quantized import _QuantizedLinear, _check_scales
from slimops.nn.sparse import BlockSparseLinear
from slimops.ops.block_sparse_int8 import block_sparse_int8_dense_weight


class BlockSparseInt8Linear(_QuantizedLinear):
    """``y = x (Q * scale)^T + b`` over the stored int8 tiles of a block-sparse weight; computes in ``x.dtype``.

    Buffers: ``values`` int8 ``[nnz, block_n, block_k]``, ``row_ptr`` int32 ``[N / block_n + 1]``,
    ``col_idx`` int32 ``[nnz]``, ``weight_scale`` fp32 ``[N]``, ``bias`` fp32 ``[N]`` or None.
    ``weight`` is a :class:`~slimops.nn.packed.WeightSpec`; :meth:`dequantize` gives the float weight.
    """

    _stored = ("values", "row_ptr", "col_idx", "weight_scale")
    _fixed_dtype_buffers = ("values", "row_ptr", "col_idx", "weight_scale", "bias")

    def __init__(
        self,
        values: torch.Tensor,
        row_ptr: torch.Tensor,
        col_idx: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        in_features: int,
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(in_features, (row_ptr.shape[0] - 1) * values.shape[1], bias, compute_dtype)
        self.block_size = (values.shape[1], values.shape[2])
        self.register_buffer("values", values)  # int8 [nnz, block_n, block_k]
        self.register_buffer("row_ptr", row_ptr)  # int32 [N / block_n + 1]
        self.register_buffer("col_idx", col_idx)  # int32 [nnz]
        self.register_buffer("weight_scale", weight_scale)  # fp32 [N]

    @classmethod
    def from_block_sparse(cls, layer: BlockSparseLinear) -> BlockSparseInt8Linear:
        """Quantize the stored tiles of ``layer`` (same tiles, same index arrays), per output row."""
        dense = layer.to_dense()
        if dense.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            dense = dense.float()
        q, scale, _ = slimops.ops.quantize_per_channel(dense, 0, True)  # int8 [N, K], fp32 [N, 1]
        bn, bk = layer.block_size
        n, k = q.shape
        tiles = q.reshape(n // bn, bn, k // bk, bk).permute(0, 2, 1, 3)  # [rows, cols, bn, bk]
        counts = (layer.row_ptr[1:] - layer.row_ptr[:-1]).long()
        block_row = torch.repeat_interleave(torch.arange(n // bn, device=q.device), counts)
        values = tiles[block_row, layer.col_idx.long()].contiguous()
        bias = None if layer.bias is None else layer.bias.detach().float().clone()
        return cls(
            values,
            layer.row_ptr.clone(),
            layer.col_idx.clone(),
            _check_scales(scale.reshape(n), "weight"),
            bias,
            k,
            dense.dtype,
        )

    @classmethod
    def from_float(
        cls, linear: nn.Module, mask: torch.Tensor | None = None, block: int | tuple[int, int] = 64
    ) -> BlockSparseInt8Linear:
        """Pack ``linear``'s kept tiles (:meth:`BlockSparseLinear.from_dense`), then quantize them."""
        return cls.from_block_sparse(BlockSparseLinear.from_dense(linear, mask, block))

    @property
    def density(self) -> float:
        """The fraction of tiles that are stored."""
        tiles = (self.out_features // self.block_size[0]) * (self.in_features // self.block_size[1])
        return self.values.shape[0] / max(tiles, 1)

    def dequantize(self) -> torch.Tensor:
        w = block_sparse_int8_dense_weight(self.in_features, self.values, self.row_ptr, self.col_idx, self.weight_scale)
        return w.to(self.compute_dtype)

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        return slimops.ops.block_sparse_int8_linear(
            input, self.values, self.row_ptr, self.col_idx, self.weight_scale, self.bias
        )

    def extra_repr(self) -> str:
        bn, bk = self.block_size
        return f"{super().extra_repr()}, block={bn}x{bk}, density={self.density:.3f}"
