"""The implementations of slimops' ops that a test can run here.

``impl.<op name>`` is a callable with the signature of ``slimops.ops.<op name>``:
- "cpu": torch.ops.slimops.* on CPU tensors (the C++ kernels);
- "triton-interpret": torch.ops.slimops.* on CPU tensors with "triton" forced: the op's C++
  checks, then its Triton launcher under TRITON_INTERPRET=1 (slimops.ops._triton);
- "cuda" / "triton": torch.ops.slimops.* on CUDA tensors with that backend forced.
Which ops each impl has comes from the op table (csrc/ops.cpp, slimops.backend.OPS).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import slimops
from slimops import _build
from slimops.backend import OPS

# Ops with a Triton launcher: the ones every impl here runs.
TRITON_OPS = {name for name, op in OPS.items() if op["triton"]}
# Ops whose only GPU implementation is Triton: the "cuda" impl does not exist for them.
TRITON_ONLY = {name for name in TRITON_OPS if not OPS[name]["cuda_cpp"]}


@dataclass
class Impl:
    name: str
    device: str
    # bf16 is silently wrong in the Triton interpreter.
    bf16: bool = True

    @property
    def backend(self) -> str | None:
        """What ``slimops.use_backend`` is given to run this implementation."""
        return {"cpu": None, "triton-interpret": "triton"}.get(self.name, self.name)

    def __getattr__(self, op: str) -> Callable:
        if op not in OPS:
            raise AttributeError(op)
        if self.name == "cpu":
            return getattr(slimops.ops, op)
        return _forced(self.backend, getattr(slimops.ops, op))


def _forced(backend: str, fn: Callable) -> Callable:
    def run(*args, **kwargs):
        with slimops.use_backend(backend):
            return fn(*args, **kwargs)

    return run


def get_impl(name: str) -> Impl:
    if name == "cpu":
        return Impl("cpu", "cpu")
    if name == "triton-interpret":
        return Impl(name, "cpu", bf16=False)
    return Impl(name, "cuda")


_interp = os.environ.get("TRITON_INTERPRET") == "1" and _build.HAS_TRITON
IMPLS = [
    pytest.param("cpu"),
    pytest.param(
        "triton-interpret",
        marks=pytest.mark.skipif(not _interp, reason="needs triton and TRITON_INTERPRET=1 (CPU machines)"),
    ),
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not _build.HAS_CUDA_KERNELS, reason=_build.missing_backends().get("cuda", "")),
        ],
    ),
    pytest.param(
        "triton",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not _build.HAS_TRITON, reason="triton is not installed")],
    ),
]

# name -> the marks (gpu, skipif) of that implementation's tests.
IMPL_MARKS = {p.values[0]: p.marks for p in IMPLS}

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def skip_unsupported(impl: Impl, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not impl.bf16:
        pytest.skip("bf16 is wrong under the Triton interpreter; tested on GPU")


def random_rows(shape, dtype, device, seed, *, layout="contiguous") -> torch.Tensor:
    """Fresh random values with magnitudes spread over 6 decades per row, never zero.

    ``layout`` returns such values through a non-contiguous view: "sliced"
    (row stride > K), "transposed" (column-major), "stepped" (last-dim stride 2).
    """
    g = torch.Generator().manual_seed(seed)
    *lead, k = shape
    rows = math.prod(lead)
    mag = 10.0 ** torch.empty(rows, 1).uniform_(-3, 3, generator=g)
    vals = torch.randn(rows, k, generator=g) * mag
    vals = torch.where(vals == 0, torch.full_like(vals, 0.25), vals).to(dtype=dtype, device=device)
    if layout == "contiguous":
        x = vals
    elif layout == "sliced":
        x = torch.randn(rows, k + 7, generator=g).to(dtype=dtype, device=device)[:, 3 : 3 + k]
        x.copy_(vals)
    elif layout == "transposed":
        x = vals.t().contiguous().t()
    elif layout == "stepped":
        x = torch.randn(rows, 2 * k, generator=g).to(dtype=dtype, device=device)[:, ::2]
        x.copy_(vals)
    else:
        raise ValueError(layout)
    # unflatten keeps the view (and its strides) where one exists.
    if not lead:
        return x[0]
    return x.unflatten(0, tuple(lead)) if len(lead) > 1 else x


# Half an ulp of each dtype, relative: the error bound of one rounding.
EPS = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def skip_missing(impl: Impl, op: str) -> None:
    """Skip the "cuda" impl of an op that has no CUDA C++ kernel."""
    if impl.name == "cuda" and op in TRITON_ONLY:
        pytest.skip(f"{op} has no CUDA C++ kernel (Triton only, DESIGN.md)")


def assert_within(got: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    """|got - exact| <= bound elementwise (float64), naming the first element out of bound."""
    err = (got.double().cpu() - exact).abs()
    bad = ~(err <= bound)
    if bad.any():
        i = bad.flatten().nonzero()[0].item()
        raise AssertionError(
            f"{what}: {bad.sum().item()} of {bad.numel()} elements out of bound; e.g. flat index {i}: "
            f"got {got.flatten()[i].item()}, exact {exact.flatten()[i].item()}, bound {bound.flatten()[i].item()}"
        )
