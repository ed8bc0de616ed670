"""int8 quantize / dequantize: special values, ties and limits, and the reference's own rounding.

Every implementation must equal the reference bit for bit on the op test table's
samples (tests/ops/test_op_db.py): int8 values, zero points and scales (the spec
allows 1 ulp on scales; the kernels do the same single IEEE division, so we hold
them to 0). Here: float64 checks that the reference itself is a correct
rounding, and what random samples do not reach (near ties, half to even, zero
and non-finite rows, 2^±60 magnitudes, empty input).
"""

from __future__ import annotations

import pytest
import torch

from slimops import reference as ref
from tests.backends import IMPLS, get_impl, random_rows, skip_unsupported
from tests.ops.op_db import OP_DB_BY_NAME

pytestmark = pytest.mark.usefixtures("poison_empty")


@pytest.fixture(params=IMPLS)
def impl(request):
    return get_impl(request.param)


def assert_per_token_exact(x, q, scale):
    rq, rs = ref.quantize_per_token(x.cpu())
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert q.shape == x.shape and scale.shape == (*x.shape[:-1], 1)
    torch.testing.assert_close(scale.cpu(), rs, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(q.cpu(), rq), f"{(q.cpu() != rq).sum()} int8 values differ from the reference"


def assert_is_correct_rounding(x, q, scale, zero_point=None):
    """float64: |q - zp - x/scale| <= 1/2 (+ the fp32 division's rounding) where not saturated."""
    x64, s64 = x.cpu().double(), scale.cpu().double()
    finite = torch.isfinite(s64).expand_as(x64)
    exact = x64 / s64
    qz = q.cpu().double() - (0 if zero_point is None else zero_point.cpu().double())
    qmin = -127 if zero_point is None else -128
    inside = finite & (q.cpu() > qmin) & (q.cpu() < 127)
    err = (qz - exact).abs()[inside]
    assert err.numel() == 0 or err.max().item() <= 0.5 + 1e-4


# The table (tests/ops/op_db.py) holds every implementation to the reference bit for bit;
# these float64 checks hold the reference itself to a correct rounding, on the same samples.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_quantize_per_token_is_a_correct_rounding(dtype):
    for sample in OP_DB_BY_NAME["quantize_per_token"].sample_inputs("cpu", dtype, seed=0):
        (x,) = sample.args
        q, scale = ref.quantize_per_token(x)
        assert_is_correct_rounding(x, q, scale)
        # the scale is amax / 127 to within one fp32 rounding
        amax = x.double().abs().amax(dim=-1, keepdim=True)
        torch.testing.assert_close(scale.double(), amax / 127, rtol=2**-23, atol=0, msg=sample.desc)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_quantize_per_channel_is_a_correct_rounding(dtype):
    for sample in OP_DB_BY_NAME["quantize_per_channel"].sample_inputs("cpu", dtype, seed=0):
        x, axis, symmetric = sample.args
        q, scale, zp = ref.quantize_per_channel(x, axis, symmetric)
        want_shape = [x.shape[d] if d == axis % x.dim() else 1 for d in range(x.dim())]
        assert list(scale.shape) == want_shape and list(zp.shape) == want_shape, sample.desc
        assert_is_correct_rounding(x, q, scale, None if symmetric else zp)
        if symmetric:
            assert not zp.any(), sample.desc


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_dequantize_is_one_rounding(out_dtype):
    for sample in OP_DB_BY_NAME["dequantize"].sample_inputs("cpu", out_dtype, seed=0):
        q, scale, zp, _ = sample.args
        out = ref.dequantize(q, scale, zp, out_dtype)
        exact = (q.double() - (0 if zp is None else zp.double())) * scale.double()
        torch.testing.assert_close(out.double(), exact, rtol=torch.finfo(out_dtype).eps, atol=0, msg=sample.desc)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_per_token_wide_exponent_range(impl, dtype):
    """Row magnitudes from 2^-60 to 2^60: any shortcut in the division must stay exact."""
    skip_unsupported(impl, dtype)
    g = torch.Generator().manual_seed(29)
    exps = torch.arange(-60, 61, 3, dtype=torch.float32)
    x = torch.randn(exps.numel(), 301, generator=g) * torch.exp2(exps)[:, None]
    x = x.to(dtype=dtype, device=impl.device)
    q, scale = impl.quantize_per_token(x)
    assert_per_token_exact(x, q, scale)


def _near_tie_rows(rows: int, k: int, seed: int) -> torch.Tensor:
    """Rows whose quotients x / scale sit within 2 ulps of n + 0.5, over scales 2^-50..2^50.

    An eighth of the rows have all-ones significand scales with x = 2^e, where
    x / scale = 1 / (2 - 2^-23) rounds to 1 only if the division is correctly
    rounded: a division through an approximate reciprocal gives 0.
    """
    g = torch.Generator().manual_seed(seed)
    e = torch.randint(-50, 50, (rows, 1), generator=g).double()
    sig = torch.rand(rows, 1, generator=g, dtype=torch.float64) + 1.0
    sig[: rows // 8] = 2 - 2.0**-23
    amax = (sig * torch.exp2(e) * 127).float()
    scale = (amax / 127).double()
    n = torch.randint(-127, 127, (rows, k - 2), generator=g).double() + 0.5
    x = (n * scale).float()
    for _ in range(2):  # nudge each value by -1, 0 or +1 ulp, twice
        step = torch.randint(-1, 2, x.shape, generator=g)
        x = torch.where(step > 0, torch.nextafter(x, torch.tensor(float("inf"))), x)
        x = torch.where(step < 0, torch.nextafter(x, torch.tensor(float("-inf"))), x)
    x = torch.maximum(torch.minimum(x, amax), -amax)
    return torch.cat([amax, torch.exp2(e).float(), x], 1)


def test_quantize_near_ties_and_hard_scales(impl):
    x = _near_tie_rows(256, 66, seed=31).to(impl.device)
    q, scale = impl.quantize_per_token(x)
    assert_per_token_exact(x, q, scale)
    assert (q.cpu()[: 256 // 8, 1] == 1).all()  # the all-ones-significand rows
    q, scale, zp = impl.quantize_per_channel(x, 0, False)
    rq, rs, rz = ref.quantize_per_channel(x.cpu(), 0, False)
    assert torch.equal(scale.cpu(), rs) and torch.equal(zp.cpu(), rz) and torch.equal(q.cpu(), rq)


def test_quantize_per_token_rounds_half_to_even(impl):
    # scale = 127 / 127 = 1 exactly, so every quotient is the value itself.
    row = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, -127.0, 3.49, -3.51]
    want = [127, 0, 2, 2, 0, -2, -2, 126, -126, -127, 3, -4]
    x = torch.tensor([row, [-v for v in row]], device=impl.device)
    q, scale = impl.quantize_per_token(x)
    assert scale.cpu().flatten().tolist() == [1.0, 1.0]
    assert q.cpu()[0].tolist() == want
    assert q.cpu()[1].tolist() == [-w for w in want]


def test_quantize_per_token_zero_rows(impl):
    x = random_rows((6, 33), torch.float32, impl.device, seed=3)
    x[1] = 0
    x[4] = 0
    q, scale = impl.quantize_per_token(x)
    assert_per_token_exact(x, q, scale)
    assert scale.cpu()[[1, 4]].flatten().tolist() == [1.0, 1.0]
    assert not q.cpu()[[1, 4]].any()


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_quantize_per_token_nonfinite_rows(impl, bad, dtype):
    """Defined behaviour: a row with inf/NaN gets scale +inf and q 0; other rows are untouched."""
    x = random_rows((4, 37), dtype, impl.device, seed=5)
    x[2, 7] = bad
    q, scale = impl.quantize_per_token(x)
    assert_per_token_exact(x, q, scale)
    assert scale.cpu()[2].item() == float("inf")
    assert not q.cpu()[2].any()
    assert torch.isfinite(scale.cpu()[[0, 1, 3]]).all()
    # ... so dequantizing that row gives NaN, never finite garbage
    d = impl.dequantize(q, scale, None, torch.float32).cpu()
    assert d[2].isnan().all() and torch.isfinite(d[[0, 1, 3]]).all()


def test_quantize_per_token_empty(impl):
    q, scale = impl.quantize_per_token(torch.randn(0, 8, device=impl.device))
    assert q.shape == (0, 8) and scale.shape == (0, 1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_per_channel_strided_zero_and_nonfinite(impl, symmetric):
    x = random_rows((9, 31), torch.float32, impl.device, seed=11, layout="transposed")
    x[:, 2] = 0  # an all-zero channel along axis 1
    x[4, 5] = float("nan")
    x[7, 6] = float("inf")
    for axis in (0, 1):
        q, scale, zp = impl.quantize_per_channel(x, axis, symmetric)
        rq, rs, rz = ref.quantize_per_channel(x.cpu(), axis, symmetric)
        torch.testing.assert_close(scale.cpu(), rs, rtol=0, atol=0)
        assert torch.equal(zp.cpu(), rz) and torch.equal(q.cpu(), rq)
    _, scale, zp = impl.quantize_per_channel(x, 1, symmetric)
    assert scale.cpu()[0, 2].item() == 1.0
    assert scale.cpu()[0, 5].item() == float("inf") and scale.cpu()[0, 6].item() == float("inf")
    assert zp.cpu()[0, 5].item() == 0


def test_quantize_per_channel_asymmetric_uses_full_range(impl):
    x = torch.linspace(-1.0, 3.0, 256, device=impl.device).reshape(1, 256)
    q, scale, zp = impl.quantize_per_channel(x, 0, symmetric=False)
    assert q.min().item() == -128 and q.max().item() == 127
    d = impl.dequantize(q, scale, zp, torch.float32)
    assert (d - x).abs().max().item() <= scale.item() / 2 * (1 + 1e-5)


def test_round_trip_error_is_bounded(impl):
    x = random_rows((13, 257), torch.float32, impl.device, seed=23)
    q, scale = impl.quantize_per_token(x)
    back = impl.dequantize(q, scale, None, torch.float32)
    assert ((back - x).abs() <= scale / 2 * (1 + 1e-5)).all()
