"""Argument validation of the quantized matmul family, for the fakes and the Triton launchers.

Mirrors csrc/quant_mm.cpp message for message, so an op fails the same way on
every backend and under torch.compile.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from slimops.ops._checks import (
    FLOAT_DTYPES,
    _check,
    _fail,
    check_dtype,
    check_float_input,
    check_same_device,
    validate_quantize_per_token,
)


class MatmulGeometry(NamedTuple):
    m: int  # rows of the activation (product of its leading dims)
    n: int  # out_features
    k: int  # in_features
    groups: int = 1  # weight scales per output row (weight_int8_linear)


def _check_vector(t: torch.Tensor, length: int, op: str, name: str, what: str) -> None:
    """``t`` is ``[length]`` or ``[length, 1]``."""
    _check(
        (t.dim() == 1 and t.shape[0] == length) or (t.dim() == 2 and t.shape[0] == length and t.shape[1] == 1),
        lambda: _fail(op, f"{name} must have shape [{length}] or [{length}, 1] ({what}), got {tuple(t.shape)}"),
    )


def _check_weight(weight: torch.Tensor, dtype: torch.dtype, k: int, op: str, x_name: str) -> int:
    check_dtype(weight, dtype, op, "weight")
    _check(
        weight.dim() == 2,
        lambda: _fail(op, f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}"),
    )
    _check(
        weight.shape[1] == k,
        lambda: _fail(
            op, f"weight has in_features {weight.shape[1]} but {x_name} has K = {k} (mismatched K): "
            "weight must be [N, K] as in nn.Linear"
        ),
    )
    return weight.shape[0]


def _check_bias(bias: torch.Tensor | None, n: int, device: torch.device, op: str) -> None:
    if bias is None:
        return
    check_float_input(bias, op, "bias")
    _check(
        bias.dim() == 1 and bias.shape[0] == n,
        lambda: _fail(op, f"bias must have shape [{n}] (out_features), got {tuple(bias.shape)}"),
    )
    _check(bias.device == device, lambda: _fail(op, f"bias must be on {device}, got {bias.device}"))


# The largest K int8_mm takes (kInt8MaxK in csrc/quant_mm.h).
INT8_MAX_K = (1 << 17) - 1


def validate_int8_mm(a, b, a_scale, b_scale, bias, out_dtype) -> MatmulGeometry:
    op = "int8_mm"
    check_dtype(a, torch.int8, op, "a")
    _check(a.dim() == 2, lambda: _fail(op, f"a must be 2-D [M, K], got shape {tuple(a.shape)}"))
    m, k = a.shape
    check_dtype(b, torch.int8, op, "b")
    _check(b.dim() == 2, lambda: _fail(op, f"b must be 2-D [N, K], got shape {tuple(b.shape)}"))
    _check(
        b.shape[1] == k,
        lambda: _fail(op, f"b has K = {b.shape[1]} but a has K = {k} (mismatched K): b must be [N, K]"),
    )
    # Every product is at most 2^14 in size, so K terms fit the int32 accumulator while K < 2^17.
    _check(
        k <= INT8_MAX_K,
        lambda: _fail(op, f"K must be at most {INT8_MAX_K} (the exact int32 accumulator could overflow past it), got K = {k}"),
    )
    n = b.shape[0]
    check_dtype(a_scale, torch.float32, op, "a_scale")
    _check_vector(a_scale, m, op, "a_scale", "one scale per row of a")
    check_dtype(b_scale, torch.float32, op, "b_scale")
    _check_vector(b_scale, n, op, "b_scale", "one scale per row of b")
    for name, t in (("b", b), ("a_scale", a_scale), ("b_scale", b_scale)):
        check_same_device(a, t, op, "a", name)
    _check_bias(bias, n, a.device, op)
    _check(
        out_dtype in FLOAT_DTYPES,
        lambda: _fail(op, f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}"),
    )
    return MatmulGeometry(m, n, k)


def validate_weight_int8_linear(x, weight, scale, bias) -> MatmulGeometry:
    op = "weight_int8_linear"
    check_float_input(x, op, "x")
    _check(x.dim() >= 1, lambda: _fail(op, "x must have at least 1 dimension [..., K], got a 0-d tensor"))
    k = x.shape[-1]
    n = _check_weight(weight, torch.int8, k, op, "x")
    check_float_input(scale, op, "scale")
    _check(
        scale.dim() in (1, 2) and scale.shape[0] == n,
        lambda: _fail(
            op, f"scale must be [{n}] (per channel) or [{n}, groups] (per group), got shape {tuple(scale.shape)}"
        ),
    )
    groups = scale.shape[1] if scale.dim() == 2 else 1
    _check(
        groups >= 1 and k % groups == 0,
        lambda: _fail(
            op, f"scale has {groups} groups per row, which must divide K = {k} "
            "(group_size = K / groups must be a whole number)"
        ),
    )
    check_same_device(x, weight, op, "x", "weight")
    check_same_device(x, scale, op, "x", "scale")
    _check_bias(bias, n, x.device, op)
    return MatmulGeometry(math.prod(x.shape[:-1]), n, k, groups)


def validate_quantize_fp8_per_row(x) -> tuple[int, int]:
    """Returns ``(rows, K)`` for x [..., K]: the same rules as the int8 per-token quantizer."""
    return validate_quantize_per_token(x, "quantize_fp8_per_row")
