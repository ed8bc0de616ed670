"""Which GPU implementation runs an op: CUDA C++ or Triton.

The choice is made in C++ on every GPU call (the op table, csrc/ops.cpp, and
csrc/backend.h), so an op whose rule picks CUDA C++ never enters Python. It
comes from, in order:

1. the innermost ``with slimops.use_backend("triton"|"cuda"):`` block (per thread);
2. the ``SLIMOPS_BACKEND`` environment variable, read once at import;
3. the op's rule in ``RULES``: Triton from a problem size up, CUDA C++ below it;
4. whichever backend is available, if only one is.

A forced backend that is not available is an error naming the op, never a
silent fallback. Ops with a single GPU implementation (Triton only, or CUDA C++
only as ``sparse24_linear``) have no rule; forcing "cuda" on a Triton-only op
is an error, and ``sparse24_linear`` ignores the choice.

CPU tensors always run the C++ kernels, with one exception for the tests: under
``TRITON_INTERPRET=1`` on a machine without a GPU, forcing "triton" runs an op's
Triton launcher in Triton's interpreter (see :mod:`slimops.ops._triton`).
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

# The op table (csrc/ops.cpp), one dict per op: name, composite, cuda_cpp (a CUDA C++
# kernel in the sources), cuda_cpp_built, triton (a launcher in kernels/),
# triton_min_size and size (what the rule counts).
OPS: dict[str, dict] = {op["name"]: dict(op) for op in _build._C.ops} if _build.HAS_C else {}

# op -> smallest problem size at which Triton runs instead of CUDA C++ (None: CUDA C++
# at every size), for the ops that have both; the defaults, and the measurements
# behind them, are in the op table. Edit, then call apply_rules().
RULES: dict[str, int | None] = {
    name: op["triton_min_size"] for name, op in OPS.items() if op["cuda_cpp"] and op["triton"]
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
