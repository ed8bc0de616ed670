"""Argument validation shared by the fake (meta) impls and the Triton launchers.

It mirrors csrc/quantize.cpp message for message, so an op fails the same way
on every backend and under torch.compile. ``torch._check`` keeps the checks
traceable with symbolic shapes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ChannelGeometry(NamedTuple):
    """A tensor seen as [outer, channels, inner] with one scale per channel."""

    outer: int
    channels: int
    inner: int


def _fail(op: str, msg: str) -> str:
    return f"slimops.{op}: {msg}"


def _check(cond, message) -> None:
    """``torch._check`` for symbolic shapes (fakes under torch.compile), a plain ``if`` otherwise.

    ``torch._check`` costs ~3 µs per call even on a plain bool; the Triton
    launchers run a dozen checks per call, which a decode-sized GEMM cannot pay.
    """
    if cond is True:
        return
    torch._check(cond, message)


def check_float_input(x: torch.Tensor, op: str, name: str) -> None:
    _check(
        x.dtype in FLOAT_DTYPES,
        lambda: _fail(op, f"{name} must be float32, float16 or bfloat16, got {x.dtype}"),
    )
    _check(
        x.layout == torch.strided,
        lambda: _fail(op, f"{name} must be a dense (strided) tensor, got layout {x.layout}"),
    )


def check_dtype(x: torch.Tensor, want: torch.dtype, op: str, name: str) -> None:
    _check(x.dtype == want, lambda: _fail(op, f"{name} must be {want}, got {x.dtype}"))
    _check(
        x.layout == torch.strided,
        lambda: _fail(op, f"{name} must be a dense (strided) tensor, got layout {x.layout}"),
    )


def check_same_device(a: torch.Tensor, b: torch.Tensor, op: str, name_a: str, name_b: str) -> None:
    _check(
        a.device == b.device,
        lambda: _fail(op, f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}"),
    )


def validate_quantize_per_token(x: torch.Tensor, op: str = "quantize_per_token") -> tuple[int, int]:
    """Returns ``(rows, K)`` for x [..., K]; shared by every per-row quantizer (``op`` names it)."""
    check_float_input(x, op, "x")
    _check(
        x.dim() >= 1,
        lambda: _fail(op, "x must have at least 1 dimension (rows of the last dimension), got a 0-d tensor"),
    )
    k = x.shape[-1]
    rows = math.prod(x.shape[:-1])
    _check(
        k > 0 or rows == 0,
        lambda: _fail(op, f"x must have a non-empty last dimension, got shape {tuple(x.shape)}"),
    )
    return rows, k


def validate_quantize_per_channel(x: torch.Tensor, axis: int) -> ChannelGeometry:
    op = "quantize_per_channel"
    check_float_input(x, op, "x")
    _check(x.dim() >= 1, lambda: _fail(op, "x must have at least 1 dimension, got a 0-d tensor"))
    _check(
        -x.dim() <= axis < x.dim(),
        lambda: _fail(
            op, f"axis must be in [{-x.dim()}, {x.dim()}) for x of shape {tuple(x.shape)}, got {axis}"
        ),
    )
    a = axis % x.dim()
    g = ChannelGeometry(math.prod(x.shape[:a]), x.shape[a], math.prod(x.shape[a + 1 :]))
    _check(
        g.channels == 0 or g.outer * g.inner > 0,
        lambda: _fail(
            op, f"x must have at least one element per channel, got shape {tuple(x.shape)} with axis {axis}"
        ),
    )
    return g


def channel_scale_shape(x: torch.Tensor, axis: int) -> list[int]:
    a = axis % x.dim()
    return [x.shape[d] if d == a else 1 for d in range(x.dim())]


def validate_dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> ChannelGeometry:
    op = "dequantize"
    check_dtype(q, torch.int8, op, "q")
    check_dtype(scale, torch.float32, op, "scale")
    check_same_device(q, scale, op, "q", "scale")
    _check(
        out_dtype in FLOAT_DTYPES,
        lambda: _fail(op, f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}"),
    )
    _check(
        scale.dim() == q.dim(),
        lambda: _fail(
            op,
            f"scale must have the rank of q (keepdim layout), got scale shape {tuple(scale.shape)} "
            f"for q of shape {tuple(q.shape)}",
        ),
    )
    varying = []
    for d in range(q.dim()):
        _check(
            scale.shape[d] == 1 or scale.shape[d] == q.shape[d],
            lambda: _fail(
                op,
                f"scale must have size 1 or {q.shape[d]} in dim {d}, got scale shape {tuple(scale.shape)} "
                f"for q of shape {tuple(q.shape)}",
            ),
        )
        if scale.shape[d] != 1:
            varying.append(d)
    if not varying:
        g = ChannelGeometry(1, 1, q.numel())
    else:
        first, last = varying[0], varying[-1]
        for d in range(first, last + 1):
            _check(
                scale.shape[d] == q.shape[d],
                lambda: _fail(
                    op,
                    "scale must vary along one contiguous run of dims (per-tensor, per-token or "
                    f"per-channel), got scale shape {tuple(scale.shape)} for q of shape {tuple(q.shape)}",
                ),
            )
        g = ChannelGeometry(
            math.prod(q.shape[:first]), math.prod(q.shape[first : last + 1]), math.prod(q.shape[last + 1 :])
        )
    if zero_point is not None:
        check_dtype(zero_point, torch.int32, op, "zero_point")
        check_same_device(q, zero_point, op, "q", "zero_point")
        _check(
            zero_point.shape == scale.shape,
            lambda: _fail(
                op, f"zero_point must have the shape of scale {tuple(scale.shape)}, got {tuple(zero_point.shape)}"
            ),
        )
    return g


# ---------------------------------------------------------------- clip-norm family


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: some order of its dims makes it contiguous (as c10's check)."""
    if t.numel() == 0:
        return True
    expected = 1
    for d in sorted(range(t.dim()), key=lambda d: t.stride(d)):
        if t.shape[d] == 1:
            continue
        if t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def validate_multi_tensor(tensors: list[torch.Tensor], op: str) -> None:
    """Mirrors csrc/clip.cpp: float, strided, dense tensors on one device."""
    for i, t in enumerate(tensors):
        _check(
            t.layout == torch.strided,
            lambda: _fail(
                op, f"tensors[{i}] must be a dense (strided) tensor, got layout {t.layout} "
                "(sparse gradients cannot be clipped by norm)"
            ),
        )
        _check(
            t.dtype in FLOAT_DTYPES,
            lambda: _fail(op, f"tensors[{i}] must be float32, float16 or bfloat16, got {t.dtype}"),
        )
        _check(
            t.layout != torch.strided or is_dense(t),
            lambda: _fail(
                op, f"tensors[{i}] must be non-overlapping and dense (contiguous or a permutation of it), "
                f"got strides {t.stride()} for shape {tuple(t.shape)}"
            ),
        )
        _check(
            t.device == tensors[0].device,
            lambda: _fail(
                op, f"tensors[{i}] is on {t.device} but tensors[0] is on {tensors[0].device}: "
                "one call takes tensors on one device"
            ),
        )


