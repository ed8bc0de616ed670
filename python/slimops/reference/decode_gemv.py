"""Float64 reference of the decode GEMV family's weight formats (csrc/decode_gemv_plan.h), and
random layers in each, for the emulator tests and bench/decode_sweep.py.

Formats (``FORMATS``, in the kernels' order):

* ``int8_channel``: int8 ``[N, K]``, scale ``[N, 1]``; ``int8_group``: scale ``[N, K / group_size]``
  (:func:`slimops.reference.quant_mm.weight_int8_linear`);
* ``int4_asym`` / ``int4_sym``: the int4 nibble layout, ``(q - z) * s`` per group, ``z = 8`` when
  symmetric (:mod:`slimops.reference.int4`);
* ``codebook4``: int4 nibbles, ``w = codebook[c][q] * s[n, k // group_size]`` with a fp32 codebook
  ``[C, 16]``, ``c = 0`` (C = 1) or ``n`` (C = N);
* ``fp8_channel``: float8_e4m3fn ``[N, K]``, scale ``[N, 1]``.
"""

from __future__ import annotations

import torch

from slimops.reference.int4 import dequantize_int4, pack_int4, unpack_int4
from slimops.reference.quant_mm import expand_group_scale

FORMATS = ("int8_channel", "int8_group", "int4_asym", "int4_sym", "codebook4", "fp8_channel")
NIBBLE_FORMATS = ("int4_asym", "int4_sym", "codebook4")


def dequantize(fmt: str, qweight, scale, zero_point, codebook, group_size: int, k: int) -> torch.Tensor:
    """The float64 weight ``[N, K]`` that ``qweight`` stands for in format ``fmt``."""
    if fmt in ("int4_asym", "int4_sym"):
        return dequantize_int4(qweight, scale, zero_point, group_size, k)
    if fmt == "codebook4":
        q = unpack_int4(qweight, k).long()
        rows = torch.arange(q.shape[0], device=q.device) if codebook.shape[0] > 1 else torch.zeros(
            q.shape[0], dtype=torch.long, device=q.device)
        col = torch.arange(k, device=q.device) // group_size
        return codebook.double()[rows[:, None], q] * scale.double()[:, col]
    if fmt in ("int8_channel", "int8_group", "fp8_channel"):
        return qweight.double() * expand_group_scale(scale, k).double()
    raise ValueError(f"dequantize: format must be one of {FORMATS}, got {fmt!r}")


def random_layer(fmt: str, n: int, k: int, group_size: int, generator: torch.Generator, device="cpu",
                 shared_codebook: bool = False):
    """(qweight, scale, zero_point, codebook) of a random layer in ``fmt`` (fresh values, never zeros).

    Zero points are integers (as the int4 quantizer stores them); scales are positive.
    """
    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(device)

    zero = codebook = None
    if fmt in NIBBLE_FORMATS:
        groups = -(-k // group_size)
        q = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.uint8).to(device)
        scale = rand(n, groups) * 0.1 + 0.01
        if fmt == "int4_asym":
            zero = (rand(n, groups) * 15).round()
        if fmt == "codebook4":
            codebook = torch.randn(1 if shared_codebook else n, 16, generator=generator).to(device)
        return pack_int4(q), scale, zero, codebook
    if fmt == "fp8_channel":
        q = (torch.randn(n, k, generator=generator) * 4).to(torch.float8_e4m3fn).to(device)
        return q, rand(n, 1) + 0.5, None, None
    if fmt in ("int8_channel", "int8_group"):
        q = torch.randint(-128, 128, (n, k), generator=generator, dtype=torch.int8).to(device)
        groups = 1 if fmt == "int8_channel" else k // group_size
        return q, rand(n, groups) * 0.01 + 0.001, None, None
    raise ValueError(f"random_layer: format must be one of {FORMATS}, got {fmt!r}")
