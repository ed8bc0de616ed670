"""Triton kernel for ``slimops::weight_codebook4_linear``: codebook (NF4 / k-means) 4-bit weight-only linear.

The specification is :func:`slimops.reference.codebook4.weight_codebook4_linear`::

    out[m, n] = to(x.dtype, sum_k x[m, k] * T[c, q[n, k]] * s[n, g] + bias[n]),  g = k // group_size

with ``q`` 4-bit indices in int4's nibble layout (byte ``16c + i`` holds input ``32c + i`` low and
``32c + 16 + i`` high; :mod:`slimops.reference.int4`), ``T`` the ``[C, 16]`` codebook and
``c = 0`` (C = 1) or ``n`` (C = N).

Design: int4's tiled GEMM (kernels/int4.py, one kernel for both) with the dequantize step replaced by a table lookup:
the K tile (``BLOCK_K``, 32..128) divides ``group_size``, so each tile lies in one block; the
indices gather their row's codebook entries (``tl.load`` at ``T + c * 16 + q``: 64 bytes per row,
cached after the first touch), the values go into ``tl.dot`` in x's dtype, and the block's scale
is applied to the tile's fp32 result. NOTE: the entries are rounded to x's dtype before the dot
(fp16 / bf16 x), as every fp16 NF4 kernel does; fp32 x takes the "ieee" dot (no TF32). No
autotuning yet; GPU speed is unmeasured (no GPU in the session that wrote it).
"""

from __future__ import annotations

import torch

from slimops.kernels.int4 import nibble_linear


def weight_codebook4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    codebook: torch.Tensor,
    scale: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W4A16 linear with a 16-entry codebook looked up per weight.

    Args:
        x: float32/float16/bfloat16 ``[..., K]``, any strides.
        qweight: uint8 ``[N, ceil(K / 32) * 16]`` (:func:`slimops.reference.int4.pack_int4`).
        codebook: float ``[1, 16]`` or ``[N, 16]``.
        scale: float ``[N, ceil(K / group_size)]``.
        group_size: a positive multiple of 32.
        bias: optional float ``[N]``.

    Returns:
        ``[..., N]`` in ``x.dtype`` (contiguous): fp32 accumulation, rounded once.

    NOTE: the arguments are trusted: ``torch.ops.slimops.weight_codebook4_linear`` checks them (in C++) first.
    """
    t = codebook.contiguous()
    return nibble_linear(x, qweight, scale, t, 0 if t.shape[0] == 1 else t.stride(0), group_size, bias,
                         codebook=True)
