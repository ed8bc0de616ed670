"""Quantized matmul: what the op test table (tests/ops/op_db.py) cannot say.

int8_mm's accumulation must be exact (compared with integer matmul and
torch._int_mm), over the whole int8 range, up to the int32 limit of K, with each
CPU kernel; fp8 special rows; the GPU decode shapes. The epilogues, the W8A16 /
fp8 paths and the composed linears against the float64 reference run from the
table. Outputs are poisoned (``poison_empty``), so an element a kernel forgot to
write fails.
"""

from __future__ import annotations

import pytest
import torch

from slimops import reference as ref
from slimops.reference.quant_mm import expand_group_scale
from tests.backends import (
    EPS,
    IMPLS,
    assert_within,
    gen,
    get_impl,
    skip_missing,
)
from tests.ops.op_db import OP_DB_BY_NAME

pytestmark = pytest.mark.usefixtures("poison_empty")


@pytest.fixture(params=IMPLS)
def impl(request):
    return get_impl(request.param)


def _int8(shape, seed, *, layout="contiguous"):
    g = gen(seed)
    v = torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)
    if layout == "transposed":
        return v.t().contiguous().t()
    if layout == "stepped":  # last-dim stride 2, inside a wider buffer
        wide = torch.randint(-127, 128, (shape[0], 2 * shape[1]), generator=g, dtype=torch.int8)
        wide[:, ::2] = v
        return wide[:, ::2]
    return v


def _scales(n, seed, shape=None):
    """Positive scales over 2^-12 .. 2^-4, never zero: products of two stay inside fp16's range."""
    g = gen(seed)
    return torch.exp2(torch.empty(n).uniform_(-12, -4, generator=g)).reshape(shape or (n,))


# ---------------------------------------------------------------- int8_mm

INT8_SHAPES = [(m, 17, 37) for m in range(1, 18)] + [(123, 33, 100), (5, 1, 1), (1, 5, 16), (7, 769, 64), (3, 4, 0)]


@pytest.mark.parametrize("m,n,k", INT8_SHAPES)
def test_int8_mm_accumulation_is_exact(impl, m, n, k):
    """Unit scales and fp32 output: the result is the integer dot product, to the last bit."""
    skip_missing(impl, "int8_mm")
    a, b = _int8((m, k), seed=m * 31 + k), _int8((n, k), seed=n * 17 + k + 1)
    ones_m, ones_n = torch.ones(m, 1), torch.ones(n)
    out = impl.int8_mm(a.to(impl.device), b.to(impl.device), ones_m.to(impl.device), ones_n.to(impl.device),
                       None, torch.float32)
    exact = (a.long() @ b.long().t()).double()  # |acc| <= 127^2 * 100 < 2^24: exact in fp32
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert torch.equal(out.cpu().double(), exact)


def test_int8_mm_matches_torch_int_mm_on_cpu(impl):
    """torch._int_mm (CPU) as an independent check of the int32 accumulation, K large enough to pass 2^24."""
    skip_missing(impl, "int8_mm")
    a, b = _int8((32, 2048), seed=3), _int8((48, 2048), seed=4)
    want = torch._int_mm(a, b.t().contiguous())
    ones = torch.ones(32).to(impl.device), torch.ones(48).to(impl.device)
    # fp32 holds integers exactly below 2^24; above, compare against the once-rounded int32 result.
    out = impl.int8_mm(a.to(impl.device), b.to(impl.device), *ones, None, torch.float32)
    assert torch.equal(out.cpu(), want.float())


# ---------------------------------------------------------------- int8_mm over all of int8

# Every register block of the CPU kernel (1..6 rows of a x 1..4 rows of b, and their
# remainders) and K tails of 1..15 elements past whole 16-element chunks.
FULL_RANGE_SHAPES = [(m, n, k) for m in (1, 2, 3, 4, 5, 6, 7, 13) for n, k in ((1, 1), (5, 15), (9, 16), (13, 17))]
FULL_RANGE_SHAPES += [(17, 23, 4097), (64, 37, 1024)]


@pytest.mark.parametrize("m,n,k", FULL_RANGE_SHAPES)
def test_int8_mm_full_int8_range_is_exact(impl, m, n, k):
    """The op takes any int8, -128 included (the quantizers never make it): sums stay exact."""
    skip_missing(impl, "int8_mm")
    a = torch.randint(-128, 128, (m, k), generator=gen(m * 7 + k), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=gen(n * 5 + k + 1), dtype=torch.int8)
    # -128 in the first and last column: the first full chunk and the K tail.
    a[:, 0], a[:, -1], b[:, 0], b[:, -1] = -128, -128, -128, -128
    ones_m, ones_n = torch.ones(m).to(impl.device), torch.ones(n).to(impl.device)
    out = impl.int8_mm(a.to(impl.device), b.to(impl.device), ones_m, ones_n, None, torch.float32)
    # The int32 sum, rounded once to fp32 (exact below 2^24).
    assert torch.equal(out.cpu(), (a.long() @ b.long().t()).float())


