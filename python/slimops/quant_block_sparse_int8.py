"""Int8 weight-only on a block-sparse layer: the handler that keeps both savings.

``convert(model, [SparseConfig(pattern="block", ...), Int8WeightOnlyConfig()])`` first packs each layer's
kept tiles (:class:`~slimops.nn.BlockSparseLinear`); :class:`~slimops.Int8WeightOnlyConfig` then meets a
``BlockSparseLinear``, and this handler, registered for that pair, quantizes its stored tiles in place of
the dense stand-in (which would record a fallback: the sparse speed-up lost). The same happens when
``Int8WeightOnlyConfig()`` is applied to a model that is already block-sparse.
"""

from __future__ import annotations

from slimops.conversion import Unsupported, register_handler
from slimops.nn.block_sparse_int8 import BlockSparseInt8Linear
from slimops.nn.sparse import BlockSparseLinear
from slimops.quant import Int8WeightOnlyConfig


@register_handler(Int8WeightOnlyConfig, BlockSparseLinear)
def _block_sparse_int8_weight_only(module: BlockSparseLinear, config: Int8WeightOnlyConfig) -> BlockSparseInt8Linear:
    if config.group_size is not None:
        # NOTE: a registered handler wins over the dense stand-in, so this layer stays block-sparse float.
        raise Unsupported(
            f"BlockSparseInt8Linear keeps one scale per output row; Int8WeightOnlyConfig(group_size="
            f"{config.group_size}) is not supported on a block-sparse layer (use group_size=None)"
        )
    return BlockSparseInt8Linear.from_block_sparse(module)
