"""Which GPU implementation runs an op: CUDA C++ or Triton.

The choice is made in C++ on every GPU call (csrc/backend.h), so an op whose
rule picks CUDA C++ never enters Python. It comes from, in order:

1. the innermost ``with slimops.use_backend("triton"|"cuda"):`` block (per thread);
2. the ``SLIMOPS_BACKEND`` environment variable, read once at import;
3. the op's rule in ``RULES``: Triton from a problem size up, CUDA C++ below it;
4. whichever backend is available, if only one is.

A forced backend that is not available is an error naming the op, never a
silent fallback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from slimops import _build

BACKENDS = ("cuda", "triton")
_CODES = {None: 0, "cuda": 1, "triton": 2}
_NAMES = {0: None, 1: "cuda", 2: "triton"}
_UNSET = -1

# op -> smallest problem size at which Triton runs instead of CUDA C++;
# None: CUDA C++ at every size when both are built.
# Measured on an H200 (torch 2.11, triton 3.6, 2026-11-28; bench/results/*-h200-*):
# the CUDA C++ quantize and clip kernels beat Triton at every quick-suite shape
# (quantize_per_token 8192x8192 bf16: 66 vs 103 µs; GPT-2 clip: 374 vs 982 µs);
# weight_int8_linear's CUDA decode kernel wins at M = 1 and 16 (28-34 vs 114-166 µs)
# and Triton at M = 4096 (736 vs 6,043 µs). Between 17 and 4096 it is unmeasured.
RULES: dict[str, int | None] = {
    "quantize_per_token": None,
    "quantize_per_channel": None,
    "dequantize": None,
    "multi_tensor_norm": None,
    "multi_tensor_scale_": None,
    "clip_grad_norm_fused_": None,
    # Matmul rules count M, the activation rows: the CUDA C++ decode kernel
    # below it, Triton from it up (DESIGN.md: CUDA C++ for M <= 16).
    "weight_int8_linear": 17,
}


def _validate(name: str | None, origin: str) -> str | None:
    if name in (None, "", "auto"):
        return None
    if name not in BACKENDS:
        raise ValueError(f"slimops: {origin} must be one of {BACKENDS} or 'auto', got {name!r}")
    return name


_env_choice = _validate(os.environ.get("SLIMOPS_BACKEND"), "SLIMOPS_BACKEND")


def apply_rules() -> None:
    """Push ``RULES`` to the C++ side (done at import; call again after editing RULES)."""
    for op, min_size in RULES.items():
        _build._C._set_triton_min_size(op, 2**63 - 1 if min_size is None else int(min_size))


if _build.HAS_C:
    _build._C._set_default_backend(_CODES[_env_choice])
    apply_rules()


def built_gpu_backends() -> tuple[str, ...]:
    """GPU backends compiled or importable in this installation."""
    return tuple(b for b, ok in (("cuda", _build.HAS_CUDA_KERNELS), ("triton", _build.HAS_TRITON)) if ok)


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force a GPU backend for ops called by this thread inside the block.

    ``None`` or ``"auto"`` restores the per-shape rules. Example::

        with slimops.use_backend("triton"):
            q, s = torch.ops.slimops.quantize_per_token(x)
    """
    code = _CODES[_validate(name, "use_backend(name)")]
    if not _build.HAS_C:  # no ops to steer
        yield
        return
    previous = _build._C._thread_backend()
    _build._C._set_thread_backend(code)
    try:
        yield
    finally:
        _build._C._set_thread_backend(previous)


def current_override() -> str | None:
    """The backend forced for this thread (block or environment), or None when the rules decide."""
    if not _build.HAS_C:
        return _env_choice
    code = _build._C._thread_backend()
    return _env_choice if code == _UNSET else _NAMES[code]


def choose(op: str, size: int) -> str:
    """The GPU backend that would run ``op`` for a problem of ``size`` elements on this thread."""
    return _NAMES[_build._C._choose(op, size, _build.HAS_CUDA_KERNELS)]
