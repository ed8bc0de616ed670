"""The quantize family's bad input: clear errors, the same under fake tensors, refused layouts and devices.

opcheck, torch.compile and CUDA graphs run from the op test table (tests/ops/test_op_db.py).
"""

from __future__ import annotations

import pytest
import torch

import slimops
from tests.backends import IMPLS, get_impl

OPS = torch.ops.slimops


# --------------------------------------------------------------- bad input

def _bad_inputs(device):
    x = torch.randn(4, 8, device=device)
    q, s = torch.randint(-128, 128, (4, 8), dtype=torch.int8, device=device), torch.rand(4, 1, device=device)
    qpt, qpc, deq = "quantize_per_token", "quantize_per_channel", "dequantize"
    return [
        (qpt, (x.to(torch.int32),), "x must be float32, float16 or bfloat16, got torch.int32|x must be float32.*Int"),
        (qpt, (x.double(),), "x must be float32, float16 or bfloat16"),
        (qpt, (torch.tensor(1.0, device=device),), "x must have at least 1 dimension"),
        (qpt, (torch.randn(3, 0, device=device),), "x must have a non-empty last dimension"),
        (qpc, (x, 2, True), r"axis must be in \[-2, 2\)"),
        (qpc, (x, -3, False), r"axis must be in \[-2, 2\)"),
        (qpc, (torch.randn(3, 0, device=device), 0, True), "x must have at least one element per channel"),
        (qpc, (x.half().to(torch.int8), 0, True), "x must be float32, float16 or bfloat16"),
        (deq, (q.float(), s, None, torch.float32), "q must be"),
        (deq, (q, s.half(), None, torch.float32), "scale must be"),
        (deq, (q, s, None, torch.int32), "out_dtype must be float32, float16 or bfloat16"),
        (deq, (q, s.flatten(), None, torch.float32), "scale must have the rank of q"),
        (deq, (q, torch.rand(4, 3, device=device), None, torch.float32), "scale must have size 1 or 8 in dim 1"),
        (deq, (q.reshape(2, 2, 8), torch.rand(2, 1, 8, device=device), None, torch.float32),
         "scale must vary along one contiguous run of dims"),
        (deq, (q, s, torch.zeros(4, 1, dtype=torch.int64, device=device), torch.float32), "zero_point must be"),
        (deq, (q, s, torch.zeros(1, 4, dtype=torch.int32, device=device), torch.float32),
         "zero_point must have the shape of scale"),
    ]


def _call(impl, name, args):
    return getattr(impl, name)(*args)


@pytest.fixture(params=IMPLS)
def impl(request):
    return get_impl(request.param)


def test_bad_input_gets_a_clear_error(impl):
    for name, args, pattern in _bad_inputs(impl.device):
        with pytest.raises((RuntimeError, ValueError), match=pattern):
            _call(impl, name, args)
        # ... named after the op, so the user knows which call failed
        with pytest.raises((RuntimeError, ValueError), match=f"slimops.{name}"):
            _call(impl, name, args)


def test_bad_input_under_fake_tensors():
    """torch.compile sees the same errors: the fakes run the same checks."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cpu = get_impl("cpu")
    for name, args, pattern in _bad_inputs("cpu"):
        with FakeTensorMode() as mode:
            fargs = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
            with pytest.raises((RuntimeError, ValueError), match=pattern):
                _call(cpu, name, fargs)


def test_sparse_input_is_rejected():
    # The dispatcher refuses layouts no kernel is registered for, naming the op.
    x = torch.randn(4, 8).to_sparse()
    with pytest.raises(NotImplementedError, match="slimops::quantize_per_token.*SparseCPU"):
        slimops.ops.quantize_per_token(x)


@pytest.mark.gpu
def test_mixed_devices_are_rejected():
    q = torch.randint(-128, 128, (4, 8), dtype=torch.int8, device="cuda")
    for backend in slimops.backend.built_gpu_backends():
        with slimops.use_backend(backend), pytest.raises(RuntimeError, match="q and scale must be on the same device"):
            slimops.ops.dequantize(q, torch.rand(4, 1), None, torch.float32)
