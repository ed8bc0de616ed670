"""Hands the Triton launchers of kernels/ to the op table (csrc/ops.cpp), in one call.

The table says which ops have a Triton launcher; the launcher is the function of
``slimops.kernels`` named after its op. The C++ kernels of those ops call it when
the backend choice picks Triton (csrc/backend.h), after the op's checks.

On a machine without a GPU, under ``TRITON_INTERPRET=1`` (the tests), the
launchers also take CPU tensors: forcing Triton (``slimops.use_backend("triton")``
or ``SLIMOPS_BACKEND=triton``) then runs them in Triton's interpreter through the
op itself, checks and fakes included. Otherwise CPU tensors always run the C++ kernels.
"""

from __future__ import annotations

import os

import torch

from slimops import _build


def triton_usable() -> bool:
    return _build.HAS_C and _build.HAS_TRITON and (torch.cuda.is_available() or _interpreting())


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def register_triton() -> None:
    """Register every launcher with the op table (done once, by ``import slimops``)."""
    if not triton_usable():
        return
    from slimops.kernels import block_sparse, clip, fp8, int4, int8_mm, masked_linear, quantize, weight_int8
    from slimops.kernels import block_sparse_int8, codebook4

    modules = (block_sparse, clip, fp8, int4, int8_mm, masked_linear, quantize, weight_int8)
    modules += (codebook4, block_sparse_int8)
    impls = {}
    for op in _build._C.ops:
        if op["triton"]:
            (impls[op["name"]],) = [getattr(m, op["name"]) for m in modules if hasattr(m, op["name"])]
    _build._C._set_triton_impls(impls, _interpreting() and not torch.cuda.is_available())
