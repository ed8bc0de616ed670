"""Pure-PyTorch reference of the int4 weight-only family, and the packed format it defines.

Format (what ``qweight`` holds, and why):

* ``q[n, k]`` is an unsigned nibble 0..15. The weight is ``w[n, k] = (q[n, k] - z[n, g]) * s[n, g]``
  with ``g = k // group_size``: ``scale`` and ``zero_point`` are float ``[N, ceil(K / group_size)]``
  (a float zero point, as in HQQ and torch's tinygemm int4, so the group's minimum maps exactly to
  0 and its maximum to 15). Symmetric weights have no zero point: ``z = 8`` (q - 8 in -8..7).
* Two nibbles per byte, in chunks of 32 inputs: byte ``16 c + i`` (i < 16) of a row holds input
  ``32 c + i`` in its low nibble and input ``32 c + 16 + i`` in its high nibble. A row is
  ``ceil(K / 32) * 16`` bytes; nibbles past K are 0. Why not two adjacent inputs per byte: one
  16-byte load then yields 16 consecutive inputs from the low nibbles (mask) and the next 16 from
  the high nibbles (shift), which is one 16-lane fp32 vector each with no shuffle to re-interleave
  pairs (the same as llama.cpp's Q4_0 blocks). ``group_size`` is a multiple of 32, so a chunk
  never straddles two groups.

The linear is exact here (float64), rounded once to ``x.dtype``.
"""

from __future__ import annotations

import torch

CHUNK = 32  # inputs per packed chunk (16 bytes)


def packed_bytes(k: int) -> int:
    """Bytes per packed row for ``k`` inputs."""
    return -(-k // CHUNK) * (CHUNK // 2)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K]`` nibbles (0..15) -> uint8 ``[N, ceil(K / 32) * 16]`` in the chunked layout."""
    n, k = q.shape
    padded = torch.zeros(n, -(-k // CHUNK) * CHUNK, dtype=torch.uint8, device=q.device)
    padded[:, :k] = q
    chunks = padded.reshape(n, -1, 2, CHUNK // 2)  # [N, chunks, low/high half, 16]
    return (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(n, -1)


def unpack_int4(qweight: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: uint8 ``[N, K]`` nibbles."""
    n = qweight.shape[0]
    b = qweight.reshape(n, -1, CHUNK // 2)
    return torch.stack((b & 0x0F, b >> 4), dim=2).reshape(n, -1)[:, :k]


def dequantize_int4(
    qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, group_size: int, k: int
) -> torch.Tensor:
    """float64 ``[N, K]``: ``(q - z) * s`` per group (``z = 8`` when ``zero_point`` is None)."""
    q = unpack_int4(qweight, k).double()
    group = torch.arange(k, device=qweight.device) // group_size  # the group of every input
    z = 8.0 if zero_point is None else zero_point.double()[:, group]
    return (q - z) * scale.double()[:, group]


def weight_int4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W4A16: ``x @ dequantize_int4(...)^T + bias``, exact in float64, rounded once to ``x.dtype``."""
    k = x.shape[-1]
    out = x.double() @ dequantize_int4(qweight, scale, zero_point, group_size, k).t()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)
