"""``Int8WeightOnlyConfig`` on a 2:4 layer: :class:`~slimops.nn.Sparse24Int8Linear`, both savings kept.

``slimops.convert(model, [SparseConfig(pattern="2:4", ...), Int8WeightOnlyConfig()])`` (or
``Int8WeightOnlyConfig()`` on a model that is 2:4 already) reaches a :class:`Sparse24Linear` with
this config. Without the handler below, the layer would stand in as its dense ``nn.Linear`` and be
quantized dense (a fallback: the 2:4 saving lost, see :func:`slimops.nn._convertible.linear_stand_in`).
A handler registered for the module's type wins over that stand-in (``conversion._handler_for``).
"""

from __future__ import annotations

from slimops.conversion import Unsupported, register_handler
from slimops.nn.sparse import Sparse24Linear
from slimops.nn.sparse24_int8 import Sparse24Int8Linear
from slimops.quant import Int8WeightOnlyConfig


@register_handler(Int8WeightOnlyConfig, Sparse24Linear)
def _sparse24_int8_weight_only(module: Sparse24Linear, config: Int8WeightOnlyConfig) -> Sparse24Int8Linear:
    if config.group_size is not None:
        # NOTE: the fused kernel takes one scale per output row; a per-group layer stays 2:4 float
        # (listed as skipped) rather than losing its sparsity silently.
        raise Unsupported(
            f"Int8WeightOnlyConfig(group_size={config.group_size}) on a 2:4 layer: the fused 2:4 + int8 kernel "
            "takes one scale per output row; use group_size=None"
        )
    return Sparse24Int8Linear.from_sparse24(module)
