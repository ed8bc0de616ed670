"""Pure-PyTorch references for the sparse family: masked, block-sparse and 2:4 linears.

These are the specification. Weights use ``nn.Linear``'s layout ``[N, K]``
(out_features, in_features); ``y = x W^T + b``. Results are exact in float64
here; kernels accumulate in fp32 and round once to x's dtype.

Formats:

* mask: bool ``[N, K]``, True where the weight is kept.
* block-sparse (BSR over the weight): ``values [nnz, block_n, block_k]`` (the
  kept tiles, in row-major tile order), ``row_ptr int32 [N / block_n + 1]``
  and ``col_idx int32 [nnz]`` (the tile column of each kept tile). A tile is
  kept when any element of it is kept (mask) or non-zero (no mask).
* 2:4: in every group of 4 consecutive inputs of a row at most 2 weights are
  non-zero. ``values [N, K / 2]`` holds the 2 kept weights of each group, in
  input order; ``indices uint8 [N, K / 2]`` their positions (0..3) in the
  group. The kernel-side metadata layout is built from these by
  ``sparse24_compress`` (see kernels and csrc/cuda for the packed form).
"""

from __future__ import annotations

import torch


def _masked(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return weight.double().masked_fill(~mask, 0.0)


def masked_linear(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x (W ⊙ M)^T + b`` in float64, rounded once to ``x.dtype``.

    ``W ⊙ M`` is a select: a pruned weight contributes exactly 0 even if it holds inf or NaN.
    """
    w = _masked(weight, mask)
    out = x.double() @ w.t()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)


def masked_linear_grad_input(grad: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``grad_x = grad (W ⊙ M)``: grad ``[..., N]`` -> ``[..., K]`` in grad's dtype."""
    return (grad.double() @ _masked(weight, mask)).to(grad.dtype)


def masked_linear_grad_weight(grad: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``grad_W = (grad^T x) ⊙ M`` summed over every leading dim: ``[N, K]`` in x's dtype.

    Pruned weights get an exact zero gradient, so no optimizer step can revive them
    (with weight decay too, as long as the weight itself is zero).
    """
    n, k = grad.shape[-1], x.shape[-1]
    g = grad.reshape(-1, n).double()
    return (g.t() @ x.reshape(-1, k).double()).masked_fill(~mask, 0.0).to(x.dtype)


def block_sparse_pack(
    weight: torch.Tensor, mask: torch.Tensor | None, block_n: int, block_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values, row_ptr, col_idx)`` of the kept ``block_n x block_k`` tiles of ``weight [N, K]``.

    Kept values are ``weight * mask`` (so the packed weight equals the masked one).
    """
    n, k = weight.shape
    keep = (weight != 0) if mask is None else mask
    w = weight if mask is None else weight * mask.to(weight.dtype)
    tiles = w.reshape(n // block_n, block_n, k // block_k, block_k).permute(0, 2, 1, 3)
    kept = keep.reshape(n // block_n, block_n, k // block_k, block_k).any(dim=3).any(dim=1)  # [N/bn, K/bk]
    rows, cols = kept.nonzero(as_tuple=True)
    values = tiles[rows, cols].contiguous()
    counts = kept.sum(dim=1)
    row_ptr = torch.zeros(n // block_n + 1, dtype=torch.int32, device=weight.device)
    row_ptr[1:] = counts.cumsum(0).to(torch.int32)
    return values, row_ptr, cols.to(torch.int32)


def block_sparse_to_dense(values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, k: int) -> torch.Tensor:
    """The dense ``[N, K]`` weight a packed one stands for (zeros outside the kept tiles)."""
    nnz, bn, bk = values.shape
    rows = row_ptr.numel() - 1
    dense = torch.zeros(rows * bn, k, dtype=values.dtype, device=values.device)
    block_row = torch.repeat_interleave(torch.arange(rows, device=values.device), (row_ptr[1:] - row_ptr[:-1]).long())
    for t in range(nnz):
        r, c = int(block_row[t]), int(col_idx[t])
        dense[r * bn : (r + 1) * bn, c * bk : (c + 1) * bk] = values[t]
    return dense


def block_sparse_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x W^T + b`` for the packed weight, float64, rounded once to ``x.dtype``."""
    w = block_sparse_to_dense(values, row_ptr, col_idx, x.shape[-1]).double()
    out = x.double() @ w.t()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)


def is_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Whether every group of 4 consecutive inputs of every row holds at most 2 non-zeros."""
    n, k = weight.shape
    return bool(((weight.reshape(n, k // 4, 4) != 0).sum(-1) <= 2).all())


def sparse24_split(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [N, K/2], indices uint8 [N, K/2])``: the 2 kept weights of each group of 4 and their positions.

    A group with fewer than 2 non-zeros keeps zeros at the lowest free positions,
    so every group stores exactly 2 entries in increasing position order.
    """
    n, k = weight.shape
    g = weight.reshape(n, k // 4, 4)
    nz = g != 0
    # Rank positions: non-zeros first (in order), then zeros (in order); keep the first 2.
    order = torch.argsort((~nz).to(torch.int8) * 4 + torch.arange(4, device=weight.device), dim=-1)[..., :2]
    idx = order.sort(dim=-1).values
    vals = torch.gather(g, -1, idx)
    return vals.reshape(n, k // 2), idx.reshape(n, k // 2).to(torch.uint8)


def sparse24_to_dense(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`sparse24_split`."""
    n, half = values.shape
    dense = torch.zeros(n, half // 2, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, indices.reshape(n, half // 2, 2).long(), values.reshape(n, half // 2, 2))
    return dense.reshape(n, half * 2)


def sparse24_linear(
    x: torch.Tensor, weight_2_4: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x W^T + b`` for a 2:4 weight given dense, float64, rounded once to ``x.dtype``."""
    out = x.double() @ weight_2_4.double().t()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)
