"""The quantized matmul family's bad input: clear errors, the same under fake tensors.

opcheck, torch.compile and CUDA graphs run from the op test table (tests/ops/test_op_db.py).
"""

from __future__ import annotations

import pytest
import torch

import slimops
from slimops import reference as ref
from tests.backends import IMPLS, TRITON_ONLY, get_impl

OPS = torch.ops.slimops
# Forcing "cuda" leaves these without a GPU kernel: Triton only, or composed from one.
NEEDS_TRITON = TRITON_ONLY | {"int8_dynamic_linear", "fp8_dynamic_linear"}


def _weights(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    wi, wi_scale, _ = ref.quantize_per_channel(w, 0)
    wf, wf_scale = ref.quantize_fp8_per_row(w)
    return wi, wi_scale, wf, wf_scale


# --------------------------------------------------------------- bad input


def _bad_inputs(device):
    d = lambda t: t.to(device)  # noqa: E731
    a, b = d(torch.randint(-127, 128, (4, 8), dtype=torch.int8)), d(torch.randint(-127, 128, (6, 8), dtype=torch.int8))
    sa, sb = d(torch.rand(4)), d(torch.rand(6))
    x = d(torch.randn(4, 8))
    mm, w8, f8 = "int8_mm", "weight_int8_linear", "quantize_fp8_per_row"
    return [
        (mm, (a.float(), b, sa, sb, None, torch.float32), "a must be"),
        (mm, (a, b.float(), sa, sb, None, torch.float32), "b must be"),
        (mm, (a.reshape(2, 2, 8), b, sa, sb, None, torch.float32), "a must be 2-D"),
        (mm, (a, b[:, :5], sa, sb, None, torch.float32), "mismatched K"),
        (mm, (a, b, sa[:3], sb, None, torch.float32), r"a_scale must have shape \[4\] or \[4, 1\]"),
        (mm, (a, b, sa.half(), sb, None, torch.float32), "a_scale must be"),
        (mm, (a, b, sa, sb.reshape(2, 3), None, torch.float32), r"b_scale must have shape \[6\] or \[6, 1\]"),
        (mm, (a, b, sa, sb, d(torch.rand(5)), torch.float32), r"bias must have shape \[6\]"),
        (mm, (a, b, sa, sb, d(torch.rand(6)).int(), torch.float32), "bias must be float32, float16 or bfloat16"),
        (mm, (a, b, sa, sb, None, torch.int32), "out_dtype must be float32, float16 or bfloat16"),
        # Past 2^17 - 1 terms of up to 128 * 128 the int32 accumulator could overflow: refused.
        (mm, (d(torch.full((1, 1 << 17), -128, dtype=torch.int8)), d(torch.full((1, 1 << 17), -128, dtype=torch.int8)),
              sa[:1], sb[:1], None, torch.float32), "K must be at most 131071"),
        (w8, (a, b, sb, None), "x must be float32, float16 or bfloat16"),
        (w8, (x, b.float(), sb, None), "weight must be"),
        (w8, (x, b[:, :5], sb, None), "mismatched K"),
        (w8, (x, b, d(torch.rand(6, 3)), None), "3 groups per row, which must divide K = 8"),
        (w8, (x, b, d(torch.rand(7)), None), r"scale must be \[6\] \(per channel\) or \[6, groups\]"),
        (w8, (x, b, d(torch.ones(6, dtype=torch.int32)), None), "scale must be float32, float16 or bfloat16"),
        (w8, (x, b, sb, d(torch.rand(6, 1))), r"bias must have shape \[6\]"),
        (f8, (a,), "x must be float32, float16 or bfloat16"),
        (f8, (d(torch.tensor(1.0)),), "x must have at least 1 dimension"),
        (f8, (d(torch.randn(3, 0)),), "x must have a non-empty last dimension"),
    ]


@pytest.fixture(params=IMPLS)
def impl(request):
    return get_impl(request.param)


def test_bad_input_gets_a_clear_error(impl):
    for name, args, pattern in _bad_inputs(impl.device):
        if impl.name == "cuda" and name in TRITON_ONLY:
            continue
        with pytest.raises((RuntimeError, ValueError), match=pattern):
            getattr(impl, name)(*args)
        with pytest.raises((RuntimeError, ValueError), match=f"slimops.{name}"):
            getattr(impl, name)(*args)


def test_bad_input_under_fake_tensors():
    """torch.compile sees the same errors: the fakes run the same checks."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cpu = get_impl("cpu")
    for name, args, pattern in _bad_inputs("cpu"):
        with FakeTensorMode() as mode:
            fargs = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
            with pytest.raises((RuntimeError, ValueError), match=pattern):
                getattr(cpu, name)(*fargs)


def _bad_linears():
    x = torch.randn(4, 32)
    wi, wi_s, wf, wf_s = _weights(32, 32)
    i8, f8 = OPS.int8_dynamic_linear, OPS.fp8_dynamic_linear
    return [
        (i8, (x.int(), wi, wi_s, None), "x must be float32, float16 or bfloat16"),
        (i8, (x, wi.float(), wi_s, None), "weight must be"),
        (i8, (x, wi[:, :16], wi_s, None), "mismatched K"),
        (i8, (x, wi, wi_s[:5], None), r"weight_scale must have shape \[32\]|weight_scale must be float32 with one"),
        (i8, (x, wi, wi_s.half(), None), "weight_scale must be"),
        (f8, (x, wi, wi_s, None), "weight must be"),
        (f8, (x[:, :24], wf[:, :24], wf_s, None), "multiple of 16"),
        (f8, (x, wf[:24], wf_s[:24], None), "multiple of 16"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_linears())))
def test_bad_input_to_the_dynamic_linears(case):
    op, args, pattern = _bad_linears()[case]
    with pytest.raises((RuntimeError, ValueError), match=pattern):
        op(*args)


@pytest.mark.gpu
def test_mixed_devices_are_rejected():
    a = torch.randint(-127, 128, (4, 8), dtype=torch.int8, device="cuda")
    with pytest.raises(RuntimeError, match="a and b must be on the same device"):
        slimops.ops.int8_mm(a, a.cpu(), torch.rand(4, device="cuda"), torch.rand(4, device="cuda"))
    x = torch.randn(4, 8, device="cuda")
    for backend in slimops.backend.built_gpu_backends():
        with slimops.use_backend(backend), pytest.raises(RuntimeError, match="x and scale must be on the same device"):
            slimops.ops.weight_int8_linear(x, a, torch.rand(4))
    with pytest.raises(RuntimeError, match="x and weight must be on the same device"):
        slimops.ops.int8_dynamic_linear(x, a.cpu(), torch.rand(4, device="cuda"))