def validate_norm_type(norm_type: float, op: str) -> None:
    _check(
        norm_type > 0 and not math.isnan(norm_type),
        lambda: _fail(op, f"norm_type must be > 0 (or inf), got {norm_type}"),
    )


def validate_max_norm(max_norm: float, op: str) -> None:
    _check(
        max_norm >= 0 and not math.isnan(max_norm), lambda: _fail(op, f"max_norm must be >= 0, got {max_norm}")
    )


def validate_scalar_tensor(t: torch.Tensor, name: str, device: torch.device, op: str) -> None:
    _check(
        t.dtype == torch.float32 and t.numel() == 1,
        lambda: _fail(op, f"{name} must be a one-element float32 tensor, got {t.dtype} of shape {tuple(t.shape)}"),
    )
    _check(t.device == device, lambda: _fail(op, f"{name} must be on {device} with the tensors, got {t.device}"))


def validate_clip_grad_norm_fused(grads, max_norm, norm_type, inv_scale, found_inf) -> torch.device:
    """Every check of clip_grad_norm_fused_ (fake and Triton launcher alike); returns the device."""
    op = "clip_grad_norm_fused_"
    validate_multi_tensor(grads, op)
    validate_max_norm(max_norm, op)
    validate_norm_type(norm_type, op)
    device = grads[0].device if grads else torch.device("cpu")
    for name, t in (("inv_scale", inv_scale), ("found_inf", found_inf)):
        if t is not None:
            validate_scalar_tensor(t, name, device, op)
    return device
