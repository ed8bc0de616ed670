"""Every CPU int8 kernel path, forced in turn with SLIMOPS_CPU_ISA (read on every call).

Paths: avx512vnni and avxvnni (vpdpbusd with b ^ 0x80 and a row correction), avx2
(vpmaddwd), generic (portable C++); W8A16's in-register kernels (zmm / ymm) come with
them. A path this CPU lacks is skipped with the reason. int8_mm is held to the exact
integer product (odd K, K not a multiple of any vector width, M = 1..17, odd N,
strided input, -128 in both operands, the int32 limit of K); the op table's samples
of int8_mm, int8_dynamic_linear and weight_int8_linear (tests/ops/op_db.py) are
checked against the float64 reference under each path, outputs poisoned.
"""

from __future__ import annotations

import pytest
import torch

import slimops
from slimops import info as slimops_info
from slimops import reference as ref
from slimops.reference.quant_mm import expand_group_scale
from tests.backends import gen, random_rows
from tests.ops.op_db import F32, OP_DB_BY_NAME
from tests.ops.test_op_db import _check, _cpu_clone, _samples

pytestmark = pytest.mark.usefixtures("poison_empty")

ISAS = ["avx512vnni", "avxvnni", "avx2", "generic"]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """SLIMOPS_CPU_ISA set to one path for the test; skipped where this CPU lacks it."""
    monkeypatch.setenv("SLIMOPS_CPU_ISA", request.param)
    try:
        kernels = dict(slimops._C._cpu_int8_kernels())
    except RuntimeError as e:
        assert "does not support it" in str(e)
        pytest.skip(f"this CPU lacks {request.param}: {e}")
    assert kernels["isa"] == request.param
    return request.param


def _full_range(shape, seed):
    v = torch.randint(-128, 128, shape, generator=gen(seed), dtype=torch.int8)
    # -128 in the first and last column: the first vector chunk and the K tail.
    v[:, 0], v[:, -1] = -128, -128
    return v


def _exact_mm(a, b):
    return (a.long() @ b.long().t()).float()  # the int32 sum rounded once to fp32


# K: 1 and tails below every vector width (16, 32, 64), exact multiples, and long odd K.
KS = [1, 3, 15, 16, 17, 31, 33, 63, 64, 65, 100, 129, 769]


@pytest.mark.parametrize("k", KS)
def test_int8_mm_exact_every_m(isa, k):
    """M = 1..17 (every register block and remainder) x N = 1, 5, 9, 17, 33 over the full int8 range."""
    for n in (1, 5, 9, 17, 33):
        b = _full_range((n, k), seed=n * 101 + k)
        for m in range(1, 18):
            a = _full_range((m, k), seed=m * 7 + k)
            out = slimops.ops.int8_mm(a, b, torch.ones(m), torch.ones(n), None, torch.float32)
            assert torch.equal(out, _exact_mm(a, b)), f"{isa} M={m} N={n} K={k}"


def test_int8_mm_exact_large_and_strided(isa):
    """Panels split across tasks (N = 769, K = 4097) and strided / transposed operands."""
    m, n, k = 37, 769, 4097
    a, b = _full_range((m, k), seed=1), _full_range((n, k), seed=2)
    out = slimops.ops.int8_mm(a, b, torch.ones(m), torch.ones(n), None, torch.float32)
    assert torch.equal(out, _exact_mm(a, b))
    wide = _full_range((17, 2 * 129), seed=3)
    a_strided = wide[:, ::2]  # last-dim stride 2
    b_t = _full_range((129, 23), seed=4).t()  # [23, 129], transposed
    out = slimops.ops.int8_mm(a_strided, b_t, torch.ones(17), torch.ones(23), None, torch.float32)
    assert torch.equal(out, _exact_mm(a_strided, b_t))


@pytest.mark.parametrize("a_val,b_val", [(-128, -128), (-128, 127), (127, -128), (-128, 1)])
def test_int8_mm_int32_limit(isa, a_val, b_val):
    """K = 131071: the VNNI lanes' biased sums pass 2^31 and wrap; the unbiased result is exact."""
    m, n, k = 7, 9, 131071
    a, b = torch.full((m, k), a_val, dtype=torch.int8), torch.full((n, k), b_val, dtype=torch.int8)
    out = slimops.ops.int8_mm(a, b, torch.ones(m), torch.ones(n), None, torch.float32)
    exact = a.long() @ b.long().t()
    assert exact[0, 0].item() == a_val * b_val * k
    assert torch.equal(out, exact.float())


@pytest.mark.parametrize("name", ["int8_mm", "int8_dynamic_linear", "weight_int8_linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_op_table_samples(isa, name, dtype):
    """The op table's samples (epilogues, bias, layouts, groups) against the float64 reference."""
    info = OP_DB_BY_NAME[name]
    if dtype not in info.dtypes:
        pytest.skip(f"{name} does not take {dtype}")
    for sample in _samples(info, "cpu", dtype, seed=5):
        snapshot = _cpu_clone(sample.args)
        out = info.wrapper(*sample.args)
        _check(info, sample, snapshot, sample.args, out)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 17, 32, 33, 513])
@pytest.mark.parametrize("group_size", [None, 5, 8, 16, 64])
def test_weight_int8_linear_paths(isa, m, group_size):
    """W8A16 at every M of the in-register kernels and past their limits (32 ymm, 512 zmm), K with a tail (per channel) and
    group sizes that the vector kernels take (8, 16, 64) or send to dequantize + mm (5)."""
    k = 320 if group_size else 333
    n = 37
    x = random_rows((m, k), F32, "cpu", seed=m)
    w = torch.randint(-128, 128, (n, k), generator=gen(m + 1), dtype=torch.int8)
    groups = 1 if group_size is None else k // group_size
    scale = torch.exp2(torch.empty(n * groups).uniform_(-8, -2, generator=gen(m + 2)))
    scale = scale.reshape(n, groups) if group_size else scale
    bias = torch.randn(n, generator=gen(m + 3))
    out = slimops.ops.weight_int8_linear(x, w, scale, bias)
    w_full = w.double() * expand_group_scale(scale, k).double()
    exact = ref.weight_int8_linear(x.double(), w, scale.double(), bias.double())
    bound = (k + 2) * 2.0**-24 * (x.double().abs() @ w_full.abs().t()) * 1.01 + 2.0**-24 * bias.double().abs() + 1e-30
    err = (out.double() - exact).abs()
    assert out.shape == (m, n) and torch.isfinite(out).all()
    assert (err <= bound).all(), f"{isa} M={m} gs={group_size}: max excess {(err - bound).max().item()}"


def test_info_names_the_kernels(isa):
    kernels = slimops_info.collect_info()["cpu"]["int8_kernels"]
    assert kernels["isa"] == isa
    assert kernels["int8_mm"].startswith(isa)
    assert "int8_mm" in kernels["int8_dynamic_linear"]


def test_unknown_isa_is_an_error(monkeypatch):
    monkeypatch.setenv("SLIMOPS_CPU_ISA", "avx9000")
    a = torch.ones(2, 3, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="SLIMOPS_CPU_ISA must be auto, avx512vnni, avxvnni, avx2 or generic, got 'avx9000'"):
        slimops.ops.int8_mm(a, a, torch.ones(2), torch.ones(2))
