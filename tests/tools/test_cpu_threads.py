"""CPU kernels that run ATen ops on worker threads keep the caller's thread-local state.

OpenMP workers do not inherit inference mode: before the fix, a layer large enough
to be split over threads raised "Inplace update to inference tensor outside
InferenceMode" under ``torch.inference_mode``.
"""

from __future__ import annotations

import pytest
import torch

import slimops
from slimops import reference as ref


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_weight_int8_linear_under_inference_mode(two_threads):
    n, k = 769, 64  # many weight-row blocks, so several tasks
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=_gen(0))
    scale = torch.rand(n, 1, generator=_gen(1)) / 100 + 1e-3
    x = torch.randn(5, k, generator=_gen(2))
    want = ref.quant_mm.weight_int8_linear(x.double(), w, scale.double(), None)
    with torch.inference_mode():
        got = slimops.ops.weight_int8_linear(x, w, scale, None)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_block_sparse_linear_under_inference_mode(two_threads):
    n, k, b = 256, 64, 16
    weight = torch.randn(n, k, generator=_gen(3))
    mask = torch.rand(n // b, k // b, generator=_gen(4)).repeat_interleave(b, 0).repeat_interleave(b, 1) > 0.5
    values, row_ptr, col_idx = slimops.ops.block_sparse_pack(weight, mask, b, b)
    x = torch.randn(5, k, generator=_gen(5))
    want = x.double() @ (weight.double() * mask).t()
    with torch.inference_mode():
        got = slimops.ops.block_sparse_linear(x, values, row_ptr, col_idx, None)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
