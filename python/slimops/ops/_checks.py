"""Argument checks of the fakes: the ops' own C++ checks, plus what decides output shapes.

Every argument of a call is checked once, in C++: the op table (csrc/ops.cpp)
runs the op's validator (csrc/<family>.cpp) before it chooses a backend, and
the kernels behind it (CPU, CUDA C++, Triton) trust the arguments. Under
tracing (``torch.compile``, ``FakeTensorMode``, opcheck) the fakes run instead:

* when every size is concrete they call the same C++ checks through
  ``slimops._C._check_<op>`` (:func:`cpp_checks`), so tracing fails with the
  very message a real call gives;
* with symbolic sizes (dynamic shapes) those cannot run; the fakes then check
  only what decides the shapes they return (the ``*_shape`` helpers of the
  family modules, with ``torch._check`` so they stay traceable), and anything
  else is reported by the op when the compiled code calls it.

This module holds what the families share; each family has its own
``_checks_<family>.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from slimops import _build

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class MatmulGeometry(NamedTuple):
    """A linear-like op: x ``[..., K]`` (M rows) times a weight ``[N, K]``."""

    m: int  # rows of the activation (product of its leading dims)
    n: int  # out_features
    k: int  # in_features
    groups: int = 1  # weight scales per output row (per-group quantized weights)


class ChannelGeometry(NamedTuple):
    """A tensor seen as [outer, channels, inner] with one scale per channel."""

    outer: int
    channels: int
    inner: int


def _concrete(arg) -> bool:
    if isinstance(arg, torch.Tensor):
        return not arg._has_symbolic_sizes_strides
    if isinstance(arg, (list, tuple)):
        return all(_concrete(a) for a in arg)
    return not isinstance(arg, torch.SymInt | torch.SymFloat | torch.SymBool)


def cpp_checks(op: str, *args) -> None:
    """The checks ``torch.ops.slimops.<op>`` runs on a real call, on fake tensors with concrete sizes."""
    if all(_concrete(a) for a in args):
        getattr(_build._C, f"_check_{op}")(*args)


def _fail(op: str, msg: str) -> str:
    return f"slimops.{op}: {msg}"


def check(cond, op: str, message: str) -> None:
    """``torch._check`` with a slimops message; on symbolic sizes it records a guard instead of branching."""
    torch._check(cond, lambda: _fail(op, message))


def check_min_dim(t: torch.Tensor, op: str, name: str, what: str = "[..., K]") -> None:
    check(t.dim() >= 1, op, f"{name} must have at least 1 dimension {what}, got a 0-d tensor")


def check_2d(t: torch.Tensor, op: str, name: str, what: str) -> None:
    check(t.dim() == 2, op, f"{name} must be 2-D {what}, got shape {tuple(t.shape)}")


def linear_shape(x: torch.Tensor, n) -> tuple:
    """The output shape ``[..., N]`` of a linear on x ``[..., K]``."""
    return (*x.shape[:-1], n)


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
