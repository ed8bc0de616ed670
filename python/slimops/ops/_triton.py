"""Hands the Triton launchers of kernels/ to the CUDA dispatch key.

With the CUDA kernels built, the C++ CUDA-key kernels (csrc/cuda/*_dispatch.cpp)
call a registered launcher only when the backend choice picks Triton. Without
them, the launcher is registered as the CUDA-key kernel itself, behind the same
choice, so that forcing ``"cuda"`` is still an error rather than a silent swap.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slimops import _build


def triton_usable() -> bool:
    return _build.HAS_C and _build.HAS_TRITON and torch.cuda.is_available()


def _behind_choice(name: str, fn: Callable) -> Callable:
    # NOTE: the dispatcher leaves out trailing arguments equal to their schema
    # defaults, so every launcher declares the schema's defaults too.
    def run(*args, **kwargs):
        _build._C._choose(name, 0, False)  # raises if "cuda" is forced; only Triton is there to pick
        return fn(*args, **kwargs)

    return run


def register_triton(impls: dict[str, Callable], *, cuda_cpp: bool = True) -> None:
    """Register ``{op name: Triton launcher}`` with the backend choice.

    ``cuda_cpp=False`` marks ops that have no CUDA C++ kernel at all (Triton is
    their only GPU implementation), so Python registers their CUDA key.
    """
    for name, fn in impls.items():
        _build._C._set_triton_impl(name, fn)
        if not (cuda_cpp and _build.HAS_CUDA_KERNELS):
            torch.library.register_kernel(f"slimops::{name}", "cuda", _behind_choice(name, fn))
