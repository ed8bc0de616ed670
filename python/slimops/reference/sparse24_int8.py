"""Pure-PyTorch reference of ``sparse24_int8_linear``: a 2:4 weight whose kept values are int8.

Format: the 2:4 compressed form of :mod:`slimops.ops.sparse24` (``values [N, K/2]`` in input order,
``meta uint8 [N, K/8]``: the 2-bit position of kept entry ``e`` of byte ``j`` in bits ``2e..2e+1``),
with ``values`` int8 and one float32 ``scale`` per output row. The weight is::

    W[n, 4c + p] = values[n, 2c + i] * scale[n]   where p = position of entry 2c + i, i in {0, 1}

and 0 at the 2 other inputs of every group of 4. The linear is exact here (float64), rounded once
to ``x.dtype``.
"""

from __future__ import annotations

import torch


def meta_positions(meta: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K/8]`` metadata -> the position (0..3) of every kept entry, uint8 ``[N, K/2]``."""
    shifts = torch.arange(0, 8, 2, device=meta.device, dtype=torch.uint8)
    return ((meta.unsqueeze(-1) >> shifts) & 3).reshape(meta.shape[0], -1)


def sparse24_int8_to_dense(values: torch.Tensor, meta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The dense float64 ``[N, K]`` weight that ``(values, meta, scale)`` stand for."""
    n, half = values.shape
    dense = torch.zeros(n, half // 2, 4, dtype=torch.float64, device=values.device)
    kept = values.double() * scale.double()[:, None]
    dense.scatter_(-1, meta_positions(meta).reshape(n, half // 2, 2).long(), kept.reshape(n, half // 2, 2))
    return dense.reshape(n, half * 2)


def sparse24_int8_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x W^T + bias`` in float64 for the weight of :func:`sparse24_int8_to_dense`, rounded once to ``x.dtype``."""
    out = x.double() @ sparse24_int8_to_dense(values, meta, scale).t()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)