@pytest.mark.parametrize("a_val,b_val", [(-128, -128), (-128, 127), (127, -128)])
def test_int8_mm_extreme_values_at_the_int32_limit(impl, a_val, b_val):
    """Constant extreme operands with K = 131071, the largest K whose -128 * -128 sum fits int32."""
    skip_missing(impl, "int8_mm")
    if impl.name == "triton-interpret":
        pytest.skip("K = 131071 is too long for the Triton interpreter")
    m, n, k = 7, 5, 131071  # 7 rows: a 6-row register block and a remainder
    a = torch.full((m, k), a_val, dtype=torch.int8)
    b = torch.full((n, k), b_val, dtype=torch.int8)
    ones_m, ones_n = torch.ones(m).to(impl.device), torch.ones(n).to(impl.device)
    out = impl.int8_mm(a.to(impl.device), b.to(impl.device), ones_m, ones_n, None, torch.float32)
    exact = a.long() @ b.long().t()
    assert exact.abs().max().item() < 2**31 and exact[0, 0].item() == a_val * b_val * k
    assert torch.equal(out.cpu(), exact.float())


# ---------------------------------------------------------------- weight_int8_linear


def _w8a16_bound(x, w, s_full, exact, x_dtype):
    # The dequantized weight may be rounded to x's dtype before the dot (|w s| rel. error EPS),
    # products and sums accumulate in fp32 over K terms; then one output rounding.
    mag = x.double().abs() @ (w.double().abs() * s_full.double().abs()).t()
    k = x.shape[-1]
    acc_eps = 2 * EPS[x_dtype] + (k + 2) * EPS[torch.float32]
    return acc_eps * mag * 1.01 + EPS[x_dtype] * exact.abs() * 1.01 + 2.0**-24


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8, 15, 16, 17, 33])
@pytest.mark.parametrize("group_size", [None, 128])
def test_weight_int8_linear_decode_shapes_gpu(m, group_size):
    """Both GPU backends on a Llama-sized weight, bf16: the decode kernel's whole-warp paths."""
    import slimops

    k, n = 4096, 1000  # n not a multiple of the CUDA kernel's rows per block
    x = (torch.randn(m, k, generator=gen(m)) * 0.5).to(torch.bfloat16)
    w = _int8((n, k), seed=m + 1)
    groups = 1 if group_size is None else k // group_size
    scale = _scales(n * groups, 4, (n, groups) if group_size else (n,))
    exact = ref.weight_int8_linear(x.double(), w, scale.double())
    bound = _w8a16_bound(x, w, expand_group_scale(scale, k), exact, torch.bfloat16)
    for backend in slimops.backend.built_gpu_backends():
        with slimops.use_backend(backend):
            out = slimops.ops.weight_int8_linear(x.cuda(), w.cuda(), scale.cuda())
        assert_within(out, exact, bound, f"weight_int8_linear {backend} M={m}")


# ---------------------------------------------------------------- quantize_fp8_per_row


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_fp8_is_a_correct_e4m3_rounding(dtype):
    """The table holds every implementation to the reference bit for bit; this holds the reference
    to a correct e4m3 rounding of x / scale (float64), on the table's samples."""
    for sample in OP_DB_BY_NAME["quantize_fp8_per_row"].sample_inputs("cpu", dtype, seed=0):
        (x,) = sample.args
        q, scale = ref.quantize_fp8_per_row(x)
        v = (x.double() / scale.double()).clamp(-448, 448)
        err = (q.double() - v).abs()
        # half an e4m3 ulp (3 mantissa bits), subnormal 2^-9 spacing
        assert (err <= v.abs() * 2.0**-4 + 2.0**-10).all(), sample.desc


def assert_fp8_exact(x, q, scale):
    rq, rs = ref.quantize_fp8_per_row(x.cpu())
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert q.shape == x.shape and scale.shape == (*x.shape[:-1], 1)
    torch.testing.assert_close(scale.cpu(), rs, rtol=0, atol=0, equal_nan=True)
    diff = (q.cpu().view(torch.uint8) != rq.view(torch.uint8)).sum().item()
    assert diff == 0, f"{diff} fp8 values differ from the reference"


def test_quantize_fp8_per_row_special_rows(impl):
    skip_missing(impl, "quantize_fp8_per_row")
    g = gen(11)
    x = torch.randn(8, 40, generator=g)
    x[0] = 0.0  # zero row: scale 1, q 0
    x[1, 3] = float("inf")
    x[2, 7] = float("nan")
    x[3] *= 1e30
    x[4] *= 1e-30  # amax / 448 is subnormal but not 0
    x[5] = 1e-44  # amax / 448 underflows to 0: scale 1
    x[6, :] = torch.tensor([448.0 * (1 + i / 64) for i in range(40)])  # exact ties of the e4m3 grid
    q, scale = impl.quantize_fp8_per_row(x.to(impl.device))
    assert_fp8_exact(x, q, scale)
    assert scale[0].item() == 1 and scale[5].item() == 1
    assert scale[1].item() == float("inf") and scale[2].item() == float("inf")
    assert (q[1:3].cpu().float() == 0).all()
