"""Which GPU implementation runs an op: CUDA C++ or Triton.

Every op with two GPU implementations asks :func:`choose` once per call. The
answer comes from, in order:

1. the innermost ``with slimops.use_backend("triton"|"cuda"):`` block;
2. the ``SLIMOPS_BACKEND`` environment variable, read once at import;
3. the op's rule in ``RULES``: a function of the problem size, written from
   measurements on the card named beside it;
4. whichever backend is built, if only one is.

This sits on the launch path of every GPU op, so it is kept to a ContextVar
read and a dict lookup (the cost is measured by bench/dispatch_overhead.py
and quoted in the README).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator

from slimops import _build

BACKENDS = ("cuda", "triton")

# op name -> rule(size) -> preferred backend, where `size` is the op's
# characteristic size (documented per op in slimops.ops).
# NOTE: the quantize rules are not measured yet (the foundation session had no
# GPU). CUDA C++ is the default because its launch path is shorter than
# Triton's Python launcher; update from `slimops bench --suite quantize` JSON.
RULES: dict[str, Callable[[int], str]] = {
    "quantize_per_token": lambda numel: "cuda",
    "quantize_per_channel": lambda numel: "cuda",
    "dequantize": lambda numel: "cuda",
}


def _validate(name: str | None, origin: str) -> str | None:
    if name in (None, "", "auto"):
        return None
    if name not in BACKENDS:
        raise ValueError(f"slimops: {origin} must be one of {BACKENDS} or 'auto', got {name!r}")
    return name


_env_choice = _validate(os.environ.get("SLIMOPS_BACKEND"), "SLIMOPS_BACKEND")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("slimops_backend", default=_env_choice)


def built_gpu_backends() -> tuple[str, ...]:
    """GPU backends compiled or importable in this installation."""
    return tuple(b for b, ok in (("cuda", _build.HAS_CUDA_KERNELS), ("triton", _build.HAS_TRITON)) if ok)


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force a GPU backend for ops called inside the block (``None``/'auto' restores the rules).

    Example::

        with slimops.use_backend("triton"):
            q, s = torch.ops.slimops.quantize_per_token(x)
    """
    token = _forced.set(_validate(name, "use_backend(name)"))
    try:
        yield
    finally:
        _forced.reset(token)


def current_override() -> str | None:
    """The forced backend in effect here, or None when the per-shape rules decide."""
    return _forced.get()


def choose(op: str, size: int) -> str:
    """The GPU backend that runs ``op`` for a problem of characteristic ``size``."""
    forced = _forced.get()
    if forced is not None:
        if forced == "cuda" and not _build.HAS_CUDA_KERNELS:
            raise RuntimeError(f"slimops.{op}: backend 'cuda' was requested but {_build.missing_backends()['cuda']}")
        if forced == "triton" and not _build.HAS_TRITON:
            raise RuntimeError(f"slimops.{op}: backend 'triton' was requested but triton is not installed")
        return forced
    if not _build.HAS_CUDA_KERNELS:
        if not _build.HAS_TRITON:
            raise RuntimeError(f"slimops.{op}: no GPU backend is available: {_build.missing_backends()}")
        return "triton"
    if not _build.HAS_TRITON:
        return "cuda"
    return RULES[op](size)
